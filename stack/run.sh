#!/usr/bin/env bash
# run.sh — the four daemons in the foreground with prefixed, interleaved logs.
# Ctrl-C or SIGTERM stops all of them; if one exits, the others are stopped too.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

pids=()
stop() {
	trap - INT TERM
	for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	wait "${pids[@]}" 2>/dev/null
}
trap 'stop; exit 130' INT TERM

start() {
	local name=$1
	# Process substitution keeps $! the daemon's own pid, not the prefixing sed's.
	"bin/$name" > >(sed -u "s/^/$(printf '%-10s' "$name") | /") 2>&1 &
	pids+=($!)
}

start paymentsim
start api
# The api applies the migrations; the relay and worker need the tables.
for _ in $(seq 1 100); do curl -fs http://localhost:8080/healthz >/dev/null 2>&1 && break; sleep 0.1; done
start relay
start worker

wait -n "${pids[@]}"
echo "run: a daemon exited; stopping the others" >&2
stop
exit 1
