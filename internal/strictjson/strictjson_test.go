package strictjson

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

type limits struct {
	RPS   *float64 `json:"rps"`
	Burst *int     `json:"burst,omitempty"`
}

type body struct {
	ID     string          `json:"id"`
	Data   json.RawMessage `json:"data"`
	Limits *limits         `json:"limits"`
	Tags   []limits        `json:"tags"`
	Meta   map[string]any  `json:"meta"`
	hidden int             //lint:ignore U1000 an unexported field takes no member name
}

// TestDecode: each rule of DESIGN.md §4 on a body, with the sentinel each violation wraps.
func TestDecode(t *testing.T) {
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	tests := []struct {
		name, body string
		want       error
	}{
		{"exact names", `{"id":"a","data":{"x":1},"limits":{"rps":1.5},"tags":[{"burst":2}],"meta":{"Any":1}}`, nil},
		{"whitespace around", " \n{\"id\":\"a\"}\t\r\n", nil},
		{"nested case-insensitive duplicates are different names", `{"data":{"a":1,"A":2}}`, nil},
		{"nesting at the limit", `{"data":` + strings.Repeat("[", MaxDepth-1) + strings.Repeat("]", MaxDepth-1) + `}`, nil},
		{"nesting past the limit", `{"data":` + deep + `}`, ErrSyntax},
		{"upper-case member", `{"ID":"a"}`, ErrUnknown},
		{"mixed-case member beside the real one", `{"data":{"a":1},"DATA":{"b":2}}`, ErrUnknown},
		{"unknown member", `{"id":"a","extra":1}`, ErrUnknown},
		{"nested struct member case", `{"limits":{"RPS":1}}`, ErrUnknown},
		{"struct in an array", `{"tags":[{"burst":1},{"Burst":2}]}`, ErrUnknown},
		{"unexported field", `{"hidden":1}`, ErrUnknown},
		{"duplicate member", `{"id":"a","id":"b"}`, ErrDuplicate},
		{"duplicate via escape", `{"id":"a","\u0069d":"b"}`, ErrDuplicate},
		{"duplicate inside data", `{"data":{"a":1,"b":{"c":1,"c":2}}}`, ErrDuplicate},
		{"duplicate inside a map", `{"meta":{"k":1,"k":1}}`, ErrDuplicate},
		{"duplicate in an array's object", `{"data":{"l":[{"x":1},{"x":1,"x":2}]}}`, ErrDuplicate},
		{"trailing value", `{"id":"a"} {"id":"b"}`, ErrTrailing},
		{"trailing garbage", `{"id":"a"}x`, ErrTrailing},
		{"trailing bracket", `{"id":"a"}]`, ErrTrailing},
		{"empty", ``, ErrEmpty},
		{"only whitespace", " \n ", ErrEmpty},
		{"syntax", `{"id":}`, ErrSyntax},
		{"unterminated", `{"id":"a"`, ErrSyntax},
		{"unterminated deep", `{"data":` + deep[:1000], ErrSyntax},
		{"single quotes", `{'id':'a'}`, ErrSyntax},
		{"wrong type", `{"id":5}`, ErrType},
		{"wrong nested type", `{"limits":{"rps":"5"}}`, ErrType},
		{"null body", `null`, ErrType},
		{"array body", `[]`, ErrType},
		{"number body", `5`, ErrType},
		{"number out of range", `{"limits":{"burst":1e400}}`, ErrType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b body
			err := Decode([]byte(tt.body), &b)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Decode: %v, want %v", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "json:") {
				t.Fatalf("error %q repeats encoding/json's text", err)
			}
		})
	}
}

// TestDecodeFills: an accepted body fills the value as encoding/json would.
func TestDecodeFills(t *testing.T) {
	var b body
	if err := Decode([]byte(`{"id":"a","data":{"x":[1,2]},"limits":{"rps":null,"burst":3}}`), &b); err != nil {
		t.Fatal(err)
	}
	if b.ID != "a" || string(b.Data) != `{"x":[1,2]}` || b.Limits == nil || b.Limits.RPS != nil || *b.Limits.Burst != 3 {
		t.Fatalf("decoded %+v", b)
	}
}

// TestCheck: Check applies every rule but names.
func TestCheck(t *testing.T) {
	for body, want := range map[string]error{
		`{"A":1,"a":2}`:       nil,
		`[1,{"x":null}]`:      nil,
		`"s"`:                 nil,
		`{"a":1,"a":1}`:       ErrDuplicate,
		`1 2`:                 ErrTrailing,
		`{"a":[1,2}`:          ErrSyntax,
		"":                    ErrEmpty,
		`{"a":{"b":{"b":1}}}`: nil,
	} {
		if err := Check([]byte(body)); !errors.Is(err, want) || (want == nil) != (err == nil) {
			t.Errorf("Check(%q) = %v, want %v", body, err, want)
		}
	}
}

// FuzzDecode: Decode never panics; what it accepts encoding/json accepts too, with no member
// name outside the struct's exact names.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"id":"a"}`, `{"data":{"a":1,"a":2}}`, `{"ID":1}`, `{"limits":{"rps":1}} x`, `[`, `null`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b body
		if err := Decode([]byte(s), &b); err != nil {
			for _, sentinel := range []error{ErrEmpty, ErrSyntax, ErrTrailing, ErrDuplicate, ErrUnknown, ErrType} {
				if errors.Is(err, sentinel) {
					return
				}
			}
			t.Fatalf("error %v wraps no sentinel", err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", s, err)
		}
		for k := range m {
			switch k {
			case "id", "data", "limits", "tags", "meta":
			default:
				t.Fatalf("accepted member %q", k)
			}
		}
	})
}
