package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestPartsStopInReverseOrder(t *testing.T) {
	p := NewParts(quiet())
	var order []string
	boom := errors.New("boom")
	for _, name := range []string{"pools", "map", "http"} {
		p.Add(name, func(context.Context) error {
			order = append(order, name)
			if name == "map" {
				return boom
			}
			return nil
		})
	}
	ran := make(chan struct{})
	p.Go("jobs", func(ctx context.Context) error {
		close(ran)
		<-ctx.Done()
		return ctx.Err() // canceled by Stop: not an error
	})
	<-ran
	err := p.Stop(context.Background())
	if got := strings.Join(order, ","); got != "http,map,pools" {
		t.Fatalf("stop order %s, want http,map,pools", got)
	}
	if !errors.Is(err, boom) || strings.Contains(err.Error(), "jobs") {
		t.Fatalf("Stop = %v, want only map's error", err)
	}
	if err := p.Stop(context.Background()); err != nil || len(order) != 3 {
		t.Fatalf("second Stop = %v and stopped %v again", err, order[3:])
	}
}

func TestPartsWait(t *testing.T) {
	p := NewParts(quiet())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("Wait after the signal = %v", err)
	}
	broken := errors.New("listener gone")
	p.Go("http", func(context.Context) error { return broken })
	if err := p.Wait(context.Background()); !errors.Is(err, ErrStoppedItself) || !strings.Contains(err.Error(), "listener gone") {
		t.Fatalf("Wait = %v, want ErrStoppedItself naming the cause", err)
	}
	if err := p.Stop(context.Background()); !errors.Is(err, broken) {
		t.Fatalf("Stop = %v, want the part's own error", err)
	}
}

func TestServeHTTPDrains(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		_, _ = io.WriteString(w, "done")
	})}
	p := NewParts(quiet())
	p.Go("http", func(ctx context.Context) error { return ServeHTTP(ctx, srv, ln, time.Minute) })
	answer := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String())
		if err != nil {
			answer <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answer <- string(b)
	}()
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- p.Stop(context.Background()) }()
	// The listener closes at once while the request in flight goes on.
	for {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			break
		}
		c.Close()
	}
	close(release)
	if a := <-answer; a != "done" {
		t.Fatalf("request in flight got %q", a)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("Stop = %v", err)
	}
}

// TestServeHTTPGraceExpires: a request that outlives the grace period makes ServeHTTP report it.
func TestServeHTTPGraceExpires(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	defer close(release)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { close(entered); <-release })
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ServeHTTP(ctx, NewHTTPServer(h, HTTPLimits{}), ln, 50*time.Millisecond) }()
	go func() {
		if resp, err := http.Get("http://" + ln.Addr().String()); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	cancel()
	if err := <-served; err == nil {
		t.Fatal("ServeHTTP returned nil although a request outlived the grace period")
	}
}
