package replication

import (
	"errors"
	"testing"
	"time"
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
		"MnxldS13ZXN0LTJ8MQ",                       // version 2
		"MXxFVS1XRVNUfDE",                          // upper-case shard
		tok.Encode()[:4] + "\n" + tok.Encode()[4:], // a newline the decoder would skip
		"MXxldS13ZXN0LTJ8MDE",                      // "1|eu-west-2|01": a leading zero
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
		if tok.Encode() != s {
			t.Fatalf("%q accepted as %v, whose one spelling is %q", s, tok, tok.Encode())
		}
		again, err := DecodeToken(tok.Encode())
		if err != nil || again != tok {
			t.Fatalf("re-encode of %q: %v %v", s, again, err)
		}
	})
}

func TestPageStart(t *testing.T) {
	const blk, seg = 8192, 16 << 20
	cases := []struct{ in, want LSN }{
		{0x1000, 0x1000},             // mid-page
		{blk + shortPageHeader, blk}, // just after a page header
		{blk + shortPageHeader + 8, blk + shortPageHeader + 8},
		{seg + longPageHeader, seg},                    // just after a segment's first page header
		{seg + shortPageHeader, seg + shortPageHeader}, // inside a segment's long header: left alone
		{3*seg + 5*blk + shortPageHeader, 3*seg + 5*blk},
	}
	for _, c := range cases {
		if got := pageStart(c.in, blk, seg); got != c.want {
			t.Errorf("pageStart(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if got := pageStart(blk+shortPageHeader, 0, 0); got != blk+shortPageHeader {
		t.Errorf("pageStart with unknown sizes = %v, want the position unchanged", got)
	}
}

func TestSamples(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	var ss []Sample
	ss = addSample(ss, Sample{at(0), 100})
	ss = addSample(ss, Sample{at(1), 200})
	ss = addSample(ss, Sample{at(2), 200}) // same position: the later time replaces the earlier
	ss = addSample(ss, Sample{at(3), 150}) // went back: ignored
	ss = addSample(ss, Sample{at(4), 300})
	if len(ss) != 3 || ss[1] != (Sample{at(2), 200}) {
		t.Fatalf("samples %v", ss)
	}
	for _, c := range []struct {
		replayed LSN
		want     time.Time
		ok       bool
	}{{99, time.Time{}, false}, {100, at(0), true}, {250, at(2), true}, {300, at(4), true}, {1000, at(4), true}} {
		got, ok := freshAsOf(ss, c.replayed)
		if ok != c.ok || !got.Equal(c.want) {
			t.Errorf("freshAsOf(%v) = %v, %v; want %v, %v", c.replayed, got, ok, c.want, c.ok)
		}
	}
	for i := range 2 * maxSamples {
		ss = addSample(ss, Sample{at(10 + i), LSN(1000 + i)})
	}
	if len(ss) != maxSamples || ss[0].LSN != LSN(1000+maxSamples) {
		t.Fatalf("ring kept %d samples from %v, want %d from %v", len(ss), ss[0].LSN, maxSamples, LSN(1000+maxSamples))
	}
}
