package shardmap

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultWatchWait is how long a long-poll waits for a newer version before answering 304.
const DefaultWatchWait = 30 * time.Second

// maxWatchWait bounds the wait= parameter.
const maxWatchWait = 5 * time.Minute

// headerForwarded marks a request already forwarded by a map node; it is never forwarded again.
const headerForwarded = "X-Shardmap-Forwarded"

// HeaderVersion carries the map version on watch answers.
const HeaderVersion = "X-Shardmap-Version"

// Handler serves the internal endpoints of this node; every one requires the cluster token:
//
//	GET  /internal/v1/shardmap[?after=v[&wait=d]]  full map (canonical JSON), long-poll with after
//	POST /internal/v1/shardmap/apply               body = one log entry; forwards to the leader
//	POST /internal/v1/join                         {"id","raft_addr","http_addr","non_voter"}
func (n *Node) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /internal/v1/shardmap", n.handleWatch)
	mux.HandleFunc("POST /internal/v1/shardmap/apply", n.handleApply)
	mux.HandleFunc("POST /internal/v1/join", n.handleJoin)
	return requireToken(n.cfg.Token, mux)
}

func requireToken(token string, next http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meridian-internal"`)
			writeProblem(w, http.StatusUnauthorized, "Unauthorized", "a valid cluster token is required", "unauthorized")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// parseWatchParams reads after= and wait=. after absent means "answer now".
func parseWatchParams(q map[string][]string) (after uint64, hasAfter bool, wait time.Duration, err error) {
	wait = DefaultWatchWait
	if v, ok := q["after"]; ok {
		if len(v) != 1 {
			return 0, false, 0, errors.New("after must be given once")
		}
		after, err = strconv.ParseUint(v[0], 10, 64)
		if err != nil {
			return 0, false, 0, fmt.Errorf("after must be a non-negative integer, got %q", v[0])
		}
		hasAfter = true
	}
	if v, ok := q["wait"]; ok {
		if len(v) != 1 {
			return 0, false, 0, errors.New("wait must be given once")
		}
		wait, err = time.ParseDuration(v[0])
		if err != nil || wait <= 0 || wait > maxWatchWait {
			return 0, false, 0, fmt.Errorf("wait must be a duration in (0, %s], got %q", maxWatchWait, v[0])
		}
	}
	return after, hasAfter, wait, nil
}

func (n *Node) handleWatch(w http.ResponseWriter, r *http.Request) {
	after, hasAfter, wait, err := parseWatchParams(r.URL.Query())
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "Bad watch parameters", err.Error(), "bad_request")
		return
	}
	if n.metrics != nil {
		n.metrics.watches.Inc()
	}
	if !hasAfter {
		writeMap(w, n.current())
		return
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		ch := n.changedCh() // taken before reading the map, so no publish is missed
		if m := n.current(); m.Version() > after {
			writeMap(w, m)
			return
		}
		select {
		case <-ch:
		case <-timer.C:
			w.Header().Set(HeaderVersion, strconv.FormatUint(n.current().Version(), 10))
			w.WriteHeader(http.StatusNotModified)
			return
		case <-r.Context().Done():
			return
		case <-n.done():
			writeProblem(w, http.StatusServiceUnavailable, "Shutting down", "the map node is shutting down", "shutdown")
			return
		}
	}
}

func writeMap(w http.ResponseWriter, m *Map) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(HeaderVersion, strconv.FormatUint(m.Version(), 10))
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	w.Write(m.encoded())
}

func (n *Node) handleApply(w http.ResponseWriter, r *http.Request) {
	entry, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "Bad command", "body unreadable or over 1 MiB", "bad_command")
		return
	}
	// Decode before proposing: an entry that does not decode would panic every FSM.
	if _, _, err := decodeEntry(entry); err != nil {
		if errors.Is(err, errIgnored) {
			err = fmt.Errorf("%w: unknown command type %d", ErrBadCommand, entry[0])
		}
		writeError(w, err)
		return
	}
	idx, err := n.applyEntry(r.Context(), entry, r.Header.Get(headerForwarded) != "")
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"index":%d}`, idx)
}

func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	var jr joinRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	if err := dec.Decode(&jr); err != nil {
		writeProblem(w, http.StatusBadRequest, "Bad join request", err.Error(), "bad_command")
		return
	}
	if err := n.join(r.Context(), jr, r.Header.Get(headerForwarded) != ""); err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"ok":true}`)
}

// problem is an RFC 9457 body with a machine-readable code naming the sentinel error.
type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Code   string `json:"code,omitempty"`
}

func writeProblem(w http.ResponseWriter, status int, title, detail, code string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(problem{Type: "about:blank", Title: title, Status: status, Detail: detail, Code: code})
}

// writeError maps an error to a status: unavailable-ish 503, malformed 400, rule broken 409.
func writeError(w http.ResponseWriter, err error) {
	code := codeOf(err)
	status := http.StatusConflict
	switch {
	case code == "":
		status, code = http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, ErrNotLeader), errors.Is(err, ErrNoLeader), errors.Is(err, ErrUnavailable), errors.Is(err, ErrShutdown):
		status = http.StatusServiceUnavailable
	case errors.Is(err, ErrBadCommand), errors.Is(err, ErrBadTenantID), errors.Is(err, ErrBadSlot), errors.Is(err, ErrBadLimits):
		status = http.StatusBadRequest
	case errors.Is(err, ErrUnknownShard), errors.Is(err, ErrUnknownMove), errors.Is(err, ErrUnknownRegion):
		status = http.StatusNotFound
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeProblem(w, status, http.StatusText(status), err.Error(), code)
}

// remoteError is an error received over HTTP: its text is the remote one, and it unwraps to
// the sentinel named by the problem's code.
type remoteError struct {
	sentinel error
	msg      string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func errFromProblem(status int, body []byte) error {
	var p problem
	if err := json.Unmarshal(body, &p); err != nil || p.Code == "" {
		if status == http.StatusUnauthorized {
			return ErrUnauthorized
		}
		return fmt.Errorf("%w: HTTP %d: %s", ErrUnavailable, status, strings.TrimSpace(string(body)))
	}
	s := errOfCode(p.Code)
	if s == nil {
		s = ErrUnavailable
	}
	msg := p.Detail
	if msg == "" {
		msg = s.Error()
	}
	return &remoteError{sentinel: s, msg: msg}
}
