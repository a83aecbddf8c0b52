package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/meridian-dev/meridian/internal/records"
)

// RedisOptions are the options of a region's Redis client for the cache (cmd/api uses them).
// ContextTimeoutEnabled makes go-redis honour a call's context deadline on the socket: the
// cache bounds every call by Config.Timeout (50 ms) through its context, and without the flag
// a stalled Redis held each read for the 200 ms ReadTimeout instead. No retries: a failed call
// is a bypass, not a wait.
func RedisOptions(addr string) *redis.Options {
	return &redis.Options{Addr: addr, DialTimeout: time.Second, ReadTimeout: 200 * time.Millisecond,
		WriteTimeout: 200 * time.Millisecond, MaxRetries: -1, ContextTimeoutEnabled: true}
}

// Keys. Every key of a tenant carries the hash tag {tenant}; the region epoch is one key of its
// own. The entry keys embed the generations they were read under:
//
//	m:E                                      region epoch (string)
//	m:{<tenant>}:s                           tenant state (hash): g, ic, nl:<shard>, lg:<coll>, we
//	m:F:<shard>                              a shard's published freshness (edge.go)
//	m:{<tenant>}:<E>:<g>:r:<coll>:<id>       a record
//	m:{<tenant>}:<E>:<g>:l:<coll>:<lg>:<q>   a list page (q: hash of the ListQuery)
//
// Tenant, collection and record ids never contain ':', '{' or '}' (shardmap/ids), so a key
// names exactly one thing.
const epochKey = "m:E"

func tenantPrefix(tenant string) string { return "m:{" + tenant + "}:" }
func stateKey(tenant string) string     { return tenantPrefix(tenant) + "s" }

// recordKey is the key of record coll/id of tenant under region epoch regionEpoch and the
// tenant's generation gen, as lookupScript spells it (the edge's reads).
func recordKey(tenant, regionEpoch, gen, coll, id string) string {
	return tenantPrefix(tenant) + regionEpoch + ":" + gen + ":r:" + coll + ":" + id
}

// Entry kinds, as they appear in keys (and as the kind label of the requests metric).
const (
	kindRecord = "record"
	kindList   = "list"
)

func keyKind(kind string) string {
	if kind == kindList {
		return "l"
	}
	return "r"
}

// queryHash names a ListQuery in a page's key: every field that changes the answer.
func queryHash(q records.ListQuery) string {
	b, _ := json.Marshal(struct {
		L int
		D bool
		A string
		F []string
		Q string
	}{q.Limit, q.Desc, q.After, q.Fields, q.Filter}) // cannot fail: strings, ints, bools
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// lsnHex spells an LSN as 16 lowercase hex digits, so that Lua compares two of them as strings
// (Lua numbers are doubles and would round LSNs above 2^53).
func lsnHex(lsn uint64) string {
	s := strconv.FormatUint(lsn, 16)
	return "0000000000000000"[len(s):] + s
}

// luaNow is the value a missing generation starts at: Redis's clock in microseconds. A tenant
// state hash (or the epoch key) that expired or was evicted so comes back at a value it never
// had before, so entries written under its old values stay unreachable (a counter restarting at
// 0 could count up to an old value while entries under it still live).
const luaNow = `
local function now_us()
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
local function epoch(create)
  local e = redis.call('GET', KEYS[1])
  if not e and create then
    e = now_us()
    redis.call('SET', KEYS[1], e)
  end
  return e
end
local function generation(ttl)
  local g = redis.call('HGET', KEYS[2], 'g')
  if not g then
    g = now_us()
    redis.call('HSET', KEYS[2], 'g', g)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
  return g
end
`

// lookupScript reads the generations and the entry in one round trip.
// KEYS: epoch, tenant state. ARGV: tenant prefix, key kind (r|l), collection, id or query
// hash, state TTL ms, shard. Returns {entry key, E, g, ic, nl (of the shard), value or nil}.
var lookupScript = redis.NewScript(luaNow + `
local e = epoch(true)
local g = generation(ARGV[5])
local h = redis.call('HMGET', KEYS[2], 'ic', 'nl:' .. ARGV[6], 'lg:' .. ARGV[3])
local key
if ARGV[2] == 'r' then
  key = ARGV[1] .. e .. ':' .. g .. ':r:' .. ARGV[3] .. ':' .. ARGV[4]
else
  key = ARGV[1] .. e .. ':' .. g .. ':l:' .. ARGV[3] .. ':' .. (h[3] or '0') .. ':' .. ARGV[4]
end
return {key, e, g, h[1] or '0', h[2] or '', redis.call('GET', key)}
`)

// fillScript stores an entry only if the epoch, the tenant's generation and its invalidation
// count are what the lookup saw: an Invalidate (of any node) that ran between the lookup and
// this script rejects the fill, and one that runs after it deletes the entry. The check and the
// SET are one atomic step, so no reader can see the entry in between.
// A stored fill also raises the tenant's write epoch we to the epoch it was read under (the
// edge serves a tenant's entries only on that epoch: edge.go).
// KEYS: epoch, tenant state, entry. ARGV: E, g, ic, value, TTL ms, write epoch. Returns 1 if
// stored.
var fillScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local h = redis.call('HMGET', KEYS[2], 'g', 'ic', 'we')
if h[1] ~= ARGV[2] or (h[2] or '0') ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
if not h[3] or tonumber(h[3]) < tonumber(ARGV[6]) then redis.call('HSET', KEYS[2], 'we', ARGV[6]) end
return 1
`)

// invalidateScript counts the invalidation, raises the tenant's newest event LSN of the
// event's shard, bumps the collection's list generation and deletes the record's entry under
// the current generations. KEYS: epoch, tenant state. ARGV: tenant prefix, collection, id, LSN
// (16 hex digits), state TTL ms, shard.
var invalidateScript = redis.NewScript(luaNow + `
local e = epoch(false)
local g = generation(ARGV[5])
redis.call('HINCRBY', KEYS[2], 'ic', 1)
redis.call('HINCRBY', KEYS[2], 'lg:' .. ARGV[2], 1)
local nl = redis.call('HGET', KEYS[2], 'nl:' .. ARGV[6])
if not nl or nl < ARGV[4] then redis.call('HSET', KEYS[2], 'nl:' .. ARGV[6], ARGV[4]) end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if e then redis.call('DEL', ARGV[1] .. e .. ':' .. g .. ':r:' .. ARGV[2] .. ':' .. ARGV[3]) end
return 1
`)

// resetTenantScript bumps the tenant's generation (and its invalidation count, so fills in
// flight are rejected). KEYS: epoch, tenant state. ARGV: state TTL ms.
var resetTenantScript = redis.NewScript(luaNow + `
if redis.call('HEXISTS', KEYS[2], 'g') == 1 then
  redis.call('HINCRBY', KEYS[2], 'g', 1)
else
  generation(ARGV[1])
end
redis.call('HINCRBY', KEYS[2], 'ic', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
`)

// resetAllScript bumps the region epoch. KEYS: epoch.
var resetAllScript = redis.NewScript(luaNow + `
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCR', KEYS[1])
else
  epoch(true)
end
return 1
`)
