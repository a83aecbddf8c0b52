package debugsrv

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func TestServesProfilesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	addr, err := Start(ctx, "127.0.0.1:0", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "goroutine profile") {
		t.Fatalf("status %d body %.200s", resp.StatusCode, body)
	}
	cancel()
	for range 100 {
		if _, err = http.Get("http://" + addr + "/debug/pprof/"); err != nil {
			return
		}
	}
	t.Fatal("debug server still answering after its context ended")
}

func TestBadAddress(t *testing.T) {
	if _, err := Start(context.Background(), "256.0.0.1:bad", slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("want an error for a bad address")
	}
}
