package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A second `up` while a launcher runs must refuse instead of clobbering the running cluster.
func TestUpRefusesWhileRunning(t *testing.T) {
	dir := t.TempDir()
	// This test process stands in for a live launcher.
	if err := os.WriteFile(pidPath(dir), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	err := cmdUp([]string{"--dir", dir, "--foreground"})
	if err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("cmdUp with a live launcher: %v, want an 'already running' error", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "cluster.json")); !os.IsNotExist(err) {
		t.Fatalf("refused up touched cluster.json: %v", err)
	}
}

// A stale pid file (the launcher died) does not block a new up.
func TestRunningPidIgnoresStaleFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(pidPath(dir), []byte("999999999"), 0o644); err != nil {
		t.Fatal(err)
	}
	if pid := runningPid(dir); pid != 0 {
		t.Fatalf("runningPid = %d for a dead pid", pid)
	}
	if err := os.WriteFile(pidPath(dir), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if pid := runningPid(dir); pid != 0 {
		t.Fatalf("runningPid = %d for a garbled file", pid)
	}
}
