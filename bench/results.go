// Package bench holds the benchmark programs (make bench) and the one place that
// records their figures: bench/results/latest.json, merged key by key, so each program
// adds its own keys and the rest stay.
package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Record merges figures into dir/latest.json and a dated copy, adding machine facts.
func Record(dir string, figures map[string]any) error {
	path := filepath.Join(dir, "latest.json")
	all := map[string]any{}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &all); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	for k, v := range figures {
		all[k] = v
	}
	machine := map[string]any{"cpus": runtime.NumCPU(), "goos": runtime.GOOS, "goarch": runtime.GOARCH,
		"go": runtime.Version()}
	if model := procField("/proc/cpuinfo", "model name"); model != "" {
		machine["cpu_model"] = model
	}
	if mem := procField("/proc/meminfo", "MemTotal"); mem != "" { // "24609116 kB"
		var kb float64
		if _, err := fmt.Sscanf(mem, "%f kB", &kb); err == nil {
			machine["mem_gib"] = float64(int(kb/1024/1024*10)) / 10
		}
	}
	all["machine"] = machine
	all["updated_at"] = time.Now().UTC().Format(time.RFC3339)
	out, err := json.MarshalIndent(all, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, append(out, '\n'), 0o644); err != nil {
		return err
	}
	dated := filepath.Join(dir, time.Now().UTC().Format("2006-01-02")+".json")
	return os.WriteFile(dated, append(out, '\n'), 0o644)
}

// procField is the first "name: value" line's value in a /proc file ("" off Linux).
func procField(path, name string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Percentile returns the p-th percentile (0..100) of sorted-or-not durations.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// Ms is a duration in milliseconds with two decimals, for JSON.
func Ms(d time.Duration) float64 { return float64(d.Microseconds()/10) / 100 }
