package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Modes of a run.
const (
	ModeSequential = "sequential"
	ModeSideBySide = "side-by-side"
)

var _ json.Marshaler = Report{}

// Report is the outcome of Run. It marshals to JSON with durations in milliseconds.
type Report struct {
	Mode        string
	Concurrency int
	// Rate is the open-loop rate in requests per second per target; zero for closed loop.
	Rate float64
	// Duration and Requests are the configured bounds per target (zero: not bounded by it).
	Duration time.Duration
	Requests int
	// Round is the side-by-side round length; zero in sequential mode.
	Round   time.Duration
	Started time.Time
	// Schedule lists the target of each measured round in the order they ran.
	Schedule []string
	Targets  []TargetResult
	// Ratios compare every target after the first with the first (the baseline).
	Ratios []Ratio
}

// TargetResult is what one target did. Latencies, OK and Throughput count successful (2xx and
// 3xx) requests only; Errors holds the rest by status code, or TransportError for requests that
// got no response. Requests == OK + Errors.
type TargetResult struct {
	Name     string
	Requests int64
	// Missed counts open-loop slots that were scheduled and never sent because the target fell
	// more than MaxBacklog behind, or still had slots due when a round ended. They are not in
	// Requests. Zero in closed loop.
	Missed         int64
	OK             int64
	Errors         int64
	ErrorsByStatus map[string]int64
	// Elapsed is the measured wall time (the sum of the target's rounds).
	Elapsed time.Duration
	// Throughput is successful requests per second of Elapsed.
	Throughput               float64
	Mean, P50, P90, P99, Max time.Duration
}

// Ratio compares a target with the baseline (the first target).
type Ratio struct {
	Target, Baseline string
	// Throughput is Target's throughput over Baseline's, zero when the baseline's is zero.
	Throughput float64
	// P50Delta and P99Delta are Target's percentile minus Baseline's.
	P50Delta, P99Delta time.Duration
}

func ratios(ts []TargetResult) []Ratio {
	if len(ts) < 2 {
		return nil
	}
	a := ts[0]
	var out []Ratio
	for _, b := range ts[1:] {
		r := Ratio{Target: b.Name, Baseline: a.Name, P50Delta: b.P50 - a.P50, P99Delta: b.P99 - a.P99}
		if a.Throughput > 0 {
			r.Throughput = b.Throughput / a.Throughput
		}
		out = append(out, r)
	}
	return out
}

// ms is a duration in milliseconds, rounded to microseconds.
func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }

// MarshalJSON writes the report with snake_case keys and durations in milliseconds.
func (r Report) MarshalJSON() ([]byte, error) {
	type target struct {
		Name           string           `json:"name"`
		Requests       int64            `json:"requests"`
		Missed         *int64           `json:"missed,omitempty"` // open loop only
		OK             int64            `json:"ok"`
		Errors         int64            `json:"errors"`
		ErrorsByStatus map[string]int64 `json:"errors_by_status"`
		ElapsedS       float64          `json:"elapsed_s"`
		Throughput     float64          `json:"throughput_rps"`
		Mean           float64          `json:"mean_ms"`
		P50            float64          `json:"p50_ms"`
		P90            float64          `json:"p90_ms"`
		P99            float64          `json:"p99_ms"`
		Max            float64          `json:"max_ms"`
	}
	type ratio struct {
		Target     string  `json:"target"`
		Baseline   string  `json:"baseline"`
		Throughput float64 `json:"throughput_ratio"`
		P50Delta   float64 `json:"p50_delta_ms"`
		P99Delta   float64 `json:"p99_delta_ms"`
	}
	out := struct {
		Mode        string    `json:"mode"`
		Concurrency int       `json:"concurrency"`
		Rate        float64   `json:"rate_rps,omitempty"`
		DurationS   float64   `json:"duration_s,omitempty"`
		Requests    int       `json:"requests,omitempty"`
		RoundS      float64   `json:"round_s,omitempty"`
		Started     time.Time `json:"started"`
		Schedule    []string  `json:"schedule"`
		Targets     []target  `json:"targets"`
		Ratios      []ratio   `json:"ratios,omitempty"`
	}{
		Mode: r.Mode, Concurrency: r.Concurrency, Rate: r.Rate, DurationS: r.Duration.Seconds(), Requests: r.Requests,
		RoundS: r.Round.Seconds(), Started: r.Started, Schedule: r.Schedule,
	}
	for _, t := range r.Targets {
		eb := t.ErrorsByStatus
		if eb == nil {
			eb = map[string]int64{}
		}
		var missed *int64
		if r.Rate > 0 {
			missed = &t.Missed
		}
		out.Targets = append(out.Targets, target{
			Name: t.Name, Requests: t.Requests, Missed: missed, OK: t.OK, Errors: t.Errors, ErrorsByStatus: eb,
			ElapsedS: math.Round(t.Elapsed.Seconds()*1e3) / 1e3, Throughput: math.Round(t.Throughput*10) / 10,
			Mean: ms(t.Mean), P50: ms(t.P50), P90: ms(t.P90), P99: ms(t.P99), Max: ms(t.Max),
		})
	}
	for _, x := range r.Ratios {
		out.Ratios = append(out.Ratios, ratio{
			Target: x.Target, Baseline: x.Baseline, Throughput: math.Round(x.Throughput*1e4) / 1e4,
			P50Delta: ms(x.P50Delta), P99Delta: ms(x.P99Delta),
		})
	}
	return json.Marshal(out)
}

// WriteMarkdown writes the report as Markdown tables (no heading; the caller adds context). An
// open-loop report has a missed column and a note for every target that missed slots.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	open := r.Rate > 0
	fmt.Fprintf(&b, "Mode %s", r.Mode)
	if open {
		fmt.Fprintf(&b, ", open loop at %s req/s per target", formatRate(r.Rate))
	}
	fmt.Fprintf(&b, ", %d workers", r.Concurrency)
	if r.Duration > 0 {
		fmt.Fprintf(&b, ", %s per target", r.Duration)
	}
	if r.Requests > 0 {
		fmt.Fprintf(&b, ", at most %d requests per target", r.Requests)
	}
	if r.Mode == ModeSideBySide {
		fmt.Fprintf(&b, ", rounds of %s (%d rounds: %s)", r.Round, len(r.Schedule), scheduleSummary(r.Schedule))
	}
	b.WriteString(". Latencies and req/s count successful (2xx/3xx) requests.")
	if open {
		b.WriteString(" Latencies run from each request's scheduled send time, so waiting for a free worker counts.")
	}
	b.WriteString("\n\n")
	if open {
		b.WriteString("| target | requests | missed | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	} else {
		b.WriteString("| target | requests | errors | req/s | p50 ms | p90 ms | p99 ms | max ms |\n")
		b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	}
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "| %s | %d", t.Name, t.Requests)
		if open {
			fmt.Fprintf(&b, " | %d", t.Missed)
		}
		fmt.Fprintf(&b, " | %s | %.0f | %.3f | %.3f | %.3f | %.3f |\n",
			errorCell(t), t.Throughput, ms(t.P50), ms(t.P90), ms(t.P99), ms(t.Max))
	}
	if len(r.Ratios) > 0 {
		b.WriteString("\n| compared | throughput ratio | Δ p50 ms | Δ p99 ms |\n")
		b.WriteString("|---|---:|---:|---:|\n")
		for _, x := range r.Ratios {
			fmt.Fprintf(&b, "| %s / %s | %.3f (%+.1f%%) | %+.3f | %+.3f |\n", x.Target, x.Baseline,
				x.Throughput, (x.Throughput-1)*100, ms(x.P50Delta), ms(x.P99Delta))
		}
	}
	for _, t := range r.Targets {
		if open && t.Missed > 0 {
			fmt.Fprintf(&b, "\nNote: %s missed %d scheduled requests: it fell more than %s behind the schedule "+
				"or still had requests due when a round ended, so it did not keep up with %s req/s; "+
				"this is past its saturation point and its latencies are not below-saturation figures.\n",
				t.Name, t.Missed, MaxBacklog, formatRate(r.Rate))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// formatRate writes a rate without exponent or trailing zeros: 500, 0.5, 1000000.
func formatRate(r float64) string { return strconv.FormatFloat(r, 'f', -1, 64) }

// errorCell is "0" or "n (status×count, …)".
func errorCell(t TargetResult) string {
	if t.Errors == 0 {
		return "0"
	}
	keys := slices.Sorted(maps.Keys(t.ErrorsByStatus))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s×%d", k, t.ErrorsByStatus[k]))
	}
	return fmt.Sprintf("%d (%s)", t.Errors, strings.Join(parts, ", "))
}

// scheduleSummary shortens a long schedule: "a, b, a, b, …".
func scheduleSummary(s []string) string {
	if len(s) <= 6 {
		return strings.Join(s, ", ")
	}
	return strings.Join(s[:4], ", ") + ", …"
}
