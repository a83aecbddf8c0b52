package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/meridian-dev/meridian/internal/loadgen"
)

// machine describes where a benchmark ran.
type machine struct {
	goVersion string
	nproc     int
	cpu       string
	// loadavg is /proc/loadavg's 1, 5 and 15 minute averages, "" when unknown.
	loadavg string
}

func machineInfo(ctx context.Context) machine {
	m := machine{goVersion: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH, nproc: runtime.NumCPU(), cpu: "unknown"}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "go", "version").Output(); err == nil {
		m.goVersion = strings.TrimSpace(string(out))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		if model := cpuModel(f); model != "" {
			m.cpu = model
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.loadavg = strings.Join(f[:3], " ")
		}
	}
	return m
}

// cpuModel returns the first "model name" of a /proc/cpuinfo listing.
func cpuModel(r io.Reader) string {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// secretFlags are flags whose values never reach a report.
var secretFlags = map[string]bool{"token": true, "jwt-secret": true, "admin-token": true}

// commandLine renders bench's arguments as a shell command, secrets redacted.
func commandLine(args []string) string {
	parts := []string{"go run ./cmd/bench"}
	redactNext := false
	for _, a := range args {
		switch {
		case redactNext:
			a, redactNext = "REDACTED", false
		case strings.HasPrefix(a, "-"):
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if secretFlags[name] {
				if hasValue {
					a = a[:strings.Index(a, "=")+1] + "REDACTED"
				} else {
					redactNext = true
				}
			}
		}
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@+", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var scenarioTitles = map[string]string{
	scenarioGet:         "Single-record GET",
	scenarioPost:        "Single-record POST",
	scenarioCompare:     "GET direct to an API node vs through the router",
	scenarioCompareHome: "GET through one router: tenant homed locally vs in another region",
	scenarioHostile:     "A tenant's GET through one router, alone vs beside a hostile tenant",
	scenarioSlowBody:    "A tenant's GET through one router, alone vs beside slow-body connections",
	scenarioMoves:       "Tenant moves under load",
}

// writeSection writes the Markdown section for docs/BENCHMARKS.md.
func writeSection(w io.Writer, o *options, p *plan, rep *loadgen.Report, m machine) {
	title := o.title
	if title == "" {
		title = scenarioTitles[o.scenario]
	}
	fmt.Fprintf(w, "## %s (%s)\n\n", title, rep.Started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "```\n%s\n```\n\n", commandLine(o.args))
	fmt.Fprintf(w, "- Machine: %d CPUs (nproc), %s; %s", m.nproc, m.cpu, m.goVersion)
	if m.loadavg != "" {
		fmt.Fprintf(w, "; load average %s when measured", m.loadavg)
	}
	fmt.Fprintln(w)
	if p.region != "" {
		fmt.Fprintf(w, "- Region %s;", p.region)
	} else {
		fmt.Fprintf(w, "-")
	}
	fmt.Fprintf(w, " targets:")
	for i, t := range p.targets {
		sep := ","
		if i == 0 {
			sep = ""
		}
		fmt.Fprintf(w, "%s %s = %s (tenant `%s`", sep, t.name, t.base, t.tenant.id)
		if t.tenant.home != "" {
			fmt.Fprintf(w, " homed in %s", t.tenant.home)
		}
		fmt.Fprintf(w, ")")
	}
	if o.scenario == scenarioCache {
		fmt.Fprintf(w, "; load generator: %s, on the same machine.\n\n", loadClientText(o.client))
	} else {
		fmt.Fprintf(w, "; load generator on the same machine.\n\n")
	}
	if slices.ContainsFunc(p.targets, func(t benchTarget) bool { return t.name == baselineName }) {
		fmt.Fprintf(w, "`%s` is Go's net/http/httputil.ReverseProxy alone, in its own process, in front of "+
			"the same API node as `%s`: no authentication, limits, routing or metrics — what any Go HTTP "+
			"hop costs on this machine.\n\n", baselineName, p.targets[0].name)
	}
	if slices.ContainsFunc(p.targets, func(t benchTarget) bool { return t.name == echoName }) {
		fmt.Fprintf(w, "`%s` is a bare Go net/http server in its own process that answers every request "+
			"from memory, without the API node: its latency is one HTTP round trip to another process and "+
			"nothing else — the least that putting any process (a proxy, a router) on a request's path adds "+
			"on this machine. It is left out of the comparisons.\n\n", echoName)
	}
	if abuse(o.scenario) {
		fmt.Fprintf(w, "Every target is the same GET of tenant `%s` through the same router; the targets are phases, "+
			"alternated in rounds. The other tenant is `%s`", p.targets[0].tenant.id, p.hostile.id)
		if p.hostile.home != "" {
			fmt.Fprintf(w, " (homed in %s)", p.hostile.home)
		}
		if o.scenario == scenarioHostile {
			fmt.Fprintf(w, "; in `%s` rounds (and their warm-up) it sends the hostile mix below, in `%s` rounds nothing",
				hostilePhase, slowPhaseNone)
			if o.control {
				fmt.Fprintf(w, ", in `%s` rounds well-formed list GETs at the same rate, each on a new connection "+
					"like the hostile requests (a control: what any traffic of that rate costs the victim)", benignPhase)
			}
			fmt.Fprintf(w, ".\n\n")
		} else {
			fmt.Fprintf(w, "; each `%s` and `%s` round starts one wave of slow-body connections (below), `%s` rounds "+
				"start after the last wave is closed.\n\n", slowPhaseNoToken, slowPhaseToken, slowPhaseNone)
		}
	}
	_ = rep.WriteMarkdown(w) // w is a strings.Builder in practice; errors surface on the final write
	for _, t := range rep.Targets {
		if n := t.ErrorsByStatus["429"]; n > 0 {
			fmt.Fprintf(w, "\nNote: %s answered 429 %d times — the router's rate limits capped this run "+
				"(rate_limits in the topology file); its figures are not its capacity.\n", t.Name, n)
		}
	}
}
