package loadgen

import (
	"fmt"
	"io"
	"sort"
	"time"
)

// Report is the result of a run (orderctl load --json writes it).
type Report struct {
	Sent    int64            `json:"sent"`
	Created int64            `json:"created"`
	Errors  map[string]int64 `json:"errors"`
	// DurationS is how long requests were sent; RatePerS is Created over it.
	DurationS       float64          `json:"durationS"`
	RatePerS        float64          `json:"ratePerS"`
	PostMs          Percentiles      `json:"postLatencyMs"`
	CreateToFinalMs Percentiles      `json:"createToTerminalMs"`
	OutboxToKafkaMs Percentiles      `json:"outboxToKafkaMs"`
	FinalStatus     map[string]int64 `json:"finalStatus"`
	// Backlog is sampled every Config.SampleInterval from the first request to the end
	// of the settle time.
	Backlog []BacklogSample `json:"backlog"`
}

// BacklogSample counts, at one moment, the orders the api accepted and those of them
// whose outcome event has been seen.
type BacklogSample struct {
	// AtS is seconds since the first request.
	AtS      float64 `json:"atS"`
	Created  int64   `json:"created"`
	Terminal int64   `json:"terminal"`
	// Backlog is Created − Terminal: accepted orders still without an outcome.
	Backlog int64 `json:"backlog"`
}

// Percentiles of a latency, in milliseconds.
type Percentiles struct {
	N    int     `json:"n"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

// percentilesOf sorts ds in place.
func percentilesOf(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	at := func(p float64) float64 {
		return float64(ds[int(float64(len(ds)-1)*p)].Microseconds()) / 1000
	}
	return Percentiles{N: len(ds), P50: at(.5), P90: at(.9), P99: at(.99), P999: at(.999), Max: at(1)}
}

// BacklogGrowth is the backlog's trend, in orders per second (least squares), over the
// samples taken from `from` to `to` seconds after the first request; 0 with fewer than
// two samples. A pipeline that keeps up has a backlog that stays level (its size is the
// arrival rate times the create → terminal latency); one that does not falls behind by
// the difference between the arrival rate and its own.
func (r Report) BacklogGrowth(from, to float64) float64 {
	var n, sx, sy, sxx, sxy float64
	for _, s := range r.Backlog {
		if s.AtS < from || s.AtS > to {
			continue
		}
		x, y := s.AtS, float64(s.Backlog)
		n++
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	if n < 2 || n*sxx == sx*sx {
		return 0
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}

// SendingBacklog returns the largest backlog sampled while requests were being sent
// and the last one.
func (r Report) SendingBacklog() (peak, last int64) {
	for _, s := range r.Backlog {
		if s.AtS > r.DurationS {
			break
		}
		peak, last = max(peak, s.Backlog), s.Backlog
	}
	return peak, last
}

// Print writes the report for people.
func Print(w io.Writer, r Report) {
	fmt.Fprintf(w, "sent %d, created %d in %.1fs (%.0f orders/s)\n", r.Sent, r.Created, r.DurationS, r.RatePerS)
	line := func(name string, p Percentiles) {
		fmt.Fprintf(w, "%-22s n=%-6d p50 %8.2f  p90 %8.2f  p99 %8.2f  p99.9 %8.2f  max %8.2f ms\n",
			name, p.N, p.P50, p.P90, p.P99, p.P999, p.Max)
	}
	line("POST /orders", r.PostMs)
	line("create → terminal", r.CreateToFinalMs)
	line("outbox → Kafka", r.OutboxToKafkaMs)
	peak, last := r.SendingBacklog()
	fmt.Fprintf(w, "backlog (created, no outcome yet) while sending: peak %d, at the end %d, trend over the second half %+.1f orders/s\n",
		peak, last, r.BacklogGrowth(r.DurationS/2, r.DurationS))
	fmt.Fprintf(w, "final status: %v\n", r.FinalStatus)
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "errors: %v\n", r.Errors)
	}
}
