package localsrv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestMissingBinaryNamesPackage(t *testing.T) {
	_, err := findBinary("meridian-no-such-server", "meridian-pkg", t.TempDir())
	if !errors.Is(err, ErrMissingBinary) {
		t.Fatalf("err = %v, want ErrMissingBinary", err)
	}
	if !strings.Contains(err.Error(), "apt-get install meridian-pkg") {
		t.Fatalf("error %q does not name the package", err)
	}
}

func TestFindBinaryExtraDir(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "meridian-fake-server")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := findBinary("meridian-fake-server", "x", "/nonexistent", dir)
	if err != nil || got != bin {
		t.Fatalf("findBinary = %q, %v; want %q", got, err, bin)
	}
}

func TestCheckTraversable(t *testing.T) {
	id, err := resolveIdentity("")
	if err != nil {
		t.Fatal(err)
	}
	if id.cred == nil {
		t.Log("not root: no user switch, every dir is fine")
		if err := checkTraversable(t.TempDir(), id); err != nil {
			t.Fatal(err)
		}
		return
	}
	closed := t.TempDir() // 0700 parents, owned by root
	if err := os.Chmod(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := checkTraversable(filepath.Join(closed, "inst"), id); err == nil || !strings.Contains(err.Error(), "not traversable") {
		t.Fatalf("checkTraversable under 0700 dir = %v, want not traversable", err)
	}
	open, _, err := makeBaseDir("", "meridian-test-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(open)
	if err := checkTraversable(filepath.Join(open, "inst"), id); err != nil {
		t.Fatalf("checkTraversable under makeBaseDir dir: %v", err)
	}
}

func TestResolveIdentity(t *testing.T) {
	id, err := resolveIdentity("")
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if id.cred == nil || id.uid == 0 {
			t.Fatalf("as root, default identity is %+v; want an unprivileged user", id)
		}
		if _, err := resolveIdentity("root"); err == nil {
			t.Fatal("RunAs root accepted")
		}
	} else if _, err := resolveIdentity("nobody"); err == nil {
		t.Fatal("non-root switched user")
	}
	if _, err := resolveIdentity("meridian-no-such-user"); err == nil {
		t.Fatal("unknown user accepted")
	}
}

func TestStartNATSGatewaysRejectsBadRegions(t *testing.T) {
	// Upper case, underscores and 64 bytes were accepted here once; the map refuses them.
	for _, regions := range [][]string{nil, {""}, {"a", "a"}, {"us east"}, {"a.b"}, {"US-east"}, {"us_east"},
		{"-a"}, {strings.Repeat("a", 64)}} {
		if _, err := StartNATSGateways(regions, ""); !errors.Is(err, ErrInvalidName) {
			t.Errorf("StartNATSGateways(%q) = %v, want ErrInvalidName", regions, err)
		}
	}
}

// TestTemplateBuiltOnceConcurrently builds a template in a private TMPDIR from several
// goroutines at once (flock locks are per open file, so goroutines contend like processes do)
// and checks that all get the same complete template and no build debris is left.
func TestTemplateBuiltOnceConcurrently(t *testing.T) {
	b, err := findPGBins()
	if err != nil {
		t.Fatal(err)
	}
	id, err := resolveIdentity("")
	if err != nil {
		t.Fatal(err)
	}
	tmp, _, err := makeBaseDir("", "meridian-tmpl-test-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	t.Setenv("TMPDIR", tmp)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const n = 4
	paths := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { paths[i], errs[i] = ensureTemplate(ctx, b, id) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if paths[i] != paths[0] || !strings.HasPrefix(paths[i], tmp) {
			t.Fatalf("template paths differ or outside TMPDIR: %q", paths)
		}
	}
	if _, err := os.Stat(filepath.Join(paths[0], "PG_VERSION")); err != nil {
		t.Fatal(err)
	}
	hba, err := os.ReadFile(filepath.Join(paths[0], "pg_hba.conf"))
	if err != nil || !strings.Contains(string(hba), "replication") {
		t.Fatalf("pg_hba.conf: %v\n%s", err, hba)
	}
	entries, _ := os.ReadDir(tmp)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".build-") {
			t.Errorf("build debris left: %s", e.Name())
		}
	}
}

func TestStopNATSRemovesTempStore(t *testing.T) {
	s, err := StartNATS(NATSOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := s.JetStreamConfig().StoreDir
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("store dir %s: %v", dir, err)
	}
	if err := StopNATS(s); err != nil {
		t.Fatal(err)
	}
	if err := StopNATS(s); err != nil {
		t.Fatalf("second StopNATS: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("store dir %s left after StopNATS (err=%v)", dir, err)
	}
}

// TestExclusiveIsOneHolderAtATime: a second Exclusive of the same name waits while the first
// holds it (and gives up with its context), gets it once the first releases, and another name
// is independent.
func TestExclusiveIsOneHolderAtATime(t *testing.T) {
	name := fmt.Sprintf("test-exclusive-%d", os.Getpid())
	t.Cleanup(func() { os.Remove(filepath.Join(os.TempDir(), "meridian-"+name+".lock")) })
	release, err := Exclusive(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if r2, err := Exclusive(ctx, name); err == nil {
		r2()
		t.Fatal("a second Exclusive got the lock while the first held it")
	}
	other, err := Exclusive(context.Background(), name+"-other")
	if err != nil {
		t.Fatalf("another name: %v", err)
	}
	other()
	os.Remove(filepath.Join(os.TempDir(), "meridian-"+name+"-other.lock"))
	got := make(chan error, 1)
	go func() {
		r3, err := Exclusive(context.Background(), name)
		if err == nil {
			r3()
		}
		got <- err
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-got:
		t.Fatalf("Exclusive returned (%v) while the lock was held", err)
	default:
	}
	release()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("after release: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Exclusive still waiting 5 s after the release")
	}
}
