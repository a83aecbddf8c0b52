package moves

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/meridian-dev/meridian/internal/records"
	"github.com/meridian-dev/meridian/shardmap"
)

const testToken = "test-cluster-token"

// newTestMap starts a real single-node shard map (Raft on 127.0.0.1, data in t.TempDir) with
// regions us-east and eu-west, shards use-1 and euw-1, and tenant acme pinned to use-1, and
// returns a watching client of it.
func newTestMap(t testing.TB) *shardmap.Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	node, err := shardmap.NewNode(shardmap.NodeConfig{ID: "n0", DataDir: filepath.Join(t.TempDir(), "n0"), RaftAddr: "127.0.0.1:0",
		HTTPAddr: url, Bootstrap: true, Token: testToken, Logger: quietLog(t), Tune: func(c *raft.Config) {
			c.HeartbeatTimeout = 80 * time.Millisecond
			c.ElectionTimeout = 80 * time.Millisecond
			c.LeaderLeaseTimeout = 80 * time.Millisecond
			c.CommitTimeout = 5 * time.Millisecond
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: node.Handler()}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close(); node.Shutdown() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := shardmap.NewClient(shardmap.ClientConfig{Addrs: []string{url}, Token: testToken, Logger: quietLog(t), Wait: 300 * time.Millisecond})
	go c.Run(ctx)
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	mustApply(t, actx, c, shardmap.Bootstrap{Regions: []string{"eu-west", "us-east"}, SlotCount: 16, Shards: []shardmap.Shard{
		{ID: "use-1", HomeRegion: "us-east", Database: "use1", Endpoints: map[string]string{"us-east": "127.0.0.1:1"}, State: shardmap.ShardActive},
		{ID: "euw-1", HomeRegion: "eu-west", Database: "euw1", Endpoints: map[string]string{"eu-west": "127.0.0.1:2"}, State: shardmap.ShardActive},
	}})
	mustApply(t, actx, c, shardmap.CreateTenant{Tenant: "acme", Region: "us-east"})
	return c
}

func mustApply(t testing.TB, ctx context.Context, c *shardmap.Client, cmd shardmap.Command) uint64 {
	t.Helper()
	idx, err := c.Apply(ctx, cmd)
	if err != nil {
		t.Fatalf("apply %T: %v", cmd, err)
	}
	if err := c.WaitVersion(ctx, idx); err != nil {
		t.Fatal(err)
	}
	return idx
}

func quietLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// hookedMap wraps a MapClient; after each applied command, after(cmd) runs (tests cancel a
// controller there to kill it right after a phase was recorded).
type hookedMap struct {
	MapClient
	mu    sync.Mutex
	after func(shardmap.Command)
	// before, when it returns an error, fails the command without applying it.
	before func(shardmap.Command) error
	log    []string // applied phase changes, in order
}

func (h *hookedMap) Apply(ctx context.Context, cmd shardmap.Command) (uint64, error) {
	h.mu.Lock()
	b := h.before
	h.mu.Unlock()
	if b != nil {
		if err := b(cmd); err != nil {
			return 0, err
		}
	}
	idx, err := h.MapClient.Apply(ctx, cmd)
	if err != nil {
		return idx, err
	}
	h.mu.Lock()
	switch c := cmd.(type) {
	case shardmap.SetMovePhase:
		h.log = append(h.log, string(c.Phase))
	case shardmap.Cutover:
		h.log = append(h.log, string(shardmap.PhaseCutover))
	}
	f := h.after
	h.mu.Unlock()
	if f != nil {
		f(cmd)
	}
	return idx, nil
}

func (h *hookedMap) phases() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.log)
}

// fakeStore models the records store's move primitives on in-memory shards, closely enough to
// check that the controller's sequence leaves the right data behind: version-guarded copies,
// fences that refuse client writes, tombstones.
type fakeStore struct {
	mu      sync.Mutex
	rows    map[string]map[string]map[Key]frow  // shard -> tenant -> key -> row
	tenants map[string]map[string]*ftenant      // shard -> tenant -> tenant row
	outbox  map[string]map[string]map[int64]Key // shard -> tenant -> change seq -> key written
	calls   map[string]int
	// firstWrite is what FirstWrite answers (0 = not known).
	firstWrite time.Duration
	// schema is each shard's schema version (absent: 7).
	schema map[string]int64
	// finishMarks are the marks FinishTargetFrom was given, in call order.
	finishMarks []int64
	// hook runs after a call's effect, under no lock; an error it returns replaces the
	// result (a crash after the database committed).
	hook func(method string, n int) error
	// before runs before a call's effect; an error it returns is the result.
	before func(method string, n int) error
	// onCopy, when set, gets the source keys each CopyRange read (copied or not), under mu.
	onCopy func(keys []Key)
}

type frow struct {
	version int64
	deleted bool
	data    string
}

type ftenant struct {
	status    string
	fenced    bool
	epoch     uint64
	changeSeq int64
}

func newFakeStore() *fakeStore {
	return &fakeStore{rows: map[string]map[string]map[Key]frow{}, tenants: map[string]map[string]*ftenant{},
		outbox: map[string]map[string]map[int64]Key{}, calls: map[string]int{}}
}

// seed gives tenant n live rows on shard with an active tenant row.
func (f *fakeStore) seed(shard, tenant string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tenant(shard, tenant, true)
	for i := 0; i < n; i++ {
		k := Key{Collection: "items", ID: fmt.Sprintf("r%05d", i)}
		f.set(shard, tenant, k, frow{version: 1, data: "v1"})
		f.logChange(shard, tenant, int64(i+1), k)
	}
	f.tenants[shard][tenant].changeSeq = int64(n)
}

// logChange records the outbox row of the write with seq.
func (f *fakeStore) logChange(shard, tenant string, seq int64, k Key) {
	if f.outbox[shard] == nil {
		f.outbox[shard] = map[string]map[int64]Key{}
	}
	if f.outbox[shard][tenant] == nil {
		f.outbox[shard][tenant] = map[int64]Key{}
	}
	f.outbox[shard][tenant][seq] = k
}

// prune deletes the outbox rows of tenant on shard with seq <= upto (retention).
func (f *fakeStore) prune(shard, tenant string, upto int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for seq := range f.outbox[shard][tenant] {
		if seq <= upto {
			delete(f.outbox[shard][tenant], seq)
		}
	}
}

func (f *fakeStore) tenant(shard, tenant string, create bool) *ftenant {
	if f.tenants[shard] == nil {
		f.tenants[shard] = map[string]*ftenant{}
	}
	tr := f.tenants[shard][tenant]
	if tr == nil && create {
		tr = &ftenant{status: "active", epoch: 1}
		f.tenants[shard][tenant] = tr
	}
	return tr
}

func (f *fakeStore) set(shard, tenant string, k Key, r frow) {
	if f.rows[shard] == nil {
		f.rows[shard] = map[string]map[Key]frow{}
	}
	if f.rows[shard][tenant] == nil {
		f.rows[shard][tenant] = map[Key]frow{}
	}
	f.rows[shard][tenant][k] = r
}

// clientWrite is a client's write on shard: refused while fenced, as the store's transaction
// would.
func (f *fakeStore) clientWrite(shard, tenant string, k Key, data string, deleted bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	tr := f.tenant(shard, tenant, false)
	if tr == nil || tr.fenced {
		return errors.New("tenant fenced")
	}
	old := f.rows[shard][tenant][k]
	tr.changeSeq++
	f.set(shard, tenant, k, frow{version: old.version + 1, deleted: deleted, data: data})
	f.logChange(shard, tenant, tr.changeSeq, k)
	return nil
}

func (f *fakeStore) snapshot(shard, tenant string) map[Key]frow {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[Key]frow{}
	for k, r := range f.rows[shard][tenant] {
		out[k] = r
	}
	return out
}

func (f *fakeStore) tenantRow(shard, tenant string) (ftenant, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tr := f.tenant(shard, tenant, false)
	if tr == nil {
		return ftenant{}, false
	}
	return *tr, true
}

func (f *fakeStore) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

// call counts a call and runs before; the returned finish runs hook.
func (f *fakeStore) call(method string) (int, error) {
	f.mu.Lock()
	f.calls[method]++
	n := f.calls[method]
	b := f.before
	f.mu.Unlock()
	if b != nil {
		if err := b(method, n); err != nil {
			return n, err
		}
	}
	return n, nil
}

func (f *fakeStore) after(method string, n int) error {
	f.mu.Lock()
	h := f.hook
	f.mu.Unlock()
	if h != nil {
		return h(method, n)
	}
	return nil
}

func less(a, b Key) bool {
	if a.Collection != b.Collection {
		return a.Collection < b.Collection
	}
	return a.ID < b.ID
}

func (f *fakeStore) keysAfter(after Key, sets ...map[Key]frow) []Key {
	seen := map[Key]bool{}
	var ks []Key
	for _, s := range sets {
		for k := range s {
			if less(after, k) && !seen[k] {
				seen[k] = true
				ks = append(ks, k)
			}
		}
	}
	slices.SortFunc(ks, func(a, b Key) int {
		if less(a, b) {
			return -1
		}
		if less(b, a) {
			return 1
		}
		return 0
	})
	return ks
}

func (f *fakeStore) SchemaVersion(ctx context.Context, shard string) (int64, error) {
	n, err := f.call("SchemaVersion")
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	v, ok := f.schema[shard]
	f.mu.Unlock()
	if !ok {
		v = 7
	}
	return v, f.after("SchemaVersion", n)
}

func (f *fakeStore) PrepareTarget(ctx context.Context, tenant, from, to string) error {
	n, err := f.call("PrepareTarget")
	if err != nil {
		return err
	}
	f.mu.Lock()
	if f.tenant(to, tenant, false) == nil {
		tr := f.tenant(to, tenant, true)
		tr.status, tr.fenced, tr.epoch = "importing", true, 0
	}
	f.mu.Unlock()
	return f.after("PrepareTarget", n)
}

func (f *fakeStore) CountRows(ctx context.Context, tenant, shard string) (int64, error) {
	n, err := f.call("CountRows")
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	c := int64(len(f.rows[shard][tenant]))
	f.mu.Unlock()
	return c, f.after("CountRows", n)
}

func (f *fakeStore) CopyBatch(ctx context.Context, tenant, from, to string, after Key, limit int) (Key, int, error) {
	n, err := f.call("CopyBatch")
	if err != nil {
		return after, 0, err
	}
	f.mu.Lock()
	if f.tenant(to, tenant, false) == nil {
		f.mu.Unlock()
		return after, 0, errors.New("target not prepared")
	}
	ks := f.keysAfter(after, f.rows[from][tenant])
	if len(ks) > limit {
		ks = ks[:limit]
	}
	next := after
	for _, k := range ks {
		src := f.rows[from][tenant][k]
		if dst, ok := f.rows[to][tenant][k]; !ok || dst.version < src.version {
			f.set(to, tenant, k, src)
		}
		next = k
	}
	f.mu.Unlock()
	return next, len(ks), f.after("CopyBatch", n)
}

func (f *fakeStore) VerifyBatch(ctx context.Context, tenant, from, to string, after Key, limit int) (Key, []Key, int, error) {
	n, err := f.call("VerifyBatch")
	if err != nil {
		return after, nil, 0, err
	}
	f.mu.Lock()
	ks := f.keysAfter(after, f.rows[from][tenant], f.rows[to][tenant])
	if len(ks) > limit {
		ks = ks[:limit]
	}
	next := after
	var diffs []Key
	for _, k := range ks {
		s, sok := f.rows[from][tenant][k]
		d, dok := f.rows[to][tenant][k]
		if sok != dok || s != d {
			diffs = append(diffs, k)
		}
		next = k
	}
	f.mu.Unlock()
	return next, diffs, len(ks), f.after("VerifyBatch", n)
}

// SplitKeys returns every every-th key of tenant on shard.
func (f *fakeStore) SplitKeys(ctx context.Context, tenant, shard string, every int) ([]Key, error) {
	n, err := f.call("SplitKeys")
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	ks := f.keysAfter(Key{}, f.rows[shard][tenant])
	f.mu.Unlock()
	var out []Key
	for i := every - 1; i < len(ks); i += every {
		out = append(out, ks[i])
	}
	return out, f.after("SplitKeys", n)
}

// inRange is whether k is in (after, upto] (a zero upto: no bound).
func inRange(k, after, upto Key) bool {
	return less(after, k) && (upto == Key{} || !less(upto, k))
}

// CopyRange is CopyBatch bounded by upto; it is counted (and hooked) as a CopyBatch, the
// scan's batch, so tests that stop a backfill at its nth batch need not know which it uses.
func (f *fakeStore) CopyRange(ctx context.Context, tenant, from, to string, after, upto Key, limit int) (Key, int, error) {
	n, err := f.call("CopyBatch")
	if err != nil {
		return after, 0, err
	}
	f.mu.Lock()
	if f.tenant(to, tenant, false) == nil {
		f.mu.Unlock()
		return after, 0, errors.New("target not prepared")
	}
	var ks []Key
	for _, k := range f.keysAfter(after, f.rows[from][tenant]) {
		if inRange(k, after, upto) && len(ks) < limit {
			ks = append(ks, k)
		}
	}
	if f.onCopy != nil {
		f.onCopy(ks)
	}
	next := after
	for _, k := range ks {
		src := f.rows[from][tenant][k]
		if dst, ok := f.rows[to][tenant][k]; !ok || dst.version < src.version {
			f.set(to, tenant, k, src)
		}
		next = k
	}
	f.mu.Unlock()
	return next, len(ks), f.after("CopyBatch", n)
}

// CompareRange compares the keys in (after, upto]; counted (and hooked) as a VerifyBatch.
func (f *fakeStore) CompareRange(ctx context.Context, tenant, from, to string, after, upto Key) ([]Key, int, error) {
	n, err := f.call("VerifyBatch")
	if err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	var diffs []Key
	checked := 0
	for _, k := range f.keysAfter(after, f.rows[from][tenant], f.rows[to][tenant]) {
		if !inRange(k, after, upto) {
			continue
		}
		checked++
		s, sok := f.rows[from][tenant][k]
		d, dok := f.rows[to][tenant][k]
		if sok != dok || s != d {
			diffs = append(diffs, k)
		}
	}
	f.mu.Unlock()
	return diffs, checked, f.after("VerifyBatch", n)
}

func (f *fakeStore) Repair(ctx context.Context, tenant, from, to string, keys []Key) (int, error) {
	n, err := f.call("Repair")
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	changed := 0
	for _, k := range keys {
		s, sok := f.rows[from][tenant][k]
		d, dok := f.rows[to][tenant][k]
		switch {
		case !sok && dok:
			delete(f.rows[to][tenant], k)
			changed++
		case sok && (!dok || s != d):
			f.set(to, tenant, k, s)
			changed++
		}
	}
	f.mu.Unlock()
	return changed, f.after("Repair", n)
}

func (f *fakeStore) Fence(ctx context.Context, tenant, shard string) (int64, error) {
	n, err := f.call("Fence")
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	tr := f.tenant(shard, tenant, false)
	if tr == nil {
		f.mu.Unlock()
		return 0, errors.New("no tenant on source")
	}
	tr.fenced = true
	seq := tr.changeSeq
	f.mu.Unlock()
	return seq, f.after("Fence", n)
}

// FenceDelta is Fence then ChangedKeys (each counted and hooked under its own name).
func (f *fakeStore) FenceDelta(ctx context.Context, tenant, shard string, after int64) (int64, []Key, error) {
	seq, err := f.Fence(ctx, tenant, shard)
	if err != nil {
		return 0, nil, err
	}
	keys, err := f.ChangedKeys(ctx, tenant, shard, after, seq)
	return seq, keys, err
}

func (f *fakeStore) ResumeTarget(ctx context.Context, tenant, from, to string, epoch uint64) (records.TargetState, error) {
	n, err := f.call("ResumeTarget")
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	state, err := records.TargetImporting, error(nil)
	src, dst := f.tenant(from, tenant, false), f.tenant(to, tenant, false)
	switch {
	case src == nil || dst == nil:
		err = errors.New("no tenant")
	case dst.status == "importing":
	case dst.epoch != epoch:
		err = fmt.Errorf("%w: active at epoch %d", records.ErrTenantExists, dst.epoch)
	case src.fenced && src.changeSeq == dst.changeSeq:
		state = records.TargetFinished
	case src.fenced && dst.changeSeq > src.changeSeq:
		state = records.TargetAhead
	default:
		dst.status, dst.fenced = "importing", true
	}
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return state, f.after("ResumeTarget", n)
}

// FinishTargetFrom records the mark and is FinishTarget; a mark that is not the importing
// copy's change_seq is an error (the real store falls back to FinishTarget instead, which the
// pgstore tests cover; here it would hide a controller passing the wrong mark).
func (f *fakeStore) FinishTargetFrom(ctx context.Context, tenant, from, to string, epoch uint64, changeSeq, mark int64) error {
	f.mu.Lock()
	f.finishMarks = append(f.finishMarks, mark)
	tr := f.tenant(to, tenant, false)
	var cur int64
	importing := tr != nil && tr.status == "importing"
	if tr != nil {
		cur = tr.changeSeq
	}
	f.mu.Unlock()
	if importing && cur != mark {
		return fmt.Errorf("FinishTargetFrom: mark %d, but the importing copy's change_seq is %d", mark, cur)
	}
	return f.FinishTarget(ctx, tenant, from, to, epoch, changeSeq)
}

func (f *fakeStore) Unfence(ctx context.Context, tenant, shard string) error {
	n, err := f.call("Unfence")
	if err != nil {
		return err
	}
	f.mu.Lock()
	if tr := f.tenant(shard, tenant, false); tr != nil {
		tr.fenced = false
	}
	f.mu.Unlock()
	return f.after("Unfence", n)
}

func (f *fakeStore) FinishTarget(ctx context.Context, tenant, from, to string, epoch uint64, changeSeq int64) error {
	n, err := f.call("FinishTarget")
	if err != nil {
		return err
	}
	f.mu.Lock()
	tr := f.tenant(to, tenant, false)
	if tr == nil {
		f.mu.Unlock()
		return errors.New("target not prepared")
	}
	tr.status, tr.fenced, tr.epoch, tr.changeSeq = "active", false, epoch, changeSeq
	f.mu.Unlock()
	return f.after("FinishTarget", n)
}

func (f *fakeStore) DropTenant(ctx context.Context, tenant, shard string) error {
	n, err := f.call("DropTenant:" + shard)
	if err != nil {
		return err
	}
	f.mu.Lock()
	delete(f.rows[shard], tenant)
	delete(f.tenants[shard], tenant)
	f.mu.Unlock()
	return f.after("DropTenant:"+shard, n)
}

func (f *fakeStore) CommittedSeq(ctx context.Context, tenant, shard string) (int64, error) {
	n, err := f.call("CommittedSeq")
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	tr := f.tenant(shard, tenant, false)
	var seq int64
	if tr != nil {
		seq = tr.changeSeq
	}
	f.mu.Unlock()
	if tr == nil {
		return 0, errors.New("no tenant")
	}
	return seq, f.after("CommittedSeq", n)
}

func (f *fakeStore) ChangedKeys(ctx context.Context, tenant, shard string, after, upto int64) ([]Key, error) {
	n, err := f.call("ChangedKeys")
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	seen := map[Key]bool{}
	for seq := after + 1; seq <= upto; seq++ {
		k, ok := f.outbox[shard][tenant][seq]
		if !ok {
			f.mu.Unlock()
			return nil, fmt.Errorf("%w: seq %d", records.ErrChangesPruned, seq)
		}
		seen[k] = true
	}
	f.mu.Unlock()
	set := map[Key]frow{}
	for k := range seen {
		set[k] = frow{}
	}
	keys := f.keysAfter(Key{}, set)
	return keys, f.after("ChangedKeys", n)
}

func (f *fakeStore) VerifyKeys(ctx context.Context, tenant, from, to string, keys []Key) ([]Key, error) {
	n, err := f.call("VerifyKeys")
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	var diffs []Key
	for _, k := range keys {
		s, sok := f.rows[from][tenant][k]
		d, dok := f.rows[to][tenant][k]
		if sok != dok || s != d {
			diffs = append(diffs, k)
		}
	}
	f.mu.Unlock()
	return diffs, f.after("VerifyKeys", n)
}

func (f *fakeStore) PrecopyTarget(ctx context.Context, tenant, from, to string) (int64, error) {
	n, err := f.call("PrecopyTarget")
	if err != nil {
		return 0, err
	}
	f.mu.Lock()
	src, dst := f.tenant(from, tenant, false), f.tenant(to, tenant, false)
	if src == nil || dst == nil {
		f.mu.Unlock()
		return 0, errors.New("no tenant")
	}
	mark := src.changeSeq
	dst.changeSeq = max(dst.changeSeq, mark)
	f.mu.Unlock()
	return mark, f.after("PrecopyTarget", n)
}

func (f *fakeStore) FirstWrite(ctx context.Context, tenant, from, to string) (time.Duration, bool, error) {
	n, err := f.call("FirstWrite")
	if err != nil {
		return 0, false, err
	}
	f.mu.Lock()
	d, ok := f.firstWrite, f.firstWrite > 0
	f.mu.Unlock()
	return d, ok, f.after("FirstWrite", n)
}

var _ Store = (*fakeStore)(nil)

// fakeLease is the map lease's rule in memory: granted when free, expired or already the
// holder's. broken holders get errors (a controller cut off from the map).
type fakeLease struct {
	mu      sync.Mutex
	holder  string
	expires time.Time
	broken  map[string]bool
	noRel   map[string]bool // holders whose Release is lost (a killed process)
	grants  []string        // holders in the order they took the lease over
}

func newFakeLease() *fakeLease {
	return &fakeLease{broken: map[string]bool{}, noRel: map[string]bool{}}
}

func (l *fakeLease) Acquire(ctx context.Context, name, holder string, ttl time.Duration) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.broken[holder] {
		return errors.New("map unreachable")
	}
	now := time.Now()
	if l.holder != "" && l.holder != holder && now.Before(l.expires) {
		return fmt.Errorf("%w: %s until %s", ErrLeaseHeld, l.holder, l.expires.Format(time.RFC3339Nano))
	}
	if l.holder != holder {
		l.grants = append(l.grants, holder)
	}
	l.holder, l.expires = holder, now.Add(ttl)
	return nil
}

func (l *fakeLease) Release(ctx context.Context, name, holder string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.noRel[holder] || l.holder != holder {
		return nil
	}
	l.holder = ""
	return nil
}

func (l *fakeLease) setBroken(holder string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.broken[holder] = true
}

func (l *fakeLease) history() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.grants, ",")
}

var _ Lease = (*fakeLease)(nil)
