// Package latency runs the delaying TCP proxies of the local multi-region topology's latency
// mode (DESIGN.md §9): one Toxiproxy proxy (github.com/Shopify/toxiproxy/v2, used as a
// library, no HTTP API) per cross-region service, adding half the region pair's round trip in
// each direction, and able to cut a region off (Partition) and restore it (Heal).
//
// It owns only the proxies' listeners and the connections through them; it must never touch
// the services behind them. Toxiproxy's zerolog output is discarded. Tests should use
// loopback addresses with port 0 and read the bound address from Add's result.
package latency

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Errors returned by the Manager.
var (
	ErrClosed    = errors.New("latency: manager closed")
	ErrDuplicate = errors.New("latency: proxy name already in use")
	ErrBadRTT    = errors.New("latency: round trip must be between 0 and 10s")
)

// Manager owns a set of delaying proxies. The zero value is not usable; call New.
// All methods are safe for concurrent use.
type Manager struct {
	server *toxiproxy.ApiServer

	// mu guards the fields below.
	mu          sync.Mutex
	proxies     map[string]*entry
	partitioned map[string]bool
	closed      bool
}

type entry struct {
	proxy   *toxiproxy.Proxy
	regions []string
}

// New returns an empty Manager.
func New() *Manager {
	return &Manager{
		// The ApiServer is only the holder of the metrics container and logger the proxies
		// read; its HTTP API is never started.
		server:      toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()),
		proxies:     map[string]*entry{},
		partitioned: map[string]bool{},
	}
}

// Add starts a proxy named name listening on listen ("127.0.0.1:0" picks a free port) that
// forwards to upstream, delaying data by rtt/2 in each direction (latency resolution is
// 1 ms; rtt 0 adds no toxic). regions are the regions the proxy joins (normally the two ends
// of the link): Partition of any of them cuts it. If one of them is already partitioned the
// proxy is created disabled. Add returns the address the proxy listens on.
func (m *Manager) Add(name, listen, upstream string, rtt time.Duration, regions ...string) (string, error) {
	if rtt < 0 || rtt > 10*time.Second {
		return "", fmt.Errorf("%w: %s: %s", ErrBadRTT, name, rtt)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return "", ErrClosed
	}
	if _, dup := m.proxies[name]; dup {
		return "", fmt.Errorf("%w: %q", ErrDuplicate, name)
	}
	p := toxiproxy.NewProxy(m.server, name, listen, upstream)
	if half := rtt / 2; half > 0 {
		for _, stream := range []string{"upstream", "downstream"} {
			// AddToxicJson is the library's only exported way to add a toxic; it builds a
			// toxics.LatencyToxic from the "latency" type.
			body := fmt.Sprintf(`{"name":"latency_%s","type":"latency","stream":%q,"toxicity":1,"attributes":{"latency":%d}}`,
				stream, stream, half.Milliseconds())
			if _, err := p.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
				return "", fmt.Errorf("latency: %s: add %s toxic: %w", name, stream, err)
			}
		}
	}
	if err := p.Start(); err != nil {
		return "", fmt.Errorf("latency: %s: listen on %s: %w", name, listen, err)
	}
	e := &entry{proxy: p, regions: slices.Clone(regions)}
	m.proxies[name] = e
	if m.cut(e) {
		// Started first so that the listen address is resolved and kept for Heal.
		p.Stop()
	}
	return p.Listen, nil
}

// Addr returns the address proxy name listens on.
func (m *Manager) Addr(name string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.proxies[name]
	if !ok {
		return "", false
	}
	e.proxy.Lock()
	defer e.proxy.Unlock()
	return e.proxy.Listen, true
}

// Partition cuts region off: every proxy joining it stops listening (new connections are
// refused) and every connection through it is closed. It behaves like the region's hosts
// going away rather than a black hole.
func (m *Manager) Partition(region string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.partitioned[region] = true
	for _, e := range m.proxies {
		if slices.Contains(e.regions, region) {
			e.proxy.Stop()
		}
	}
}

// Heal ends region's partition: every proxy joining it whose other regions are not
// partitioned listens again on the same address.
func (m *Manager) Heal(region string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.partitioned, region)
	if m.closed {
		return ErrClosed
	}
	var errs []error
	for name, e := range m.proxies {
		if !slices.Contains(e.regions, region) || m.cut(e) {
			continue
		}
		if err := e.proxy.Start(); err != nil && !errors.Is(err, toxiproxy.ErrProxyAlreadyStarted) {
			errs = append(errs, fmt.Errorf("latency: heal %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Partitioned reports whether region is currently cut off.
func (m *Manager) Partitioned(region string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.partitioned[region]
}

// cut reports whether any region of e is partitioned. m.mu must be held.
func (m *Manager) cut(e *entry) bool {
	for _, r := range e.regions {
		if m.partitioned[r] {
			return true
		}
	}
	return false
}

// Close stops every proxy and closes every connection through them. It is idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for _, e := range m.proxies {
		e.proxy.Stop()
	}
	return nil
}
