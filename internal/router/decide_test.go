package router

import (
	"encoding/json"
	"net/textproto"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// goldenCase is one routing decision in testdata/decisions.json.
type goldenCase struct {
	Name string        `json:"name"`
	In   DecisionInput `json:"in"`
	Want Decision      `json:"want"`
}

// TestDecideGolden checks Decide against testdata/decisions.json; on a mismatch it writes the
// actual decisions to testdata/decisions.actual.json for review (Vitess-style plan tests).
func TestDecideGolden(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "decisions.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []goldenCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 10 {
		t.Fatalf("only %d golden cases", len(cases))
	}
	failed := false
	actual := make([]goldenCase, len(cases))
	for i, tc := range cases {
		got := Decide(tc.In)
		actual[i] = goldenCase{tc.Name, tc.In, got}
		t.Run(tc.Name, func(t *testing.T) {
			if !reflect.DeepEqual(got, tc.Want) {
				failed = true
				t.Errorf("Decide(%+v)\n got %+v\nwant %+v", tc.In, got, tc.Want)
			}
		})
	}
	if failed {
		out, _ := json.MarshalIndent(actual, "", "  ")
		_ = os.WriteFile(filepath.Join("testdata", "decisions.actual.json"), out, 0o644)
		t.Log("actual decisions written to testdata/decisions.actual.json")
	}
}

func TestIsIdempotent(t *testing.T) {
	for _, tc := range []struct {
		method string
		key    bool
		want   bool
	}{
		{"GET", false, true}, {"HEAD", false, true}, {"PUT", false, true}, {"DELETE", false, true},
		{"POST", false, false}, {"POST", true, true}, {"PATCH", false, false}, {"PATCH", true, true},
		{"CONNECT", false, false},
	} {
		if got := IsIdempotent(tc.method, tc.key); got != tc.want {
			t.Errorf("IsIdempotent(%s, %v) = %v, want %v", tc.method, tc.key, got, tc.want)
		}
	}
}

// TestHeaderNamesCanonical: the hot path sets and reads these names by map index (setCanon,
// headerValue), which is only right for names in canonical form.
func TestHeaderNamesCanonical(t *testing.T) {
	for _, k := range []string{HeaderRequestID, HeaderShardmapVersion, HeaderServedRegion,
		HeaderIdempotencyKey, HeaderRequestTimeout, HeaderTenantEpoch, canonTraceparent,
		canonRateLimitLimit, canonRateLimitRemaining, canonRateLimitReset} {
		if c := textproto.CanonicalMIMEHeaderKey(k); c != k {
			t.Errorf("%q is not canonical (%q)", k, c)
		}
	}
	if textproto.CanonicalMIMEHeaderKey(HeaderTraceparent) != canonTraceparent {
		t.Errorf("canonTraceparent is not HeaderTraceparent's canonical form")
	}
}
