package shards

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// Dial opens one dedicated connection, outside any pool, to the shard's primary (its home
// region's endpoint) as cfg.User, with the same session settings a pool of cfg would have
// (statement and idle-in-transaction timeouts, application_name, DialVia, tracer; the pool
// sizes are ignored). It is for work that needs a session of its own: the outbox relay holds a
// session advisory lock and LISTENs on it, which a pooled connection cannot promise to keep.
// The caller closes the connection.
func Dial(ctx context.Context, sh Info, cfg Config) (*pgx.Conn, error) {
	cfg = cfg.withDefaults()
	addr := sh.Endpoints[sh.HomeRegion]
	if addr == "" {
		return nil, fmt.Errorf("%w: %s", ErrNoEndpoint, sh.ID)
	}
	// The same URL as Conns.open builds for a pool (kept in step by TestDial).
	if via, ok := cfg.DialVia[addr]; ok {
		addr = via
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("shards: shard endpoint %q: %w", addr, err)
	}
	u := url.URL{Scheme: "postgres", User: url.UserPassword(cfg.User, cfg.Password), Host: net.JoinHostPort(host, port), Path: "/" + sh.Database, RawQuery: "sslmode=disable"}
	if cfg.Password == "" {
		u.User = url.User(cfg.User)
	}
	cc, err := pgx.ParseConfig(u.String())
	if err != nil {
		return nil, err
	}
	cc.RuntimeParams["statement_timeout"] = strconv.FormatInt(cfg.StatementTimeout.Milliseconds(), 10)
	cc.RuntimeParams["idle_in_transaction_session_timeout"] = strconv.FormatInt(cfg.IdleInTxTimeout.Milliseconds(), 10)
	cc.RuntimeParams["application_name"] = cfg.AppName
	cc.Tracer = cfg.Tracer
	cc.ConnectTimeout = 2 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, fmt.Errorf("shards: dial %s primary as %s: %w", sh.ID, cfg.User, err)
	}
	return conn, nil
}
