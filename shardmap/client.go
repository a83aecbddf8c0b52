package shardmap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ClientConfig configures a watching Client.
type ClientConfig struct {
	// Addrs are base URLs of map nodes ("http://127.0.0.1:8000"); required.
	Addrs []string
	// Token is the cluster token; required by the nodes.
	Token string
	// HTTPClient is used for every request; nil means a client with a 500 ms dial timeout.
	// Its Timeout must be zero or longer than Wait.
	HTTPClient *http.Client
	// Logger receives client logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the client's metrics; nil means no metrics.
	Registerer prometheus.Registerer
	// Wait is the long-poll wait sent to nodes; 0 means 10 s. A shorter wait finds a node
	// that stopped answering (without closing its connection) sooner.
	Wait time.Duration
}

// Client keeps a read-only local copy of the shard map through the watch API of any map node,
// fails over between nodes, and keeps serving the last known map when none answers. API nodes,
// the rebalancer and the CLI use it.
type Client struct {
	cfg   ClientConfig
	log   *slog.Logger
	httpc *http.Client

	cur      atomic.Pointer[Map]
	lastSync atomic.Int64 // unix nanos of the last successful answer; 0 = never
	next     atomic.Uint32

	// mu guards changed, closed and replaced whenever a newer map is stored.
	mu      sync.Mutex
	changed chan struct{}

	metrics *clientMetrics
}

type clientMetrics struct {
	version     prometheus.Gauge
	applies     *prometheus.CounterVec
	watchErrors prometheus.Counter
	age         prometheus.GaugeFunc
}

// NewClient returns a Client; call Run to start watching.
func NewClient(cfg ClientConfig) *Client {
	c := &Client{cfg: cfg, log: cfg.Logger, httpc: cfg.HTTPClient, changed: make(chan struct{})}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("component", "shardmap-client")
	if c.httpc == nil {
		c.httpc = defaultHTTPClient()
		c.httpc.Transport.(*http.Transport).DialContext = dialer(500 * time.Millisecond)
	}
	if c.cfg.Wait == 0 {
		c.cfg.Wait = 10 * time.Second
	}
	// A copy: the caller's slice may be shared with other clients.
	c.cfg.Addrs = make([]string, len(cfg.Addrs))
	for i, a := range cfg.Addrs {
		c.cfg.Addrs[i] = strings.TrimRight(a, "/")
	}
	c.cur.Store(emptyMap)
	if cfg.Registerer != nil {
		m := &clientMetrics{
			version: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meridian_shardmap_client_version",
				Help: "Version of the shard map held by this client."}),
			applies: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meridian_shardmap_client_applies_total",
				Help: "Commands sent by this client, by result."}, []string{"result"}),
			watchErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "meridian_shardmap_client_watch_errors_total",
				Help: "Failed watch requests (each one rotates to the next map node)."}),
			age: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meridian_shardmap_client_age_seconds",
				Help: "Seconds since a map node last answered this client."}, func() float64 { return c.Age().Seconds() }),
		}
		for _, col := range []prometheus.Collector{m.version, m.applies, m.watchErrors, m.age} {
			if err := cfg.Registerer.Register(col); err != nil {
				c.log.Warn("shardmap client metrics not registered", "err", err)
			}
		}
		c.metrics = m
	}
	return c
}

// Map returns the latest known map; never nil (an empty map of version 0 before the first
// answer).
func (c *Client) Map() *Map { return c.cur.Load() }

// Age is the time since a map node last answered; before the first answer it is the largest
// Duration.
func (c *Client) Age() time.Duration {
	t := c.lastSync.Load()
	if t == 0 {
		return time.Duration(1<<63 - 1)
	}
	return time.Since(time.Unix(0, t))
}

// Run watches the map until ctx is done, rotating to the next node on any error. It returns
// ctx.Err().
func (c *Client) Run(ctx context.Context) error {
	if len(c.cfg.Addrs) == 0 {
		return errors.New("shardmap: ClientConfig.Addrs is empty")
	}
	fails := 0
	for ctx.Err() == nil {
		addr := c.cfg.Addrs[int(c.next.Load())%len(c.cfg.Addrs)]
		err := c.poll(ctx, addr)
		if err == nil {
			fails = 0
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if c.metrics != nil {
			c.metrics.watchErrors.Inc()
		}
		c.log.Debug("watch failed; rotating", "addr", addr, "err", err)
		c.next.Add(1)
		fails++
		// Back off only once every node has failed in a row, so failover itself is immediate.
		if fails >= len(c.cfg.Addrs) {
			d := min(time.Duration(fails/len(c.cfg.Addrs))*100*time.Millisecond, time.Second)
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
	}
	return ctx.Err()
}

// poll makes one watch request: a full fetch before the first map, a long-poll after it.
func (c *Client) poll(ctx context.Context, addr string) error {
	cur := c.Map()
	url := addr + "/internal/v1/shardmap"
	if cur.Version() > 0 {
		url += fmt.Sprintf("?after=%d&wait=%s", cur.Version(), c.cfg.Wait)
	}
	// The node answers by Wait; a node that does not is treated as dead.
	rctx, cancel := context.WithTimeout(ctx, c.cfg.Wait+2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	resp, err := c.httpc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		c.lastSync.Store(time.Now().UnixNano())
		return nil
	case http.StatusOK:
	default:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return errFromProblem(resp.StatusCode, body)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	m, err := DecodeMap(body)
	if err != nil {
		return err
	}
	c.lastSync.Store(time.Now().UnixNano())
	c.store(m)
	return nil
}

// store keeps m if it is newer than the current map (a lagging node never moves us back).
func (c *Client) store(m *Map) {
	if m.Version() <= c.Map().Version() {
		return
	}
	c.cur.Store(m)
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if c.metrics != nil {
		c.metrics.version.Set(float64(m.Version()))
	}
}

// WaitVersion blocks until the client's map has version >= v, or ctx is done.
func (c *Client) WaitVersion(ctx context.Context, v uint64) error {
	for {
		c.mu.Lock()
		ch := c.changed
		c.mu.Unlock()
		if c.Map().Version() >= v {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("shardmap: waiting for version %d (have %d): %w", v, c.Map().Version(), ctx.Err())
		case <-ch:
		}
	}
}

// Apply sends a command to a reachable map node (which forwards it to the leader) and returns
// the Raft index it was applied at. Rule violations come back as errors wrapping the sentinel
// errors. Unreachable nodes and leaderless moments are retried, rotating over Addrs, until ctx
// is done; a command whose outcome is unknown (connection cut after sending) may be retried,
// and the guards make every command safe to repeat or fail with a typed error.
func (c *Client) Apply(ctx context.Context, cmd Command) (uint64, error) {
	entry, err := encodeEntry(cmd, time.Now())
	if err != nil {
		return 0, err
	}
	if len(c.cfg.Addrs) == 0 {
		return 0, fmt.Errorf("%w: ClientConfig.Addrs is empty", ErrUnavailable)
	}
	backoff := 20 * time.Millisecond
	for {
		addr := c.cfg.Addrs[int(c.next.Load())%len(c.cfg.Addrs)]
		idx, err := postApply(ctx, c.httpc, addr, c.cfg.Token, entry, false)
		retry := errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNoLeader) || errors.Is(err, ErrNotLeader) || errors.Is(err, ErrShutdown)
		if !retry || ctx.Err() != nil {
			c.countApply(err)
			return idx, err
		}
		c.next.Add(1)
		select {
		case <-ctx.Done():
			c.countApply(err)
			return 0, fmt.Errorf("%w (%v)", err, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (c *Client) countApply(err error) {
	if c.metrics == nil {
		return
	}
	res := "ok"
	if err != nil {
		if res = codeOf(err); res == "" {
			res = "error"
		}
	}
	c.metrics.applies.WithLabelValues(res).Inc()
}
