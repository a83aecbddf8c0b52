package h1

import "testing"

func TestChunkedLength(t *testing.T) {
	for _, c := range []struct {
		in       string
		n        int
		done, ok bool
	}{
		{"0\r\n\r\n", 5, true, true},
		{"3\r\nabc\r\n0\r\n\r\nNEXT", 13, true, true},
		{"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n", 31, true, true},
		{"3\r\nab", 0, false, true},
		{"3\r\nabc\r\n0\r\n", 0, false, true},
		{"zz\r\n", 0, false, false},
		{"-1\r\n", 0, false, false},
	} {
		n, done, ok := ChunkedLength([]byte(c.in))
		if n != c.n || done != c.done || ok != c.ok {
			t.Errorf("%q: %d %v %v, want %d %v %v", c.in, n, done, ok, c.n, c.done, c.ok)
		}
	}
}

func TestAtoi(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "200": 200, "": -1, "+1": -1, "1 ": -1, "1234567890123456789": -1} {
		if got := Atoi([]byte(in)); got != want {
			t.Errorf("%q: %d, want %d", in, got, want)
		}
	}
}

func TestEqualFold(t *testing.T) {
	for _, tc := range []struct {
		b, s string
		want bool
	}{
		{"Content-Length", "content-length", true},
		{"CONNECTION", "Connection", true},
		{"chunked", "chunked", true},
		{"chunked", "chunke", false},
		{"chunkeD ", "chunked", false},
		{"Host", "Hosu", false},
		{"[", "{", false},               // '[' + 32 is '{': only letters fold
		{"\xc3\x89", "\xc3\xa9", false}, // É, é: ASCII only
		{"", "", true},
	} {
		if got := EqualFold(tc.b, tc.s); got != tc.want {
			t.Errorf("EqualFold(%q, %q) = %v, want %v", tc.b, tc.s, got, tc.want)
		}
		if got := EqualFold([]byte(tc.b), tc.s); got != tc.want {
			t.Errorf("EqualFold([]byte(%q), %q) = %v, want %v", tc.b, tc.s, got, tc.want)
		}
	}
}

func TestHasToken(t *testing.T) {
	for _, tc := range []struct {
		v, tok string
		want   bool
	}{
		{"close", "close", true},
		{"Keep-Alive, CLOSE", "close", true},
		{" upgrade ,close ", "close", true},
		{"closed", "close", false},
		{"keep-alive", "close", false},
		{"gzip, chunked", "chunked", true},
		{",,", "close", false},
		{"", "close", false},
	} {
		if got := HasToken([]byte(tc.v), tc.tok); got != tc.want {
			t.Errorf("HasToken(%q, %q) = %v, want %v", tc.v, tc.tok, got, tc.want)
		}
	}
}
