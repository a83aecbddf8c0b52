// Package ids defines, once (DESIGN.md §12), the names every layer of Meridian validates —
// tenant, shard, region, collection and record ids — and the slot limits. It sits under
// shardmap because the map defines them, and is a leaf package (stdlib only) so that region,
// replication and the HTTP layers can import it without pulling in Raft. The router, the API
// node, the topology file, the launcher and the test servers call these functions instead of
// keeping patterns of their own, so an id the map accepts is an id every other part accepts.
//
// The checks are hand-written byte loops rather than regular expressions because the router
// runs ValidTenant on every request; the Pattern constants are the same rules written as
// regular expressions, for error messages and documentation. ids_test.go checks that each
// function agrees with its pattern.
package ids

// Id patterns, as regular expressions. They are for messages and docs; validate with the
// functions below.
const (
	// TenantPattern is the rule of a tenant id (DESIGN.md §2).
	TenantPattern = `^[a-z0-9][a-z0-9-]{2,62}$`
	// NamePattern is the rule of region and shard ids, e.g. "us-east", "us-east-1".
	NamePattern = `^[a-z0-9][a-z0-9-]{0,62}$`
	// CollectionPattern is the rule of a collection name (DESIGN.md §4).
	CollectionPattern = `^[a-z][a-z0-9_]{0,62}$`
	// RecordIDPattern is the rule of a record id (DESIGN.md §4).
	RecordIDPattern = `^[A-Za-z0-9_-]{1,128}$`
)

// Slot limits (DESIGN.md §2). The slot count is fixed at bootstrap.
const (
	// DefaultSlotCount is the slot table size used when a bootstrap command leaves it zero.
	DefaultSlotCount = 1024
	// MaxSlotCount bounds the slot table; slots index shards with a uint16.
	MaxSlotCount = 1 << 16
)

// idChar marks the bytes allowed in tenant, region and shard ids: [a-z0-9] = 1, '-' = 2.
var idChar = func() (t [256]uint8) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = 1
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = 1
	}
	t['-'] = 2
	return t
}()

// ValidTenant reports whether id matches TenantPattern, without allocating.
func ValidTenant(id string) bool {
	return len(id) >= 3 && validLower(id)
}

// ValidRegion reports whether id matches NamePattern.
func ValidRegion(id string) bool { return len(id) >= 1 && validLower(id) }

// ValidShard reports whether id matches NamePattern.
func ValidShard(id string) bool { return len(id) >= 1 && validLower(id) }

// validLower checks ^[a-z0-9][a-z0-9-]*$ with at most 63 bytes.
func validLower(id string) bool {
	if len(id) > 63 || idChar[id[0]] != 1 {
		return false
	}
	for i := 1; i < len(id); i++ {
		if idChar[id[i]] == 0 {
			return false
		}
	}
	return true
}

// ValidCollection reports whether name matches CollectionPattern.
func ValidCollection(name string) bool {
	if len(name) < 1 || len(name) > 63 || name[0] < 'a' || name[0] > 'z' {
		return false
	}
	for i := 1; i < len(name); i++ {
		c := name[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// ValidRecord reports whether id matches RecordIDPattern.
func ValidRecord(id string) bool {
	if len(id) < 1 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}
