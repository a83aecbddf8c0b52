package replication

import (
	"errors"
	"testing"
)

func TestParseLSN(t *testing.T) {
	cases := []struct {
		in   string
		want LSN
		err  bool
	}{
		{"0/0", 0, false},
		{"16/B374D848", LSN(0x16<<32 | 0xB374D848), false},
		{"FFFFFFFF/FFFFFFFF", LSN(^uint64(0)), false},
		{"", 0, true},
		{"16", 0, true},
		{"/1", 0, true},
		{"1/", 0, true},
		{"G/1", 0, true},
		{"1/123456789", 0, true},
		{"-1/1", 0, true},
	}
	for _, c := range cases {
		t.Run(c.in, func(t *testing.T) {
			got, err := ParseLSN(c.in)
			if c.err {
				if !errors.Is(err, ErrBadLSN) {
					t.Fatalf("ParseLSN(%q) err = %v, want ErrBadLSN", c.in, err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("ParseLSN(%q) = %v, %v; want %v", c.in, got, err, c.want)
			}
			if back, _ := ParseLSN(got.String()); back != got {
				t.Fatalf("round trip %q -> %v -> %q", c.in, got, got.String())
			}
		})
	}
}

func TestTokenRoundTrip(t *testing.T) {
	tok := Token{Shard: "eu-west-2", LSN: LSN(0x3<<32 | 0x1A2B)}
	got, err := DecodeToken(tok.Encode())
	if err != nil || got != tok {
		t.Fatalf("DecodeToken(Encode(%v)) = %v, %v", tok, got, err)
	}
	for _, bad := range []string{"", "!!!", tok.Encode() + "x", "MXxldS13ZXN0LTJ8", // "1|eu-west-2|"
		"MnxldS13ZXN0LTJ8MQ", // version 2
		"MXxFVS1XRVNUfDE",    // upper-case shard
	} {
		if _, err := DecodeToken(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("DecodeToken(%q) err = %v, want ErrBadToken", bad, err)
		}
	}
}

func FuzzDecodeToken(f *testing.F) {
	f.Add(Token{Shard: "us-east-1", LSN: 42}.Encode())
	f.Add("")
	f.Add("MXx8")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := DecodeToken(s)
		if err != nil {
			return
		}
		again, err := DecodeToken(tok.Encode())
		if err != nil || again != tok {
			t.Fatalf("re-encode of %q: %v %v", s, again, err)
		}
	})
}
