package main

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// CPU accounting from /proc: who used the two cores during a step. Each process is
// charged to a group: our daemons by pid, this program ("loadgen": the load generator
// and its Kafka watcher), and the stack's Postgres, Kafka and Redis by the pids in
// $STACK_DIR (.stack/) and their descendants (Postgres's backends). "other" is the machine's busy
// time that no group explains: other programs on the shared machine, and the kernel's
// interrupt work.

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

type cpuSnapshot struct {
	at    time.Time
	busy  float64             // seconds, all cores, from /proc/stat
	procs map[int]groupedProc // the processes in a group
}

type groupedProc struct {
	group string
	cpu   float64 // seconds of user + system time since the process started
}

// groups maps root pids to group names: the daemons, this process and the stack.
func groups(daemons map[int]string) map[int]string {
	g := map[int]string{os.Getpid(): "loadgen"}
	for pid, name := range daemons {
		g[pid] = name
	}
	dir := envOr("STACK_DIR", ".stack") // as stack/stack.sh
	for file, name := range map[string]string{"postgres/postmaster.pid": "postgres", "kafka.pid": "kafka",
		"redis.pid": "redis"} {
		if b, err := os.ReadFile(filepath.Join(dir, file)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])); err == nil {
				g[pid] = name
			}
		}
	}
	return g
}

func snapshot(roots map[int]string) cpuSnapshot {
	s := cpuSnapshot{at: time.Now(), procs: map[int]groupedProc{}}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		for i := 1; i < len(f) && i <= 8; i++ {
			if i == 4 || i == 5 { // idle, iowait
				continue
			}
			v, _ := strconv.ParseFloat(f[i], 64)
			s.busy += v / clockTicks
		}
	}
	type proc struct {
		ppid int
		cpu  float64
	}
	procs := map[int]proc{}
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime(14) stime(15); comm may hold spaces and parens.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:bytes.IndexByte(b, '(')])))
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		procs[pid] = proc{ppid: ppid, cpu: (ut + st) / clockTicks}
	}
	for pid, p := range procs {
		for anc, depth := pid, 0; anc > 1 && depth < 16; depth++ {
			if name, ok := roots[anc]; ok {
				s.procs[pid] = groupedProc{group: name, cpu: p.cpu}
				break
			}
			anc = procs[anc].ppid
		}
	}
	return s
}

// coresBetween is each group's CPU use between two snapshots in cores (1.0 = one core
// busy all the time), plus "machine" (all busy time) and "other". It goes by process: a
// process that started in between counts whole, one that exited in between is missed
// (its time lands in "other").
func coresBetween(a, b cpuSnapshot) map[string]float64 {
	secs := b.at.Sub(a.at).Seconds()
	out := map[string]float64{}
	if secs <= 0 {
		return out
	}
	used := map[string]float64{}
	for pid, p := range b.procs {
		used[p.group] += max(p.cpu-a.procs[pid].cpu, 0)
	}
	var ours float64
	for name, v := range used {
		c := v / secs
		out[name] = round2(c)
		ours += c
	}
	machine := (b.busy - a.busy) / secs
	out["machine"] = round2(machine)
	out["other"] = round2(max(machine-ours, 0))
	return out
}

func round2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// cpuOrder lists the groups of a breakdown, biggest first, machine and other last.
func cpuOrder(m map[string]float64) []string {
	var names []string
	for k := range m {
		if k != "machine" && k != "other" {
			names = append(names, k)
		}
	}
	sort.Slice(names, func(i, j int) bool {
		if m[names[i]] != m[names[j]] {
			return m[names[i]] > m[names[j]]
		}
		return names[i] < names[j]
	})
	return append(names, "other", "machine")
}
