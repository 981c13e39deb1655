#!/usr/bin/env bash
# stack.sh — the local stack without Docker: PostgreSQL 15, Redis 7 and a single-node
# Apache Kafka 4 (KRaft), all real, all on loopback, all state under $STACK_DIR.
#
#   stack/stack.sh up   [postgres|redis|kafka ...]   install what is missing, start, wait until ready
#   stack/stack.sh down [postgres|redis|kafka ...]   stop what this script started, by pid
#   stack/stack.sh status
#   stack/stack.sh tools                              install what make bench drives them with (wrk)
#
# "up" is idempotent: a service whose pid is alive is reused. "down" signals only the pids
# recorded in $STACK_DIR (never a process found by name) and waits for them to exit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${STACK_DIR:-$root/.stack}
PG_PORT=${PG_PORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_PARTITIONS=${KAFKA_PARTITIONS:-8}
# Where the Kafka jars are cached; fault tests running private brokers share the repo's.
KAFKA_LIBS_DIR=${KAFKA_LIBS_DIR:-$STACK_DIR/kafka}
# pg_ctl stop mode for "down": fast (default) or immediate (a crash, for fault tests).
PG_STOP_MODE=${PG_STOP_MODE:-fast}
PG_DB=orderdb PG_USER=orderuser PG_PASSWORD=secret

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
	log "installing $* (apt-get)"
	if [ ! -f "$STACK_DIR/.apt-updated" ]; then
		as_root apt-get update -qq >&2
		mkdir -p "$STACK_DIR" && touch "$STACK_DIR/.apt-updated"
	fi
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# pid_alive FILE: the pid recorded in FILE names a running process.
pid_alive() { [ -s "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

# port_busy PORT: something listens on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pid FILE NAME: TERM the recorded pid, wait up to 30 s, then KILL.
stop_pid() {
	local file=$1 name=$2 pid
	if ! pid_alive "$file"; then rm -f "$file"; return 0; fi
	pid=$(head -n1 "$file")
	log "stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$pid" 2>/dev/null; then
		log "$name did not stop in 30 s; killing pid $pid"
		kill -KILL "$pid" 2>/dev/null || true
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	fi
	rm -f "$file"
}

# ---------------------------------------------------------------- PostgreSQL
pg_bindir() {
	local d
	for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
		[ -x "$d/postgres" ] && { echo "$d"; return; }
	done
}

# PostgreSQL refuses to run as root, so as root it runs as the "postgres" user, whose data
# directory must be reachable by it: under $STACK_DIR if it can traverse there, else in /tmp.
pg_user() { [ "$(id -u)" = 0 ] && echo postgres || id -un; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_datadir() {
	if [ -L "$STACK_DIR/postgres" ] || [ -d "$STACK_DIR/postgres" ]; then
		readlink -f "$STACK_DIR/postgres"; return
	fi
	mkdir -p "$STACK_DIR"
	local dir=$STACK_DIR/postgres
	if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$STACK_DIR"; then
		dir=$(mktemp -d /tmp/orderpipe-pg.XXXXXX)
		ln -s "$dir" "$STACK_DIR/postgres"
	else
		mkdir -p "$dir"
	fi
	readlink -f "$dir"
}

pg_up() {
	local bin data
	bin=$(pg_bindir)
	if [ -z "$bin" ]; then apt_install postgresql-15; bin=$(pg_bindir); fi
	[ -n "$bin" ] || die "no PostgreSQL server binaries found after install"
	data=$(pg_datadir)
	[ "$(id -u)" = 0 ] && chown "$(pg_user)" "$data" && chmod 700 "$data"

	if [ -f "$data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
		log "postgres already running on :$PG_PORT"
		return
	fi
	port_busy "$PG_PORT" && die "port $PG_PORT is taken by a process this script did not start (set PG_PORT)"

	if [ ! -f "$data/PG_VERSION" ]; then
		log "initdb $data"
		as_pg "$bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
			--encoding=UTF8 --locale=C.UTF-8 >"$STACK_DIR/postgres-initdb.log" 2>&1 ||
			{ cat "$STACK_DIR/postgres-initdb.log" >&2; die "initdb failed"; }
		cat >>"$data/postgresql.conf" <<-EOF
			# orderpipe local stack
			listen_addresses = '127.0.0.1'
			unix_socket_directories = '$data'
			max_connections = 300
			shared_buffers = 256MB
			logging_collector = off
		EOF
	fi
	sed -i "s/^port = .*//" "$data/postgresql.conf"
	log "starting postgres on :$PG_PORT"
	# max_wal_size: with the default 1 GB the benchmarks' write load forces checkpoints while
	# they run, and latency stalls of hundreds of milliseconds came with them (README,
	# Performance); with 4 GB checkpoints come from checkpoint_timeout (5 min) instead.
	as_pg "$bin/pg_ctl" -D "$data" -o "-p $PG_PORT -c max_wal_size=4GB" -l "$data/server.log" -w -t 60 start >/dev/null ||
		{ tail -n 30 "$data/server.log" >&2; die "postgres did not start"; }
	ln -sf "$data/server.log" "$STACK_DIR/postgres.log"

	local psql=(as_pg "$bin/psql" -h "$data" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qtA -d postgres)
	if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" ]; then
		# CREATEDB: the test suite makes a fresh database per test.
		"${psql[@]}" -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'"
	fi
	if [ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ]; then
		"${psql[@]}" -c "CREATE DATABASE $PG_DB OWNER $PG_USER"
	fi
}

pg_down() {
	local bin data
	bin=$(pg_bindir)
	[ -e "$STACK_DIR/postgres" ] || return 0
	data=$(readlink -f "$STACK_DIR/postgres")
	if [ -n "$bin" ] && [ -f "$data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
		log "stopping postgres"
		# pg_ctl signals the pid in postmaster.pid: the server this script started.
		as_pg "$bin/pg_ctl" -D "$data" -m "$PG_STOP_MODE" -w -t 60 stop >/dev/null
	fi
}

# ---------------------------------------------------------------- Redis
redis_up() {
	command -v redis-server >/dev/null || apt_install redis-server
	local pidfile=$STACK_DIR/redis.pid
	if pid_alive "$pidfile"; then log "redis already running on :$REDIS_PORT"; return; fi
	port_busy "$REDIS_PORT" && die "port $REDIS_PORT is taken by a process this script did not start (set REDIS_PORT)"
	mkdir -p "$STACK_DIR/redis"
	log "starting redis on :$REDIS_PORT"
	# A cache only: no persistence, so a restart starts empty.
	redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
		--dir "$STACK_DIR/redis" --daemonize yes --pidfile "$pidfile" --logfile "$STACK_DIR/redis.log"
	for _ in $(seq 1 100); do
		[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return
		sleep 0.1
	done
	die "redis did not answer PING within 10 s (see $STACK_DIR/redis.log)"
}

redis_down() { stop_pid "$STACK_DIR/redis.pid" redis; }

# ---------------------------------------------------------------- Kafka
kafka_libs() {
	# Cached by the pom's checksum, so a version change in the pom fetches again.
	local sum libs
	sum=$(sha256sum "$root/stack/kafka/pom.xml" | cut -c1-16)
	libs=$KAFKA_LIBS_DIR/libs-$sum
	if [ ! -f "$libs/.complete" ]; then
		command -v java >/dev/null || apt_install openjdk-17-jre-headless
		command -v mvn >/dev/null || apt_install maven
		log "fetching Kafka jars from Maven Central (once)"
		rm -rf "$libs"
		mvn -B -q -f "$root/stack/kafka/pom.xml" dependency:copy-dependencies \
			-DincludeScope=runtime -DoutputDirectory="$libs" >&2 || die "mvn could not fetch Kafka"
		touch "$libs/.complete"
	fi
	echo "$libs"
}

kafka_up() {
	local libs dir=$STACK_DIR/kafka pidfile=$STACK_DIR/kafka.pid
	if pid_alive "$pidfile"; then log "kafka already running on :$KAFKA_PORT"; return; fi
	port_busy "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by a process this script did not start (set KAFKA_PORT)"
	libs=$(kafka_libs)
	mkdir -p "$dir/data"
	cat >"$dir/server.properties" <<-EOF
		process.roles=broker,controller
		node.id=1
		controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
		listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
		advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
		controller.listener.names=CONTROLLER
		inter.broker.listener.name=PLAINTEXT
		listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
		log.dirs=$dir/data
		num.partitions=$KAFKA_PARTITIONS
		auto.create.topics.enable=true
		offsets.topic.replication.factor=1
		offsets.topic.num.partitions=8
		transaction.state.log.replication.factor=1
		transaction.state.log.min.isr=1
		share.coordinator.state.topic.replication.factor=1
		group.initial.rebalance.delay.ms=0
		log.retention.hours=168
	EOF
	local java=(java -cp "$libs/*" -Dlog4j2.configurationFile="$root/stack/kafka/log4j2.xml")
	if [ ! -f "$dir/data/meta.properties" ]; then
		local id
		id=$("${java[@]}" kafka.tools.StorageTool random-uuid 2>>"$dir/format.log")
		log "formatting KRaft storage (cluster $id)"
		"${java[@]}" kafka.tools.StorageTool format --standalone -t "$id" -c "$dir/server.properties" \
			>>"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; die "kafka storage format failed"; }
	fi
	log "starting kafka on :$KAFKA_PORT"
	nohup "${java[0]}" -Xms512m -Xmx1g "${java[@]:1}" kafka.Kafka "$dir/server.properties" >>"$STACK_DIR/kafka.log" 2>&1 </dev/null &
	echo $! >"$pidfile"
	# Ready means a metadata request is answered; poll, no fixed sleep.
	(cd "$root" && go run ./internal/cmd/kafkaready -brokers "127.0.0.1:$KAFKA_PORT" -timeout 90s -pid "$(cat "$pidfile")") ||
		{ tail -n 40 "$STACK_DIR/kafka.log" >&2; die "kafka did not become ready"; }
}

kafka_down() { stop_pid "$STACK_DIR/kafka.pid" kafka; }

# ---------------------------------------------------------------- main
status() {
	local bin data
	bin=$(pg_bindir)
	data=$(readlink -f "$STACK_DIR/postgres" 2>/dev/null || true)
	if [ -n "$data" ] && [ -f "$data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
		echo "postgres  up    :$PG_PORT  pid $(head -n1 "$data/postmaster.pid")"
	else echo "postgres  down"; fi
	for s in redis kafka; do
		if pid_alive "$STACK_DIR/$s.pid"; then
			printf '%-9s up    pid %s\n' "$s" "$(head -n1 "$STACK_DIR/$s.pid")"
		else printf '%-9s down\n' "$s"; fi
	done
}

cmd=${1:-}
shift || true
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(postgres redis kafka)
mkdir -p "$STACK_DIR"
case $cmd in
up)
	for s in "${services[@]}"; do
		case $s in postgres) pg_up ;; redis) redis_up ;; kafka) kafka_up ;; *) die "unknown service $s" ;; esac
	done
	log "up: postgres :$PG_PORT, redis :$REDIS_PORT, kafka :$KAFKA_PORT"
	;;
down)
	# Reverse order: Kafka first, Postgres last.
	for ((i = ${#services[@]} - 1; i >= 0; i--)); do
		case ${services[i]} in postgres) pg_down ;; redis) redis_down ;; kafka) kafka_down ;; *) die "unknown service ${services[i]}" ;; esac
	done
	;;
status) status ;;
tools)
	# pgbench comes with the PostgreSQL server; wrk is the api benchmark's HTTP client.
	command -v wrk >/dev/null || apt_install wrk
	;;
*) die "usage: stack.sh up|down|status [postgres|redis|kafka ...] | tools" ;;
esac
