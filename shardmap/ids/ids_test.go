package ids

import (
	"regexp"
	"strings"
	"testing"
)

// TestIDFunctionsMatchPatterns checks each hand-written validator against the regular
// expression it documents, over edge cases and every byte in every position of short ids.
func TestIDFunctionsMatchPatterns(t *testing.T) {
	cases := []struct {
		name    string
		pattern string
		valid   func(string) bool
	}{
		{"tenant", TenantPattern, ValidTenant},
		{"region", NamePattern, ValidRegion},
		{"shard", NamePattern, ValidShard},
		{"collection", CollectionPattern, ValidCollection},
		{"record", RecordIDPattern, ValidRecord},
	}
	inputs := []string{"", "a", "ab", "abc", "a-b", "-ab", "ab-", "Abc", "a_b", "_ab", "1ab", "us-east", "us-east-1",
		"a b", "ab\x00", "äbc", strings.Repeat("a", 62), strings.Repeat("a", 63), strings.Repeat("a", 64),
		strings.Repeat("A", 128), strings.Repeat("A", 129)}
	for b := 0; b < 256; b++ {
		inputs = append(inputs, string([]byte{byte(b)}), "ab"+string([]byte{byte(b)}), string([]byte{byte(b)})+"ab")
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			re := regexp.MustCompile(tc.pattern)
			for _, in := range inputs {
				if got, want := tc.valid(in), re.MatchString(in); got != want {
					t.Errorf("%q: function says %v, pattern %s says %v", in, got, tc.pattern, want)
				}
			}
		})
	}
}

func TestValidTenantDoesNotAllocate(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { ValidTenant("acme-corp") }); n != 0 {
		t.Fatalf("ValidTenant allocates %v times", n)
	}
}
