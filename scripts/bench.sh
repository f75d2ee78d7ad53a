#!/usr/bin/env bash
# bench.sh — direct memcached vs ringproxy vs twemproxy vs memcached's own proxy, same
# backends, same load, one run;
# plus text get vs meta mg (shape e), what the Redis index costs (shape i), how a resize migrates (shape m),
# how a fleet of two proxies resizes together (shape f) and what keeping the
# index costs (shape x: rebuild, sweep, the migration's closing pass).
#
# Starts, on free loopback ports, three memcached backends, ringproxy and
# nutcracker (twemproxy) over the same pool, then runs every load shape
# against each target in turn (direct = the first backend alone),
# interleaved round by round so that drift in the machine hits all targets
# alike, and prints the median of the rounds with ratios. Shapes i, m, f
# and x start their own redis-server (and, for m, f and x, their own
# memcached and ringproxy) and stop them when done. Everything it started is
# stopped on any exit.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS   measured seconds per run [5]
#   BENCH_ROUNDS    rounds per shape; the table shows the median [3]
#   BENCH_SHAPES    shapes to run, from: a b c d e g i m f x [a b c d e i m f x]
#   BENCH_TARGETS   targets, from: direct ringproxy twemproxy mcproxy [all four]
#   BENCH_PEERS     where memcached's proxy is built from: a directory with
#                   memcached-proxy/build.sh (the project's peers, see
#                   README "Benchmarks") [../shared/peers]; if it is missing
#                   or the build fails, mcproxy is skipped and the table says why
#   BENCH_RINGPROXY_THREADS  ringproxy's -T for the comparison target (its
#                   pool has no index, so every thread serves it) [1]
#   BENCH_PROXY_THREADS  worker threads of memcached's proxy [the same as
#                   ringproxy's: the two are compared at equal threads]
#   BENCH_WARMUP    unmeasured load before each run, seconds [0.5]
#   BENCH_KEYS      key space [10000]
#   BENCH_THREADS   loadgen threads [1]
#   BENCH_META_SECONDS  measured seconds per run of shape e [3]
#   BENCH_META_ROUNDS  rounds of shape e [2]
#   BENCH_INDEX_KEYS  key space of shape i's, m's and f's load [100000]
#   BENCH_INDEX_MEM_KEYS  distinct keys (~28 bytes) stored to measure Redis
#                   memory per indexed key, shape i; 0 = skip [300000]
#   BENCH_INDEX_LISTPACK  shape i also measures memory with Redis'
#                   zset-max-listpack-entries raised to this, so the v-node
#                   sets stay listpacks; 0 = skip [8192]
#   BENCH_INDEX_MEM_HASHES  pool hashes the memory is measured with (they
#                   spread keys over the v-nodes differently) [fnv1a_64 md5]
#   BENCH_MIG_KEYS  keys stored before the resize, shapes m and f [200000]
#   BENCH_MIG_ROUNDS  rounds of shape m (each: a fresh unlimited-rate
#                   migration, then a fresh default-rate one under load) [BENCH_ROUNDS]
#   BENCH_MIG_TIMEOUT  bound on one migration, seconds [300]
#   BENCH_MIG_INFLIGHT  shape m: the migration's `inflight` [the default, 16]
#   BENCH_FLEET_ROUNDS  rounds of shape f; each round is one run per stagger,
#                   about a minute each with the defaults, most of it the
#                   migration itself [1]
#   BENCH_FLEET_STAGGERS  shape f: one run per value per round, the seconds
#                   between the first proxy's SIGHUP and the second's [0 2]
#   BENCH_MAINT_KEYS  shape x: keys of 100 B the rebuild lists, and the
#                   sweep bench writes (through an indexed proxy) [300000]
#   BENCH_MAINT_ROUNDS  shape x: rounds of the rebuild (empty index, then
#                   indexed) and of the closing pass (listing, then moving) [3]
#   BENCH_MAINT_SWEEP_ROUNDS  shape x: interleaved client-load rounds (BENCH_SECONDS
#                   each) with the sweeper off and at its default rate [5]
#   BENCH_MAINT_SWEEP_MEMORY  shape x: MB per memcached of the sweep bench,
#                   small enough that part of BENCH_MAINT_KEYS is evicted and the
#                   sweeper finds entries of keys gone [10]
#   BENCH_MAINT_CLOSING_KEYS  shape x: keys on the closing pass's source [300000]
#   BENCH_CALLGRIND=1  also run each proxy under callgrind for a fixed
#                   number of requests per shape (after a 2 s warmup) and
#                   print instructions per request (user space only); with
#                   shape i, ringproxy without and with the index too [0]
#   BENCH_CALLGRIND_REQUESTS  requests per shape under callgrind [20000]
#   RINGPROXY_BIN   [build/ringproxy]   LOADGEN_BIN [build/loadgen]
#   BENCH_OUT       where results.txt, raw.txt and logs go [build/bench]
#
# Shapes (all on 100-byte values, key space BENCH_KEYS, pre-populated):
#   a  50 connections, no pipelining, 90% get / 10% set
#   b  10 connections, 32 requests in flight each, 90% get / 10% set
#   c  50 connections, no pipelining, 100% gets of 10 keys (one request each)
#   d  1,000 connections, no pipelining, 90% get / 10% set
#   e  text `get` vs meta `mg <key> v f t` (populated with `ms`), 100% single-key
#      reads: 50 connections unpipelined and 10 connections pipelined 32
#      deep, direct and ringproxy (twemproxy does not speak the meta
#      protocol), BENCH_META_ROUNDS interleaved rounds of BENCH_META_SECONDS:
#      ops/s, latency, CPU per request and the mg/get ratio. About a minute.
#   g  (not run by default) 50 connections, no pipelining, 100% single-key gets
#
# Index and migration shapes (need redis-server and redis-cli):
#   i  ringproxy without and with `index:` (a fresh redis-server) on the same
#      backends, interleaved rounds of shape a's load over BENCH_INDEX_KEYS
#      keys: throughput, proxy and Redis CPU per request, ZADD+ZREM commands
#      Redis received per stored key (INFO commandstats over `stats`'
#      cmd_set, over the measured window), the proxy's index:* counters;
#      then Redis memory per indexed key after BENCH_INDEX_MEM_KEYS distinct
#      keys go through a proxy on a fresh Redis, with `ringproxy index stats`
#      and the sets' encodings.
#   m  fresh 3 memcached + a 4th + redis-server + indexed ringproxy;
#      BENCH_MIG_KEYS keys stored, the config rewritten with the 4th server,
#      SIGHUP: (1) with `rate: 0` (unlimited) and no load: keys moved, seconds,
#      keys/s; (2) on a fresh set, with the default rate, while loadgen runs
#      shape a's load over BENCH_INDEX_KEYS keys: latency during the
#      migration (the measured window is ended by SIGUSR1 when `stats` says
#      the migration is over) against the same load just before the SIGHUP.
#      Every stored key is read back after each migration.
#   f  a fleet: fresh 3 memcached + a 4th + redis-server + TWO indexed
#      ringproxy sharing the pool name and the index prefix; BENCH_MIG_KEYS
#      keys stored through the first, BENCH_INDEX_KEYS loadgen keys through
#      the second; shape a's load split over both proxies (25 conns each),
#      first with no migration, then both files rewritten with the 4th
#      server and both proxies SIGHUPed (together, or the second
#      BENCH_FLEET_STAGGERS seconds after the first) under that load, default
#      rate. Both proxies' stats are polled every 20 ms: from the last SIGHUP,
#      seconds to the first key moved and to both idle at epoch 2, keys/s
#      while moving, the phases; ops/s and latency during the migration
#      against the same load before it. Every key is read back through both
#      proxies afterwards.
#   x  keeping the index (fresh servers; the figures of issue 9):
#      (1) `ringproxy index rebuild -c FILE` over BENCH_MAINT_KEYS keys on 3
#      fresh memcached (stored through a proxy without an index), fresh
#      Redis: into an empty index (FLUSHALL) and again over the indexed keys,
#      BENCH_MAINT_ROUNDS rounds: keys/s in all and per server, seconds, and
#      CPU per key of the command, the memcached servers and Redis;
#      (2) scripts/bench_sweep.py: `ringproxy index sweep` (unlimited)
#      entries/s; the background sweeper's CPU per entry; client load with
#      the sweeper off (sweep_rate: 0) vs at the default 2000/s,
#      BENCH_MAINT_SWEEP_ROUNDS interleaved rounds: ops/s and CPU per
#      operation of the proxy, memcached and Redis, medians, ratio;
#      (3) scripts/bench_closing.py: a 3 -> 4 resize whose closing pass finds
#      BENCH_MAINT_CLOSING_KEYS unindexed keys on one source, none moving
#      (listing only) or about 25% moving: seconds per million keys;
#      (4) scripts/bench_index_mem.py: Redis bytes per indexed key at
#      Redis's defaults, layout 1 vs layout 2, 300,000 and 1,000,000 keys of
#      28 and of 120 bytes, Redis CPU per indexed write, and client load
#      (50% sets of new keys) through a proxy of each layout, interleaved.
#      About 2 minutes with the defaults; it needs /usr/bin/python3 with
#      pytest for (2) and (3) (they use tests/integration's harness).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECONDS_PER_RUN=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
SHAPES=${BENCH_SHAPES:-a b c d e i m f x}
TARGETS=${BENCH_TARGETS:-direct ringproxy twemproxy mcproxy}
PEERS=${BENCH_PEERS:-$ROOT/../shared/peers}
RP_THREADS=${BENCH_RINGPROXY_THREADS:-1}
PROXY_THREADS=${BENCH_PROXY_THREADS:-$RP_THREADS}
WARMUP=${BENCH_WARMUP:-0.5}
KEYS=${BENCH_KEYS:-10000}
THREADS=${BENCH_THREADS:-1}
CALLGRIND=${BENCH_CALLGRIND:-0}
META_SECONDS=${BENCH_META_SECONDS:-3}
META_ROUNDS=${BENCH_META_ROUNDS:-2}
INDEX_KEYS=${BENCH_INDEX_KEYS:-100000}
INDEX_MEM_KEYS=${BENCH_INDEX_MEM_KEYS:-300000}
INDEX_LISTPACK=${BENCH_INDEX_LISTPACK:-8192}
INDEX_MEM_HASHES=${BENCH_INDEX_MEM_HASHES:-fnv1a_64 md5}
MIG_KEYS=${BENCH_MIG_KEYS:-200000}
MIG_ROUNDS=${BENCH_MIG_ROUNDS:-$ROUNDS}
MIG_TIMEOUT=${BENCH_MIG_TIMEOUT:-300}
MIG_INFLIGHT_SET=${BENCH_MIG_INFLIGHT:+, inflight: $BENCH_MIG_INFLIGHT}
FLEET_ROUNDS=${BENCH_FLEET_ROUNDS:-1}
FLEET_STAGGERS=${BENCH_FLEET_STAGGERS:-0 2}
MAINT_KEYS=${BENCH_MAINT_KEYS:-300000}
MAINT_ROUNDS=${BENCH_MAINT_ROUNDS:-3}
MAINT_SWEEP_ROUNDS=${BENCH_MAINT_SWEEP_ROUNDS:-5}
MAINT_SWEEP_MEMORY=${BENCH_MAINT_SWEEP_MEMORY:-10}
MAINT_CLOSING_KEYS=${BENCH_MAINT_CLOSING_KEYS:-300000}
MAINT_SWEEP_SECONDS=${SECONDS_PER_RUN%.*}        # bench_sweep.py takes whole seconds
[ "${MAINT_SWEEP_SECONDS:-0}" -ge 1 ] 2>/dev/null || MAINT_SWEEP_SECONDS=1
CG_REQUESTS=${BENCH_CALLGRIND_REQUESTS:-20000}
RINGPROXY_BIN=${RINGPROXY_BIN:-$ROOT/build/ringproxy}
LOADGEN_BIN=${LOADGEN_BIN:-$ROOT/build/loadgen}
OUT=${BENCH_OUT:-$ROOT/build/bench}
LOGS=$OUT/logs

declare -A SHAPE_ARGS=(
	[a]="-c 50 -P 1 -r 90 -m 1 -v 100"
	[b]="-c 10 -P 32 -r 90 -m 1 -v 100"
	[c]="-c 50 -P 1 -r 100 -m 10 -v 100"
	[d]="-c 1000 -P 1 -r 90 -m 1 -v 100"
	[g]="-c 50 -P 1 -r 100 -m 1 -v 100"
	# shape e's four runs per target: protocol x load
	[e-get-1]="-c 50 -P 1 -r 100 -m 1 -v 100"
	[e-mg-1]="-c 50 -P 1 -r 100 -m 1 -v 100 --meta"
	[e-get-32]="-c 10 -P 32 -r 100 -m 1 -v 100"
	[e-mg-32]="-c 10 -P 32 -r 100 -m 1 -v 100 --meta"
	[i]="-c 50 -P 1 -r 90 -m 1 -v 100"
	[m]="-c 50 -P 1 -r 90 -m 1 -v 100"
	[f]="-c 25 -P 1 -r 90 -m 1 -v 100"
)
declare -A SHAPE_TEXT=(
	[a]="50 conns, no pipelining, 90% get / 10% set, 100 B values"
	[b]="10 conns, pipelined 32 deep, 90% get / 10% set, 100 B values"
	[c]="50 conns, no pipelining, multi-get of 10 keys, 100 B values"
	[d]="1000 conns, no pipelining, 90% get / 10% set, 100 B values"
	[e]="text get vs meta mg v f t, 100% single-key reads of 100 B values, unpipelined and pipelined"
	[g]="50 conns, no pipelining, 100% single-key gets, 100 B values"
	[i]="ringproxy without vs with the Redis index; 50 conns, no pipelining, 90% get / 10% set, 100 B values"
	[m]="resize 3 -> 4 servers with the Redis index: migration speed, and latency under load while it runs"
	[f]="resize 3 -> 4 servers with TWO proxies sharing one Redis prefix (the fleet protocol), under load through both"
	[x]="keeping the index: rebuild, sweep (and the sweeper's cost to clients), the migration's closing pass"
)
# Shapes that are not one loadgen run per target (they have their own runner).
SPECIAL_SHAPES=" e i m f x "
declare -A SHAPE_KEYS=([i]=$INDEX_KEYS [m]=$INDEX_KEYS [f]=$INDEX_KEYS)

nutcracker_version() {
	if command -v nutcracker >/dev/null; then
		{ nutcracker -V 2>&1 || true; } | sed -n '1s/.*nutcracker-//p'
	else
		echo "not installed"
	fi
}

# Percent of all CPUs busy over one second, before anything is started.
cpu_busy_percent() {
	local a b
	a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
	sleep 1
	b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
	awk -v a="$a" -v b="$b" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		busy = y[1] - x[1]; idle = y[2] - x[2]
		printf "%.0f\n", (busy + idle > 0) ? 100 * busy / (busy + idle) : 0 }'
}

log() { printf 'bench: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }

# ---- processes ---------------------------------------------------------

PIDS=()

# Stops what this script started: TERM, up to 2 s, then KILL.
cleanup() {
	local pid i
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for i in $(seq 20); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	PIDS=()
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Stops one process this script started (TERM, up to 2 s, then KILL) and
# forgets it.
stop_pid() {
	local pid=$1 i p
	local -a keep=()
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 20); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	for p in "${PIDS[@]}"; do
		[ "$p" = "$pid" ] || keep+=("$p")
	done
	PIDS=("${keep[@]}")
}

# Prints n distinct free loopback TCP ports (held open together while chosen).
free_ports() {
	python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Waits until 127.0.0.1:port accepts (bounded); fails early if pid died.
wait_port() {
	local port=$1 pid=$2 tries=$3 i
	for i in $(seq "$tries"); do
		kill -0 "$pid" 2>/dev/null || return 1
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# start NAME PORT WAIT_TRIES CMD...: runs CMD in the background, logs to
# $LOGS/NAME.log, sets STARTED_PID; returns 1 if it does not listen.
start() {
	local name=$1 port=$2 tries=$3
	shift 3
	"$@" >"$LOGS/$name.log" 2>&1 &
	STARTED_PID=$!
	PIDS+=("$STARTED_PID")
	if ! wait_port "$port" "$STARTED_PID" "$tries"; then
		log "$name did not start listening on 127.0.0.1:$port; its log:"
		tail -n 20 "$LOGS/$name.log" | sed 's/^/    /' >&2
		return 1
	fi
}

# write_conf FILE LISTEN_PORT "MC_PORT..." [EXTRA_YAML [HASH]]: a
# twemproxy-format pool "bench" over those memcached (named mc1, mc2, ...)
# plus extra lines (ringproxy's index: and migration: sections), replaced
# atomically. HASH defaults to twemproxy's fnv1a_64.
write_conf() {
	local file=$1 port=$2 mc n=0
	{
		printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: %s\n  distribution: ketama\n' \
			"$port" "${5:-fnv1a_64}"
		printf '  servers:\n'
		for mc in $3; do
			n=$((n + 1))
			printf '   - 127.0.0.1:%s:1 mc%s\n' "$mc" "$n"
		done
		[ -z "${4:-}" ] || printf '%s\n' "$4"
	} >"$file.tmp"
	mv "$file.tmp" "$file"
}

# Writes a twemproxy-format pool config listening on port $2 to file $1.
write_pool_conf() {
	write_conf "$1" "$2" "${MC_PORTS[*]}" "" md5
}

# mcproxy_build: memcached's built-in proxy (memcached 1.6.45 --enable-proxy),
# built once from $PEERS into build/peers; sets MCPROXY_BIN and MCPROXY_DIR,
# and MCPROXY_NOTE to what the table says of it.
mcproxy_build() {
	MCPROXY_DIR=$ROOT/build/peers
	MCPROXY_BIN=$MCPROXY_DIR/memcached-proxy
	if [ ! -x "$MCPROXY_BIN" ]; then
		if [ ! -x "$PEERS/memcached-proxy/build.sh" ]; then
			MCPROXY_NOTE="not available: no $PEERS/memcached-proxy/build.sh (set BENCH_PEERS)"
			return 1
		fi
		log "building memcached's proxy from $PEERS (about 30 s)"
		if ! "$PEERS/memcached-proxy/build.sh" "$MCPROXY_DIR" >"$LOGS/mcproxy-build.log" 2>&1; then
			MCPROXY_NOTE="not available: its build failed, see $LOGS/mcproxy-build.log"
			return 1
		fi
	fi
	MCPROXY_NOTE="$("$MCPROXY_BIN" -V 2>/dev/null | head -n 1) built-in proxy, $PROXY_THREADS threads"
}

# start_memcached NAME PORT: a backend as the bench runs them.
start_memcached() {
	start "$1" "$2" 50 memcached "${MC_USER[@]}" -t 1 -U 0 -m 256 -c 4096 \
		-l 127.0.0.1 -p "$2"
}

# start_redis NAME PORT [OPTION...]: an empty redis-server, no persistence.
start_redis() {
	local name=$1 port=$2
	shift 2
	start "$name" "$port" 50 redis-server --port "$port" --bind 127.0.0.1 \
		--save "" --appendonly no --daemonize no --logfile "" "$@"
}

# start_ringproxy NAME PORT CONF: with the stats and admin ports off (-s 0
# -P 0), so that anything else on the default ports 22222 and 22223 cannot
# stop it from starting.
start_ringproxy() {
	start "$1" "$2" 50 "$RINGPROXY_BIN" -c "$3" -s 0 -P 0
}

# rcli PORT ARG...: redis-cli, bounded, without the \r of INFO's lines.
rcli() { timeout 30 redis-cli -h 127.0.0.1 -p "$@" | tr -d '\r'; }

# redis_field PORT SECTION FIELD: one field of INFO SECTION.
redis_field() { rcli "$1" info "$2" | sed -n "s/^$3:\([^ ]*\)$/\1/p"; }

# redis_calls FILE COMMAND: calls of COMMAND in saved INFO commandstats (0 if none).
redis_calls() {
	sed -n "s/^cmdstat_$2:calls=\([0-9]*\),.*/\1/p" "$1" | awk '{ s += $1 } END { print s + 0 }'
}

# redis_failed FILE: "command:failed_calls ..." of saved INFO commandstats
# (the commands Redis answered with an error), or "none".
redis_failed() {
	sed -n 's/^cmdstat_\([^:]*\):.*failed_calls=\([0-9]*\).*/\1 \2/p' "$1" |
		awk '$2 > 0 { printf "%s%s:%s", (n++ ? "," : ""), $1, $2 } END { if (!n) print "none"; else print "" }'
}

# redis_cpu_us FILE: used_cpu_sys + used_cpu_user in saved INFO cpu, microseconds.
redis_cpu_us() {
	awk -F: '$1 == "used_cpu_sys" || $1 == "used_cpu_user" { s += $2 } END { printf "%.0f\n", s * 1e6 }' "$1"
}

# A small client for the proxy's and memcached's text protocol (stats,
# waiting for the index and for a migration, reading keys back), written
# next to the results so that bench.sh stays one file.
write_benchctl() {
	cat >"$BENCHCTL" <<'EOF'
"""benchctl.py, written by scripts/bench.sh: memcached-protocol helpers, all bounded.

  stats PORT                         print "name value" for each STAT line
  reset PORT                         "stats reset"
  wait-stat PORT NAME VALUE SECS     until STAT NAME == VALUE
  wait-index PORT SECS               until index:queued and index:inflight stay 0
  watch-migration PORT EPOCH SECS [--hup PID] [--marker FILE] [--signal PID]
      start (send SIGHUP to PID now, or wait for FILE, "<time> [<pid>]",
      written by whoever sent it), poll `stats` every 20 ms until
      migration:state is idle at EPOCH or later, then send SIGUSR1 to the
      --signal PID or to FILE's pid; print one key=value line
  watch-fleet PORTS PIDS EPOCH SECS [--stagger S] [--ready FILES --go FILE]
      PORTS and PIDS: the proxies, comma-separated, in the same order; wait
      for every FILE of --ready (each "<loadgen pid>") and create the --go
      file, SIGHUP proxy i at i * S seconds, poll every proxy's `stats`
      every 20 ms until all are idle at EPOCH or later, then SIGUSR1 the
      loadgens; print one key=value line, times from the last SIGHUP;
      --trace FILE: each proxy's state, phase, lease, arcs and waiting_for
      whenever they change, seconds from the first SIGHUP
  verify PORT PREFIX N               multi-get PREFIX0..PREFIX<N-1>; print found/missing
  where KEYS PORT...                 for each of the comma-separated KEYS, the PORTs that hold it
"""
import os, signal, socket, sys, time


class Conn:
    def __init__(self, port, timeout=5.0):
        self.s = socket.create_connection(("127.0.0.1", int(port)), timeout=timeout)
        self.buf = b""

    def _more(self):
        d = self.s.recv(65536)
        if not d:
            raise ConnectionError("connection closed")
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self._more()
        l, self.buf = self.buf.split(b"\r\n", 1)
        return l

    def exactly(self, n):
        while len(self.buf) < n:
            self._more()
        b, self.buf = self.buf[:n], self.buf[n:]
        return b

    def stats(self):
        self.s.sendall(b"stats\r\n")
        out = {}
        for _ in range(100000):
            l = self.line().decode(errors="replace")
            if l == "END":
                return out
            p = l.split(" ", 2)
            if len(p) != 3 or p[0] != "STAT":
                raise ValueError("unexpected stats line: " + l)
            out[p[1]] = p[2]
        raise ValueError("stats never ended")


def deadline(secs):
    return time.monotonic() + float(secs)


def watch_migration(port, epoch, end, opts):
    c = Conn(port)
    if "--marker" in opts:
        while not os.path.exists(opts["--marker"]):
            if time.monotonic() > end:
                sys.exit("timed out waiting for " + opts["--marker"])
            time.sleep(0.01)
        with open(opts["--marker"]) as f:
            words = f.read().split()
        t0 = float(words[0])
        if len(words) > 1:
            opts.setdefault("--signal", words[1])
    else:
        t0 = time.time()
        os.kill(int(opts["--hup"]), signal.SIGHUP)
    states, moving_at, finished, st, peak = [], None, False, {}, {}
    while time.monotonic() < end:
        st = c.stats()
        for k, v in st.items():     # arcs_total reads 0 once it is over
            if k.startswith("migration:") and v.isdigit():
                peak[k] = max(peak.get(k, 0), int(v))
        state = st.get("migration:state", "?")
        if not states or states[-1] != state:
            states.append(state)
        if state == "moving" and moving_at is None:
            moving_at = time.time()
        if state == "idle" and int(st.get("migration:epoch", "0")) >= epoch:
            finished = True
            break
        time.sleep(0.02)
    t1 = time.time()
    if "--signal" in opts:
        try:
            os.kill(int(opts["--signal"]), signal.SIGUSR1)
        except ProcessLookupError:
            pass
    fields = ["finished=%d" % finished, "seconds=%.3f" % (t1 - t0),
              "until_moving_s=%s" % ("%.3f" % (moving_at - t0) if moving_at else "-"),
              "states=%s" % ",".join(states)]
    for k in ("epoch", "arcs_total", "arcs_done", "keys_moved", "keys_skipped",
              "keys_stale", "keys_failed", "keys_retried", "client_commands", "index_moved"):
        fields.append("%s=%s" % (k, peak.get("migration:" + k, "-")))
    print(" ".join(fields))


def watch_fleet(ports, pids, epoch, end, opts):
    conns = [Conn(p) for p in ports]
    loadgens, out = [], {}
    try:
        for f in filter(None, opts.get("--ready", "").split(",")):
            while not os.path.exists(f):
                if time.monotonic() > end:
                    sys.exit("timed out waiting for " + f)
                time.sleep(0.005)
            with open(f) as fh:
                loadgens.append(int(fh.read().split()[0]))
        if "--go" in opts:
            open(opts["--go"], "w").close()
        out = watch_fleet_poll(conns, pids, epoch, end, float(opts.get("--stagger", "0")),
                               opts.get("--trace"))
    finally:
        # whatever happened, release and end the loadgens' windows
        if "--go" in opts and not os.path.exists(opts["--go"]):
            open(opts["--go"], "w").close()
        for pid in loadgens:
            try:
                os.kill(pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
    print(" ".join("%s=%s" % kv for kv in out.items()))


def watch_fleet_poll(conns, pids, epoch, end, stagger, trace):
    n = len(conns)
    tr = open(trace, "w") if trace else None
    seen = [None] * n
    t0 = time.time()
    hup = [None] * n
    peak = [{} for _ in range(n)]
    states = [[] for _ in range(n)]
    phase_at = {}               # fleet phase -> first time any proxy showed it
    moved_prev, t_prev, first, first_prev, last_inc, done = 0, None, None, None, None, None
    polls = 0
    while time.monotonic() < end:
        for i in range(n):
            if hup[i] is None and time.time() >= t0 + i * stagger:
                os.kill(int(pids[i]), signal.SIGHUP)
                hup[i] = time.time()
        sts = [c.stats() for c in conns]
        tp = time.time()
        polls += 1
        for i, st in enumerate(sts):
            for k, v in st.items():     # some read 0 once it is over: keep peaks
                if k.startswith("migration:") and v.isdigit():
                    peak[i][k] = max(peak[i].get(k, 0), int(v))
            state = st.get("migration:state", "?")
            if not states[i] or states[i][-1] != state:
                states[i].append(state)
            phase_at.setdefault(st.get("migration:phase", "none"), tp)
            now = tuple(st.get("migration:" + k, "?") for k in (
                "state", "phase", "epoch", "lease", "live_proxies", "arcs_done", "arcs_total",
                "waiting_for"))
            if tr and now != seen[i]:
                tr.write("%8.3f proxy%d state=%s phase=%s epoch=%s lease=%s live=%s arcs=%s/%s "
                         "keys_moved=%s waiting_for=%s\n" % ((tp - t0, i + 1) + now[:7] + (
                             st.get("migration:keys_moved", "?"), now[7])))
                seen[i] = now
        moved = sum(p.get("migration:keys_moved", 0) for p in peak)
        if moved > 0 and first is None:
            first, first_prev = tp, t_prev if t_prev is not None else tp
        if moved > moved_prev:
            moved_prev, last_inc = moved, tp
        if None not in hup and all(
                st.get("migration:state") == "idle" and
                int(st.get("migration:epoch", "0")) >= epoch for st in sts):
            done = tp
            break
        t_prev = tp
        time.sleep(0.02)
    if tr:
        tr.close()
    last = max(h for h in hup if h is not None)
    rel = lambda t: "%.3f" % (t - last) if t is not None else "-"
    out = {"finished": int(done is not None),
           "stagger_s": "%.3f" % (last - t0),
           "first_move_s": rel(first),
           "idle_s": rel(done if done is not None else time.time()),
           "last_move_s": rel(last_inc)}
    # moving: from the poll before the first moved key was seen to the
    # poll that saw the last one (so within 20 ms + a poll of the truth)
    span = (last_inc - first_prev) if first is not None else 0
    out["moving_s"] = "%.3f" % span if first is not None else "-"
    out["keys_moved"] = moved_prev
    out["moving_kps"] = "%.0f" % (moved_prev / span) if span > 0 else "-"
    out["moved_by"] = "/".join(str(p.get("migration:keys_moved", 0)) for p in peak)
    out["phases"] = ",".join("%s@%s" % (ph, rel(t)) for ph, t in
                             sorted(phase_at.items(), key=lambda x: x[1]) if ph != "none") or "-"
    out["states"] = "/".join(",".join(s) for s in states)
    for k in ("keys_stale", "keys_failed", "keys_retried", "keys_skipped",
              "client_commands", "fallback_reads", "index_moved"):
        out[k] = sum(p.get("migration:" + k, 0) for p in peak)
    out["arcs_total"] = max(p.get("migration:arcs_total", 0) for p in peak)
    out["live_proxies"] = "/".join(str(p.get("migration:live_proxies", 0)) for p in peak)
    out["polls"] = polls
    return out


def verify(port, prefix, n):
    c = Conn(port, timeout=10)
    found, missing = 0, []
    for lo in range(0, n, 100):
        keys = ["%s%d" % (prefix, i) for i in range(lo, min(n, lo + 100))]
        c.s.sendall(("get " + " ".join(keys) + "\r\n").encode())
        got = set()
        for _ in range(len(keys) + 1):
            l = c.line()
            if l == b"END":
                break
            p = l.split()
            if p[0] != b"VALUE":
                sys.exit("verify: unexpected reply " + l.decode(errors="replace"))
            c.exactly(int(p[3]) + 2)
            got.add(p[1].decode())
            found += 1
        missing += [k for k in keys if k not in got]
    print("found=%d missing=%d missing_keys=%s" % (found, n - found, ",".join(missing[:10]) or "-"))


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "stats":
        for k, v in Conn(argv[2]).stats().items():
            print(k, v)
    elif cmd == "reset":
        c = Conn(argv[2])
        c.s.sendall(b"stats reset\r\n")
        if c.line() != b"RESET":
            sys.exit("stats reset: unexpected reply")
    elif cmd == "wait-stat":
        c, name, want, end = Conn(argv[2]), argv[3], argv[4], deadline(argv[5])
        while c.stats().get(name) != want:
            if time.monotonic() > end:
                sys.exit("timed out waiting for %s = %s" % (name, want))
            time.sleep(0.05)
    elif cmd == "wait-index":
        c, end, quiet = Conn(argv[2]), deadline(argv[3]), 0
        while quiet < 3:
            st = c.stats()
            idle = st.get("index:queued") == "0" and st.get("index:inflight") == "0"
            quiet = quiet + 1 if idle else 0
            if time.monotonic() > end:
                sys.exit("timed out waiting for the index writes to drain")
            time.sleep(0.05)
    elif cmd == "watch-migration":
        watch_migration(argv[2], int(argv[3]), deadline(argv[4]),
                        dict(zip(argv[5::2], argv[6::2])))
    elif cmd == "watch-fleet":
        watch_fleet(argv[2].split(","), argv[3].split(","), int(argv[4]),
                    deadline(argv[5]), dict(zip(argv[6::2], argv[7::2])))
    elif cmd == "where":
        conns = [(p, Conn(p)) for p in argv[3:]]
        out = []
        for k in argv[2].split(","):
            held = []
            for p, c in conns:
                c.s.sendall(("get %s\r\n" % k).encode())
                l = c.line()
                if l.startswith(b"VALUE"):
                    c.exactly(int(l.split()[3]) + 2)
                    c.line()
                    held.append(p)
            out.append("%s@%s" % (k, "+".join(held) or "nowhere"))
        print(" ".join(out))
    elif cmd == "verify":
        verify(argv[2], argv[3], int(argv[4]))
    else:
        sys.exit(__doc__)


main(sys.argv)
EOF
}

ctl() { timeout 900 python3 "$BENCHCTL" "$@"; }

# stat_of FILE NAME: a value from saved `ctl stats` output ("-" if absent).
stat_of() { awk -v n="$2" '$1 == n { print $2; f = 1 } END { if (!f) print "-" }' "$1"; }

# delta FILE_BEFORE FILE_AFTER NAME: the counter's growth between two saves.
delta() {
	awk -v a="$(stat_of "$1" "$3")" -v b="$(stat_of "$2" "$3")" 'BEGIN {
		if (a == "-" || b == "-") print "-"; else print b - a }'
}

# ---- results -----------------------------------------------------------

declare -A RES=()       # "shape,target,metric" -> values of the rounds
declare -A PORT=() CPU_PID=()

# kv LINE KEY: the value of key in a loadgen result line.
kv() { sed -n "s/.* $2=\\([^ ]*\\).*/\\1/p" <<<" $1"; }

median() {
	tr ' ' '\n' <<<"$*" | { grep -E '^[0-9.]+$' || true; } | sort -g |
		awk '{ v[NR] = $1 } END {
			if (NR == 0) { print "-"; exit }
			if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

total() {
	tr ' ' '\n' <<<"$*" | grep -E '^[0-9]+$' | awk '{ s += $1 } END { print NR ? s : "-" }'
}

# ratio A B: A/B to two places, or "-".
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2fx\n", a / b }'
}

# run_one SHAPE TARGET ROUND [LOADGEN_ARG...]: one measured run, into RES.
# Extra loadgen arguments come last, so they override
# (e.g. -d); RUN_TIMEOUT, when set, bounds the whole loadgen run instead.
run_one() {
	local shape=$1 target=$2 round=$3 line rc=0
	shift 3
	local -a args
	read -r -a args <<<"${SHAPE_ARGS[$shape]}"
	if ! kill -0 "${CPU_PID[$target]}" 2>/dev/null; then
		log "$target (pid ${CPU_PID[$target]}) is gone; skipping its runs"
		return 0
	fi
	# Behind a proxy, the backends' CPU too: what the proxy's way of
	# writing to them costs them.
	local -a be=()
	if [ "$target" != direct ] && [ "${#MC_PIDS[@]}" -gt 0 ]; then
		local pid
		for pid in "${MC_PIDS[@]}"; do be+=(-B "$pid"); done
	fi
	line=$(timeout "${RUN_TIMEOUT:-$((${SECONDS_PER_RUN%.*} * 3 + 180))}" "$LOADGEN_BIN" -q \
		-p "${PORT[$target]}" "${args[@]}" -k "${SHAPE_KEYS[$shape]:-$KEYS}" -t "$THREADS" \
		-d "$SECONDS_PER_RUN" -w "$WARMUP" -C "${CPU_PID[$target]}" "${be[@]}" \
		-l "$shape/$target/$round" "$@" 2>>"$LOGS/loadgen.log") || rc=$?
	if [ -z "$line" ] || [ "$rc" -eq 1 ] || [ "$rc" -gt 2 ]; then
		log "  $shape $target round $round: loadgen failed (exit $rc, see $LOGS/loadgen.log)"
		RES[$shape,$target,failed]=1
		return 0
	fi
	echo "$line" >>"$OUT/raw.txt"
	local m
	for m in ops_per_s p50_us p99_us cpu_us_per_op backend_cpu_us_per_op cs_per_op \
		backend_cs_per_op errors misses; do
		RES[$shape,$target,$m]+="$(kv "$line" "$m") "
	done
	# The cores the whole machine's part of the run kept busy: requests/s
	# times the CPU per request of proxy, backends and loadgen. On a host
	# whose cores they share, ops/s is this over their sum of us/req.
	RES[$shape,$target,cores]+="$(awk -v o="$(kv "$line" ops_per_s)" \
		-v p="$(kv "$line" cpu_us_per_op)" -v b="$(kv "$line" backend_cpu_us_per_op)" \
		-v l="$(kv "$line" loadgen_cpu_us_per_op)" 'BEGIN {
		if (o == "" || p == "" || l == "") { print "-"; exit }
		printf "%.2f\n", o * (p + (b == "" ? 0 : b) + l) / 1e6 }') "
	log "$(printf '  %s %-9s round %s: %8s ops/s  p50 %7s us  p99 %8s us  cpu %6s us/req  errors %s' \
		"$shape" "$target" "$round" "$(kv "$line" ops_per_s)" "$(kv "$line" p50_us)" \
		"$(kv "$line" p99_us)" "$(kv "$line" cpu_us_per_op)" "$(kv "$line" errors)")"
}

print_table() {
	local shape target m
	printf 'ringproxy bench, %s: %s rounds x %s s (+%s s warmup) per target and shape, medians\n' \
		"$(date -u '+%Y-%m-%d %H:%M UTC')" "$ROUNDS" "$SECONDS_PER_RUN" "$WARMUP"
	printf 'machine: %s cores, %s; memcached %s; nutcracker %s; mcproxy: %s\n' "$(nproc)" \
		"$(uname -r)" "$(memcached -V | awk '{ print $2 }')" "$(nutcracker_version)" \
		"${MCPROXY_NOTE:-not run}"
	printf 'every proxy places keys by md5 + ketama (as libmemcached does); ringproxy: %s thread(s)\n' \
		"$RP_THREADS"
	[ -z "$BUSY_NOTE" ] || printf '%s\n' "$BUSY_NOTE"
	printf 'cpu us/req: utime+stime of the proxy (for direct: of the memcached) over the\n'
	printf 'measured window, divided by the requests; a 10-key multi-get is one request.\n'
	printf 'backends us/req: the same of the three memcached behind a proxy.\n'
	printf 'cs/req: context switches of every thread of the proxy (backends: of the\n'
	printf 'memcached) per request: each a sleep and a wake-up, or a preemption.\n'
	printf 'cores: ops/s x the us/req of proxy, backends and loadgen: how much of the\n'
	printf 'machine the run kept busy (%s cores here, shared by all of them).\n' "$(nproc)"
	printf 'ops/s, latency and cpu are medians of the rounds; errors and misses are totals.\n'
	for shape in $SHAPES; do
		[[ "$SPECIAL_SHAPES" != *" $shape "* ]] || continue
		printf '\n(%s) %s\n' "$shape" "${SHAPE_TEXT[$shape]}"
		printf '  %-20s %10s %9s %9s %11s %7s %7s %16s %7s %12s %6s\n' target ops/s p50_us \
			p99_us cpu_us/req errors misses backends_us/req cs/req backends_cs/req cores
		for target in $TARGETS; do
			if [ -n "${SKIP[$target]:-}" ]; then
				printf '  %-20s %s\n' "$target" "skipped: ${SKIP[$target]}"
				continue
			fi
			for m in ops_per_s p50_us p99_us cpu_us_per_op backend_cpu_us_per_op cs_per_op \
				backend_cs_per_op cores; do
				MED[$target,$m]=$(median "${RES[$shape,$target,$m]:-}")
			done
			for m in errors misses; do
				MED[$target,$m]=$(total "${RES[$shape,$target,$m]:-}")
			done
			printf '  %-20s %10s %9s %9s %11s %7s %7s %16s %7s %12s %6s%s\n' "$target" \
				"${MED[$target,ops_per_s]}" "${MED[$target,p50_us]}" "${MED[$target,p99_us]}" \
				"${MED[$target,cpu_us_per_op]}" "${MED[$target,errors]}" "${MED[$target,misses]}" \
				"${MED[$target,backend_cpu_us_per_op]}" "${MED[$target,cs_per_op]}" \
				"${MED[$target,backend_cs_per_op]}" "${MED[$target,cores]}" \
				"${RES[$shape,$target,failed]:+  (some runs failed)}"
		done
		local a b
		for pair in "ringproxy twemproxy" "ringproxy mcproxy" "mcproxy twemproxy" \
			"ringproxy direct" "twemproxy direct"; do
			read -r a b <<<"$pair"
			[[ " $TARGETS " == *" $a "* && " $TARGETS " == *" $b "* ]] || continue
			if [ -n "${SKIP[$a]:-}" ] || [ -n "${SKIP[$b]:-}" ]; then
				continue
			fi
			printf '  %-20s %10s %9s %9s %11s %7s %7s %16s %7s %12s\n' "$a/$b" \
				"$(ratio "${MED[$a,ops_per_s]}" "${MED[$b,ops_per_s]}")" \
				"$(ratio "${MED[$a,p50_us]}" "${MED[$b,p50_us]}")" \
				"$(ratio "${MED[$a,p99_us]}" "${MED[$b,p99_us]}")" \
				"$(ratio "${MED[$a,cpu_us_per_op]}" "${MED[$b,cpu_us_per_op]}")" "" "" \
				"$(ratio "${MED[$a,backend_cpu_us_per_op]}" "${MED[$b,backend_cpu_us_per_op]}")" \
				"$(ratio "${MED[$a,cs_per_op]}" "${MED[$b,cs_per_op]}")" \
				"$(ratio "${MED[$a,backend_cs_per_op]}" "${MED[$b,backend_cs_per_op]}")"
		done
	done
}

# ---- shape e: text get vs meta mg ---------------------------------------

# The targets that serve the meta protocol, of those in TARGETS and started.
meta_targets() {
	local t
	for t in direct ringproxy mcproxy; do
		[[ " $TARGETS " == *" $t "* ]] && [ -z "${SKIP[$t]:-}" ] && printf '%s ' "$t"
	done
}

shape_meta() {
	local round load target proto
	for round in $(seq "$META_ROUNDS"); do
		for load in 1 32; do
			for target in $(meta_targets); do
				for proto in get mg; do
					run_one "e-$proto-$load" "$target" "$round" -d "$META_SECONDS"
				done
			done
		done
	done
}

print_meta_table() {
	local load target proto m
	local -A E=()
	printf '\n(e) %s\n' "${SHAPE_TEXT[e]}"
	printf '  %s rounds x %s s (+%s s warmup), medians; `get KEY` vs `mg KEY v f t` on keys\n' \
		"$META_ROUNDS" "$META_SECONDS" "$WARMUP"
	printf '  stored by the same protocol (set / ms T0 F0)\n'
	[[ " $TARGETS " != *" twemproxy "* ]] ||
		printf '  twemproxy: not run, nutcracker does not speak the meta protocol\n'
	for load in 1 32; do
		if [ "$load" = 1 ]; then
			printf '  50 conns, no pipelining:\n'
		else
			printf '  10 conns, pipelined 32 deep:\n'
		fi
		printf '    %-20s %10s %9s %9s %11s %7s %7s\n' target ops/s p50_us p99_us cpu_us/req \
			errors misses
		for target in $(meta_targets); do
			for proto in get mg; do
				for m in ops_per_s p50_us p99_us cpu_us_per_op; do
					# a target whose runs all failed has no values: median says "-"
					E[$target,$proto,$m]=$(median "${RES[e-$proto-$load,$target,$m]:-}") || true
				done
				printf '    %-20s %10s %9s %9s %11s %7s %7s%s\n' "$target $proto" \
					"${E[$target,$proto,ops_per_s]}" "${E[$target,$proto,p50_us]}" \
					"${E[$target,$proto,p99_us]}" "${E[$target,$proto,cpu_us_per_op]}" \
					"$(total "${RES[e-$proto-$load,$target,errors]:-}")" \
					"$(total "${RES[e-$proto-$load,$target,misses]:-}")" \
					"${RES[e-$proto-$load,$target,failed]:+  (some runs failed)}"
			done
		done
		for target in $(meta_targets); do
			printf '    %-20s %10s %9s %9s %11s\n' "$target mg/get" \
				"$(ratio "${E[$target,mg,ops_per_s]}" "${E[$target,get,ops_per_s]}")" \
				"$(ratio "${E[$target,mg,p50_us]}" "${E[$target,get,p50_us]}")" \
				"$(ratio "${E[$target,mg,p99_us]}" "${E[$target,get,p99_us]}")" \
				"$(ratio "${E[$target,mg,cpu_us_per_op]}" "${E[$target,get,cpu_us_per_op]}")"
		done
		[[ " $(meta_targets) " == *" direct "* && " $(meta_targets) " == *" ringproxy "* ]] ||
			continue
		for proto in get mg; do
			printf '    %-20s %10s %9s %9s %11s\n' "ringproxy/direct $proto" \
				"$(ratio "${E[ringproxy,$proto,ops_per_s]}" "${E[direct,$proto,ops_per_s]}")" \
				"$(ratio "${E[ringproxy,$proto,p50_us]}" "${E[direct,$proto,p50_us]}")" \
				"$(ratio "${E[ringproxy,$proto,p99_us]}" "${E[direct,$proto,p99_us]}")" \
				"$(ratio "${E[ringproxy,$proto,cpu_us_per_op]}" "${E[direct,$proto,cpu_us_per_op]}")"
		done
	done
}

# ---- shape i: what the Redis index costs --------------------------------

declare -A IX=()        # shape i and m figures: "metric,round" or "metric,tag" -> value
MEM_PREFIX="bench:memory:user:key:"     # 22 bytes: keys of 27.6 bytes on average

# index_snapshot_cmd TAG: a shell command (for --on-ready, or run here) saving
# the indexed proxy's stats and Redis' commandstats and cpu into $TMPD/TAG.*.
index_snapshot_cmd() {
	printf 'python3 %q stats %q >%q && ' "$BENCHCTL" "${PORT[index]}" "$TMPD/$1.stats"
	printf 'redis-cli -h 127.0.0.1 -p %q info commandstats | tr -d %q >%q && ' \
		"$IX_REDIS_PORT" '\r' "$TMPD/$1.cmdstats"
	printf 'redis-cli -h 127.0.0.1 -p %q info cpu | tr -d %q >%q\n' \
		"$IX_REDIS_PORT" '\r' "$TMPD/$1.cpu"
}

# index_account ROUND: Redis commands, index counters and Redis CPU of one
# indexed run, over the measured window (ready -> after) and over the whole
# run from the reset (before -> after, loadgen's populate included).
index_account() {
	local r=$1 b=$TMPD/i$1.before a=$TMPD/i$1.after y=$TMPD/i$1.ready
	local calls_a calls_y sets_w reqs_w
	[ -s "$a.stats" ] && [ -s "$y.stats" ] && [ -s "$a.cmdstats" ] || return 0
	calls_a=$(($(redis_calls "$a.cmdstats" zadd) + $(redis_calls "$a.cmdstats" zrem)))
	calls_y=$(($(redis_calls "$y.cmdstats" zadd) + $(redis_calls "$y.cmdstats" zrem)))
	sets_w=$(delta "$y.stats" "$a.stats" cmd_set)
	reqs_w=$(delta "$y.stats" "$a.stats" requests)
	IX[calls_w,$r]=$((calls_a - calls_y))
	IX[sets_w,$r]=$sets_w
	IX[cps_w,$r]=$(awk -v c=$((calls_a - calls_y)) -v s="$sets_w" 'BEGIN { printf "%.4f", (s > 0 ? c / s : 0) }')
	IX[mps_w,$r]=$(awk -v a="$(delta "$y.stats" "$a.stats" index:adds)" \
		-v d="$(delta "$y.stats" "$a.stats" index:removes)" -v s="$sets_w" \
		'BEGIN { printf "%.4f", (s > 0 ? (a + d) / s : 0) }')
	IX[rcpu_w,$r]=$(awk -v c0="$(redis_cpu_us "$y.cpu")" -v c1="$(redis_cpu_us "$a.cpu")" \
		-v n="$reqs_w" 'BEGIN { printf "%.2f", (n > 0 ? (c1 - c0) / n : 0) }')
	local c
	for c in adds filtered dropped; do
		IX[${c}_w,$r]=$(delta "$y.stats" "$a.stats" "index:$c")
		IX[${c}_all,$r]=$(delta "$b.stats" "$a.stats" "index:$c")
	done
	IX[calls_all,$r]=$calls_a
	IX[failed,$r]=$(redis_failed "$a.cmdstats")
	IX[sets_all,$r]=$(stat_of "$a.stats" cmd_set)
	IX[cps_all,$r]=$(awk -v c="$calls_a" -v s="${IX[sets_all,$r]}" 'BEGIN { printf "%.4f", (s > 0 ? c / s : 0) }')
	log "$(printf '  i index     round %s: window: %s zadd+zrem / %s cmd_set = %s per stored key; index:adds %s filtered %s dropped %s; redis cpu %s us/req' \
		"$r" "${IX[calls_w,$r]}" "$sets_w" "${IX[cps_w,$r]}" "${IX[adds_w,$r]}" \
		"${IX[filtered_w,$r]}" "${IX[dropped_w,$r]}" "${IX[rcpu_w,$r]}")"
}

# index_memory TAG LISTPACK_ENTRIES HASH: Redis memory per indexed key, after
# INDEX_MEM_KEYS distinct keys go through a fresh indexed proxy (pool hash
# HASH) into a fresh Redis (LISTPACK_ENTRIES > 0 raises
# zset-max-listpack-entries to it).
index_memory() {
	local tag=$1 lp=$2 hash=$3 rport pport rpid ppid before after line n=$INDEX_MEM_KEYS
	local -a ropt=()
	[ "$lp" -gt 0 ] && ropt=(--zset-max-listpack-entries "$lp")
	read -r rport pport <<<"$(free_ports 2)"
	log "shape i: Redis memory per indexed key ($tag): $n keys through a fresh proxy and Redis"
	if ! start_redis "i-mem-$tag-redis" "$rport" "${ropt[@]}"; then
		IX[mem_err,$tag]="redis-server did not start"
		return 0
	fi
	rpid=$STARTED_PID
	write_conf "$OUT/i-mem-$tag.yml" "$pport" "${MC_PORTS[*]}" "  index: {redis: 127.0.0.1:$rport}" "$hash"
	IX[mem_hash,$tag]=$hash
	if ! start_ringproxy "i-mem-$tag-ringproxy" "$pport" "$OUT/i-mem-$tag.yml"; then
		IX[mem_err,$tag]="ringproxy did not start"
		stop_pid "$rpid"
		return 0
	fi
	ppid=$STARTED_PID
	ctl wait-stat "$pport" migration:state idle 20 || log "  the proxy never said idle"
	sleep 1.2       # a heartbeat or two: Redis' baseline before the keys
	before=$(redis_field "$rport" memory used_memory)
	# one connection (16 sets in flight): a faster burst can outrun Redis
	# (ZADD into big listpacks) past the proxy's queue_max, and what is
	# dropped is not indexed (the per-key figure divides by what is)
	line=$(timeout 900 "$LOADGEN_BIN" -q -p "$pport" -c 1 -v 16 -k "$n" -x "$MEM_PREFIX" \
		--populate-only --populate-time 600 -l "i/memory/$tag" 2>>"$LOGS/loadgen.log") || true
	echo "$line" >>"$OUT/raw.txt"
	ctl wait-index "$pport" 300 || log "  the index writes did not drain"
	after=$(redis_field "$rport" memory used_memory)
	ctl stats "$pport" >"$TMPD/i-mem-$tag.stats"
	rcli "$rport" info commandstats >"$TMPD/i-mem-$tag.cmdstats"
	IX[mem_zadd,$tag]=$(sed -n 's/^cmdstat_zadd:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p' \
		"$TMPD/i-mem-$tag.cmdstats" | awk -v m="$(stat_of "$TMPD/i-mem-$tag.stats" index:adds)" '{
			printf "%d ZADD for %d members, %.2f us of Redis per member", $1, m, (m > 0 ? $2 / m : 0) }')
	IX[mem_populated,$tag]=$(kv "$line" populated)
	IX[mem_before,$tag]=$before
	IX[mem_after,$tag]=$after
	IX[mem_adds,$tag]=$(stat_of "$TMPD/i-mem-$tag.stats" index:adds)
	IX[mem_dropped,$tag]=$(stat_of "$TMPD/i-mem-$tag.stats" index:dropped)
	IX[mem_limit,$tag]=$(rcli "$rport" config get zset-max-listpack-entries | sed -n 2p)
	"$RINGPROXY_BIN" index stats -c "$OUT/i-mem-$tag.yml" >"$OUT/index-stats-$tag.txt" 2>&1 || true
	IX[mem_total,$tag]=$(sed -n 's/^ *\(total: .*\)/\1/p' "$OUT/index-stats-$tag.txt")
	IX[mem_note,$tag]=$(sed -n 's/^ *note: \(.*\)/\1/p' "$OUT/index-stats-$tag.txt")
	IX[mem_indexed,$tag]=$(sed -n 's/.*), \([0-9]*\) indexed keys.*/\1/p' <<<"${IX[mem_total,$tag]}")
	IX[mem_bpk,$tag]=$(awk -v a="$after" -v b="$before" -v n="${IX[mem_indexed,$tag]:-$n}" \
		'BEGIN { printf "%.1f", (n > 0 ? (a - b) / n : 0) }')
	rcli "$rport" --scan --pattern 'rp:bench:v:*' >"$TMPD/i-mem-$tag.sets"
	IX[mem_sets,$tag]=$(wc -l <"$TMPD/i-mem-$tag.sets")
	IX[mem_enc,$tag]=$(sed 's/^/OBJECT ENCODING /' "$TMPD/i-mem-$tag.sets" | rcli "$rport" |
		sort | uniq -c | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')
	IX[mem_sample,$tag]=$(head -n 3 "$TMPD/i-mem-$tag.sets" | while read -r k; do
		printf '%s: %s, %s members; ' "$k" "$(rcli "$rport" object encoding "$k")" \
			"$(rcli "$rport" zcard "$k")"
	done)
	log "  $tag: used_memory $before -> $after over ${IX[mem_indexed,$tag]:-?} indexed keys = ${IX[mem_bpk,$tag]} B/key; ${IX[mem_enc,$tag]}"
	stop_pid "$ppid"
	stop_pid "$rpid"
}

shape_index() {
	local r target pn pi order
	read -r IX_REDIS_PORT pn pi <<<"$(free_ports 3)"
	if ! start_redis i-redis "$IX_REDIS_PORT"; then
		IX[err]="redis-server did not start, see $LOGS/i-redis.log"
		return 0
	fi
	IX_REDIS_PID=$STARTED_PID
	write_pool_conf "$OUT/i-noindex.yml" "$pn"
	write_conf "$OUT/i-index.yml" "$pi" "${MC_PORTS[*]}" "  index: {redis: 127.0.0.1:$IX_REDIS_PORT}"
	PORT[noindex]=$pn
	PORT[index]=$pi
	if ! start_ringproxy i-noindex "$pn" "$OUT/i-noindex.yml"; then
		IX[err]="ringproxy did not start, see $LOGS/i-noindex.log"
		stop_pid "$IX_REDIS_PID"
		return 0
	fi
	CPU_PID[noindex]=$STARTED_PID
	if ! start_ringproxy i-index "$pi" "$OUT/i-index.yml"; then
		IX[err]="ringproxy did not start, see $LOGS/i-index.log"
		stop_pid "${CPU_PID[noindex]}"
		stop_pid "$IX_REDIS_PID"
		return 0
	fi
	CPU_PID[index]=$STARTED_PID
	ctl wait-stat "$pi" migration:state idle 20 || log "  the indexed proxy never said idle"
	log "shape i: ringproxy on 127.0.0.1:$pn (no index), 127.0.0.1:$pi (index in Redis 127.0.0.1:$IX_REDIS_PORT)"
	for r in $(seq "$ROUNDS"); do
		# alternate who goes first, so that order effects cancel
		order="noindex index"
		[ $((r % 2)) -eq 1 ] || order="index noindex"
		for target in $order; do
			if [ "$target" = noindex ]; then
				run_one i noindex "$r"
				continue
			fi
			rcli "$IX_REDIS_PORT" config resetstat >/dev/null
			ctl reset "$pi"
			rm -f "$TMPD/i$r".*
			sh -c "$(index_snapshot_cmd "i$r.before")"
			run_one i index "$r" --on-ready "$(index_snapshot_cmd "i$r.ready")"
			ctl wait-index "$pi" 30 || true
			sh -c "$(index_snapshot_cmd "i$r.after")"
			index_account "$r"
		done
	done
	IX[redis_version]=$(redis_field "$IX_REDIS_PORT" server redis_version)
	stop_pid "${CPU_PID[index]}"
	stop_pid "${CPU_PID[noindex]}"
	stop_pid "$IX_REDIS_PID"
	local h
	MEM_TAGS=""
	[ "$INDEX_MEM_KEYS" -gt 0 ] || return 0
	for h in $INDEX_MEM_HASHES; do
		index_memory "$h-default" 0 "$h"
		MEM_TAGS+="$h-default "
		if [ "$INDEX_LISTPACK" -gt 0 ]; then
			index_memory "$h-listpack" "$INDEX_LISTPACK" "$h"
			MEM_TAGS+="$h-listpack "
		fi
	done
}

# vals PREFIX ROUNDS: the values IX[PREFIX,1..ROUNDS] holds, space-separated.
vals() {
	local r out=""
	for r in $(seq "$2"); do
		out+="${IX[$1,$r]:--} "
	done
	echo "${out% }"
}

print_index_table() {
	local t m tag
	printf '\n(i) %s\n' "${SHAPE_TEXT[i]}"
	if [ -n "${IX[err]:-}" ]; then
		printf '  skipped: %s\n' "${IX[err]}"
		return 0
	fi
	printf '  key space %s, %s rounds x %s s, the two proxies interleaved (order alternating), medians\n' \
		"$INDEX_KEYS" "$ROUNDS" "$SECONDS_PER_RUN"
	printf '  %-20s %10s %9s %9s %11s %7s %7s\n' target ops/s p50_us p99_us cpu_us/req errors misses
	for t in noindex index; do
		for m in ops_per_s p50_us p99_us cpu_us_per_op; do
			MED[$t,$m]=$(median "${RES[i,$t,$m]:-}")
		done
		for m in errors misses; do
			MED[$t,$m]=$(total "${RES[i,$t,$m]:-}")
		done
		printf '  %-20s %10s %9s %9s %11s %7s %7s%s\n' \
			"$([ $t = index ] && echo ringproxy+index || echo ringproxy)" \
			"${MED[$t,ops_per_s]}" "${MED[$t,p50_us]}" "${MED[$t,p99_us]}" \
			"${MED[$t,cpu_us_per_op]}" "${MED[$t,errors]}" "${MED[$t,misses]}" \
			"${RES[i,$t,failed]:+  (some runs failed)}"
	done
	printf '  %-20s %10s %9s %9s %11s   (goal: ops/s >= 0.90x)\n' "index/no-index" \
		"$(ratio "${MED[index,ops_per_s]}" "${MED[noindex,ops_per_s]}")" \
		"$(ratio "${MED[index,p50_us]}" "${MED[noindex,p50_us]}")" \
		"$(ratio "${MED[index,p99_us]}" "${MED[noindex,p99_us]}")" \
		"$(ratio "${MED[index,cpu_us_per_op]}" "${MED[noindex,cpu_us_per_op]}")"
	local r pairs=""
	for r in $(seq "$ROUNDS"); do
		pairs+="$(ratio "$(cut -d' ' -f"$r" <<<"${RES[i,index,ops_per_s]:-}")" \
			"$(cut -d' ' -f"$r" <<<"${RES[i,noindex,ops_per_s]:-}")")/$(ratio \
			"$(cut -d' ' -f"$r" <<<"${RES[i,index,cpu_us_per_op]:-}")" \
			"$(cut -d' ' -f"$r" <<<"${RES[i,noindex,cpu_us_per_op]:-}")") "
	done
	printf '  index/no-index per round (ops/s / cpu_us/req): %s\n' "${pairs% }"
	printf '  Redis %s, measured windows (stats reset and CONFIG RESETSTAT before each run):\n' \
		"${IX[redis_version]:-?}"
	printf '    ZADD+ZREM commands per stored key  %s (median; per round: %s; calls/cmd_set: %s/%s)\n' \
		"$(median "$(vals cps_w "$ROUNDS")")" "$(vals cps_w "$ROUNDS")" \
		"$(total "$(vals calls_w "$ROUNDS")")" "$(total "$(vals sets_w "$ROUNDS")")"
	printf '    ZADD+ZREM members per stored key   %s (median; index:adds+removes / cmd_set)\n' \
		"$(median "$(vals mps_w "$ROUNDS")")"
	printf '    Redis CPU per proxy request        %s us (median)\n' "$(median "$(vals rcpu_w "$ROUNDS")")"
	printf '    Redis commands failed (whole runs, command:failed_calls), per round: %s\n' \
		"$(vals failed "$ROUNDS" | sed 's/ /; /g')"
	printf '    proxy counters, sum of the windows: index:adds %s, index:filtered %s, index:dropped %s\n' \
		"$(total "$(vals adds_w "$ROUNDS")")" "$(total "$(vals filtered_w "$ROUNDS")")" \
		"$(total "$(vals dropped_w "$ROUNDS")")"
	printf '  whole runs (loadgen populate of all %s keys + warmup + window), per round:\n' "$INDEX_KEYS"
	printf '    commands per stored key %s; index:adds %s; index:filtered %s; index:dropped %s\n' \
		"$(vals cps_all "$ROUNDS")" "$(vals adds_all "$ROUNDS")" "$(vals filtered_all "$ROUNDS")" \
		"$(vals dropped_all "$ROUNDS")"
	if [ "$INDEX_MEM_KEYS" -le 0 ]; then
		printf '  Redis memory per indexed key: not measured (BENCH_INDEX_MEM_KEYS=0)\n'
		return 0
	fi
	printf '  Redis memory per indexed key: %s distinct keys of %s bytes on average (prefix "%s"), 16 B values,\n' \
		"$INDEX_MEM_KEYS" "$(awk -v n="$INDEX_MEM_KEYS" -v p=${#MEM_PREFIX} 'BEGIN {
			for (i = 0; i < n; i++) s += p + length(i ""); printf "%.1f", s / n }')" "$MEM_PREFIX"
	printf '  stored over 1 connection through a fresh proxy into a fresh Redis; (used_memory after - before) / indexed keys;\n'
	printf '  skiplist once a set outgrows zset-max-listpack-entries:\n'
	for tag in ${MEM_TAGS:-}; do
		[ -n "${IX[mem_before,$tag]:-}${IX[mem_err,$tag]:-}" ] || continue
		if [ -n "${IX[mem_err,$tag]:-}" ]; then
			printf '    hash %s: skipped: %s\n' "${IX[mem_hash,$tag]}" "${IX[mem_err,$tag]}"
			continue
		fi
		printf '    hash %s, zset-max-listpack-entries %s: %s B/key\n' "${IX[mem_hash,$tag]}" \
			"${IX[mem_limit,$tag]}" "${IX[mem_bpk,$tag]}"
		printf '              (used_memory %s -> %s over %s indexed keys; stored %s, index:adds %s, index:dropped %s%s)\n' \
			"${IX[mem_before,$tag]}" "${IX[mem_after,$tag]}" "${IX[mem_indexed,$tag]:--}" \
			"${IX[mem_populated,$tag]:--}" "${IX[mem_adds,$tag]}" "${IX[mem_dropped,$tag]}" \
			"$([ "${IX[mem_dropped,$tag]}" = 0 ] || echo ': keys the proxy stored but never indexed')"
		printf '              encodings of the %s v-node sets: %s\n' "${IX[mem_sets,$tag]}" "${IX[mem_enc,$tag]}"
		printf '              %s\n' "${IX[mem_zadd,$tag]:-}"
		printf '              e.g. %s\n' "${IX[mem_sample,$tag]%; }"
		printf '              ringproxy index stats: %s\n' "${IX[mem_total,$tag]:-(no total line)}"
		[ -z "${IX[mem_note,$tag]}" ] || printf '              its note: %s\n' "${IX[mem_note,$tag]}"
	done
	printf '    reference (measured in an earlier session, Redis 7.0, 300,000 keys of 28 B over 480 v-nodes):\n'
	printf '              131 B/key as skiplists, 86 B/key as listpacks\n'
}

# ---- shape m: migration on a resize -------------------------------------

# mig_setup TAG MIGRATION_YAML: 4 fresh memcached (3 in the ring), a fresh
# Redis and an indexed ringproxy; sets MG_* (ports, pids, conf).
mig_setup() {
	local tag=$1 i
	local -a ports
	read -r -a ports <<<"$(free_ports 6)"
	MG_MC=("${ports[@]:0:4}")
	MG_REDIS=${ports[4]}
	MG_RP=${ports[5]}
	MG_PIDS=()
	MG_CONF=$OUT/m-$tag.yml
	MG_EXTRA="  index: {redis: 127.0.0.1:$MG_REDIS}${2:+
$2}"
	for i in 0 1 2 3; do
		start_memcached "m-$tag-memcached$((i + 1))" "${MG_MC[$i]}" || return 1
		MG_PIDS+=("$STARTED_PID")
	done
	start_redis "m-$tag-redis" "$MG_REDIS" || return 1
	MG_PIDS+=("$STARTED_PID")
	write_conf "$MG_CONF" "$MG_RP" "${MG_MC[*]:0:3}" "$MG_EXTRA"
	start_ringproxy "m-$tag-ringproxy" "$MG_RP" "$MG_CONF" || return 1
	MG_RP_PID=$STARTED_PID
	MG_PIDS+=("$STARTED_PID")
	ctl wait-stat "$MG_RP" migration:state idle 20
}

# Stops what mig_setup started, proxy first.
mig_teardown() {
	local i
	for ((i = ${#MG_PIDS[@]} - 1; i >= 0; i--)); do
		stop_pid "${MG_PIDS[$i]}"
	done
	MG_PIDS=()
}

# mig_fill TAG: MIG_KEYS keys of 100 B through the proxy, indexed.
mig_fill() {
	local line
	line=$(timeout 900 "$LOADGEN_BIN" -q -p "$MG_RP" -c 50 -v 100 -k "$MIG_KEYS" -x mig: \
		--populate-only --populate-time 600 -l "m/fill/$1" 2>>"$LOGS/loadgen.log") || return 1
	echo "$line" >>"$OUT/raw.txt"
	[ "$(kv "$line" populated)" = "$MIG_KEYS" ] || return 1
	ctl wait-index "$MG_RP" 120
}

# mig_check TAG KEY ROUND: keys read back after the move, and where they are.
mig_check() {
	local v i items="" lost
	v=$(ctl verify "$MG_RP" mig: "$MIG_KEYS") || true
	lost=$(kv "$v" missing)
	if [ "$2" = b ] && [ -n "$lost" ]; then
		v=$(ctl verify "$MG_RP" lg: "$INDEX_KEYS") || true
		lost=$(awk -v a="$lost" -v b="$(kv "$v" missing)" 'BEGIN { print (b == "") ? "-" : a + b }')
	fi
	IX[$2_lost,$3]=${lost:--}
	for i in 0 1 2 3; do
		items+="$(ctl stats "${MG_MC[$i]}" | awk '$1 == "curr_items" { print $2 }')/"
	done
	IX[$2_items,$3]=${items%/}
}

# mig_record PREFIX ROUND WATCH_LINE: the watcher's figures into IX.
mig_record() {
	local f
	for f in finished seconds until_moving_s states keys_moved keys_stale keys_failed \
		keys_retried keys_skipped client_commands index_moved arcs_total; do
		IX[$1_$f,$2]=$(kv "$3" "$f")
	done
	IX[$1_kps,$2]=$(awk -v k="${IX[$1_keys_moved,$2]}" -v s="${IX[$1_seconds,$2]}" \
		'BEGIN { printf "%.0f", (s > 0 ? k / s : 0) }')
	# the rate once keys move (after waiting for the lease and the other proxies)
	IX[$1_mkps,$2]=$(awk -v k="${IX[$1_keys_moved,$2]}" -v s="${IX[$1_seconds,$2]}" \
		-v w="${IX[$1_until_moving_s,$2]}" 'BEGIN {
			if (w == "-" || s - w <= 0) print "-"; else printf "%.0f", k / (s - w) }')
}

shape_migration() {
	local r watch wpid marker
	for r in $(seq "$MIG_ROUNDS"); do
		# (1) unlimited rate, no load
		log "shape m round $r: unlimited rate: fill $MIG_KEYS keys, add a 4th server, SIGHUP"
		if ! mig_setup "r$r-unlimited" "  migration: {rate: 0$MIG_INFLIGHT_SET}" ||
			! mig_fill "r$r-unlimited"; then
			log "  setup or fill failed (see $LOGS)"
			IX[a_err,$r]=1
			mig_teardown
			continue
		fi
		write_conf "$MG_CONF" "$MG_RP" "${MG_MC[*]}" "$MG_EXTRA"
		watch=$(ctl watch-migration "$MG_RP" 2 "$MIG_TIMEOUT" --hup "$MG_RP_PID") || true
		mig_record a "$r" "$watch"
		mig_check "r$r-unlimited" a "$r"
		rcli "$MG_REDIS" info commandstats >"$TMPD/m$r-a.cmdstats" || true
		IX[a_failed,$r]=$(redis_failed "$TMPD/m$r-a.cmdstats")
		log "  $watch"
		log "  keys moved ${IX[a_keys_moved,$r]} in ${IX[a_seconds,$r]} s = ${IX[a_kps,$r]} keys/s; lost ${IX[a_lost,$r]}; items per server ${IX[a_items,$r]}"
		mig_teardown

		# (2) default rate, under load
		log "shape m round $r: default rate under load: fill, load before, SIGHUP under load"
		if ! mig_setup "r$r-default" "${MIG_INFLIGHT_SET:+  migration: {${MIG_INFLIGHT_SET#, }\}}" ||
			! mig_fill "r$r-default"; then
			log "  setup or fill failed (see $LOGS)"
			IX[b_err,$r]=1
			mig_teardown
			continue
		fi
		PORT[before]=$MG_RP PORT[during]=$MG_RP
		CPU_PID[before]=$MG_RP_PID CPU_PID[during]=$MG_RP_PID
		run_one m before "$r"
		ctl wait-index "$MG_RP" 60 || true
		write_conf "$MG_CONF" "$MG_RP" "${MG_MC[*]}" "$MG_EXTRA"
		marker=$TMPD/m$r.hup
		rm -f "$marker" "$marker.tmp"
		timeout $((MIG_TIMEOUT + 60)) python3 "$BENCHCTL" watch-migration "$MG_RP" 2 \
			"$MIG_TIMEOUT" --marker "$marker" >"$TMPD/m$r.watch" 2>>"$LOGS/benchctl.log" &
		wpid=$!
		PIDS+=("$wpid")
		# loadgen, just before its measured window: note the time and its own
		# pid (the watcher ends the window with SIGUSR1), then SIGHUP the proxy
		# shellcheck disable=SC2016 # $(date) and $PPID are for that sh -c
		RUN_TIMEOUT=$((MIG_TIMEOUT + 300)) run_one m during "$r" -d "$MIG_TIMEOUT" \
			--on-ready "$(printf 'echo "$(date +%%s.%%N) $PPID" >%q && kill -HUP %q && mv %q %q' \
				"$marker.tmp" "$MG_RP_PID" "$marker.tmp" "$marker")"
		if [ -e "$marker" ]; then
			wait "$wpid" 2>/dev/null || true
		fi
		stop_pid "$wpid"
		watch=$(cat "$TMPD/m$r.watch" 2>/dev/null || true)
		mig_record b "$r" "$watch"
		mig_check "r$r-default" b "$r"
		rcli "$MG_REDIS" info commandstats >"$TMPD/m$r-b.cmdstats" || true
		IX[b_failed,$r]=$(redis_failed "$TMPD/m$r-b.cmdstats")
		log "  $watch"
		log "  keys moved ${IX[b_keys_moved,$r]} in ${IX[b_seconds,$r]} s = ${IX[b_kps,$r]} keys/s; lost ${IX[b_lost,$r]}; items per server ${IX[b_items,$r]}"
		mig_teardown
	done
}

print_migration_table() {
	local rs t m label
	printf '\n(m) %s\n' "${SHAPE_TEXT[m]}"
	printf '  %s keys of 100 B stored through the proxy, then the 4th server added and SIGHUP;\n' "$MIG_KEYS"
	printf '  fresh memcached, Redis and ringproxy for every run; %s rounds, medians.\n' "$MIG_ROUNDS"
	printf '  seconds: from the SIGHUP until stats says migration:state idle at epoch 2 (polled every 20 ms).\n'
	rs=$MIG_ROUNDS
	printf '  (1) rate: 0 (unlimited), no client load:\n'
	printf '    keys moved %s, %s s, %s keys/s (median); per round: moved %s; s %s; keys/s %s\n' \
		"$(median "$(vals a_keys_moved "$rs")")" "$(median "$(vals a_seconds "$rs")")" \
		"$(median "$(vals a_kps "$rs")")" "$(vals a_keys_moved "$rs")" "$(vals a_seconds "$rs")" \
		"$(vals a_kps "$rs")"
	printf '    of which waiting before keys move (lease, proxies): %s s; keys/s while moving: %s\n' \
		"$(vals a_until_moving_s "$rs")" "$(vals a_mkps "$rs")"
	printf '    arcs %s; stale %s, failed %s, retried %s, skipped %s (sums); finished %s\n' \
		"$(vals a_arcs_total "$rs")" "$(total "$(vals a_keys_stale "$rs")")" \
		"$(total "$(vals a_keys_failed "$rs")")" "$(total "$(vals a_keys_retried "$rs")")" \
		"$(total "$(vals a_keys_skipped "$rs")")" "$(vals a_finished "$rs")"
	printf '    keys missing when read back: %s; items per server afterwards: %s\n' \
		"$(vals a_lost "$rs")" "$(vals a_items "$rs")"
	printf '    Redis commands failed (command:failed_calls), per round: %s\n' \
		"$(vals a_failed "$rs" | sed 's/ /; /g')"
	printf '  (2) default rate (50,000 keys/s) while loadgen runs 50 conns, 90%% get / 10%% set,\n'
	printf '      100 B, over %s keys (populated, so indexed, and moved too):\n' "$INDEX_KEYS"
	printf '  %-20s %10s %9s %9s %11s %7s %7s\n' "" ops/s p50_us p99_us cpu_us/req errors misses
	for t in before during; do
		for m in ops_per_s p50_us p99_us cpu_us_per_op; do
			MED[m$t,$m]=$(median "${RES[m,$t,$m]:-}")
		done
		for m in errors misses; do
			MED[m$t,$m]=$(total "${RES[m,$t,$m]:-}")
		done
		label="no migration ($SECONDS_PER_RUN s)"
		[ $t = before ] || label="during the migration"
		printf '  %-20s %10s %9s %9s %11s %7s %7s%s\n' "$label" \
			"${MED[m$t,ops_per_s]}" "${MED[m$t,p50_us]}" "${MED[m$t,p99_us]}" \
			"${MED[m$t,cpu_us_per_op]}" "${MED[m$t,errors]}" "${MED[m$t,misses]}" \
			"${RES[m,$t,failed]:+  (some runs failed)}"
	done
	printf '  %-20s %10s %9s %9s %11s\n' "during/no migration" \
		"$(ratio "${MED[mduring,ops_per_s]}" "${MED[mbefore,ops_per_s]}")" \
		"$(ratio "${MED[mduring,p50_us]}" "${MED[mbefore,p50_us]}")" \
		"$(ratio "${MED[mduring,p99_us]}" "${MED[mbefore,p99_us]}")" \
		"$(ratio "${MED[mduring,cpu_us_per_op]}" "${MED[mbefore,cpu_us_per_op]}")"
	printf '    keys moved %s, %s s, %s keys/s (median); per round: moved %s; s %s; keys/s %s\n' \
		"$(median "$(vals b_keys_moved "$rs")")" "$(median "$(vals b_seconds "$rs")")" \
		"$(median "$(vals b_kps "$rs")")" "$(vals b_keys_moved "$rs")" "$(vals b_seconds "$rs")" \
		"$(vals b_kps "$rs")"
	printf '    of which waiting before keys move (lease, proxies): %s s; keys/s while moving: %s\n' \
		"$(vals b_until_moving_s "$rs")" "$(vals b_mkps "$rs")"
	printf '    arcs %s; client commands on moving keys %s; stale %s, failed %s, retried %s, skipped %s (sums); finished %s\n' \
		"$(vals b_arcs_total "$rs")" "$(total "$(vals b_client_commands "$rs")")" \
		"$(total "$(vals b_keys_stale "$rs")")" "$(total "$(vals b_keys_failed "$rs")")" \
		"$(total "$(vals b_keys_retried "$rs")")" "$(total "$(vals b_keys_skipped "$rs")")" \
		"$(vals b_finished "$rs")"
	printf '    keys missing when read back (fill + loadgen keys): %s; items per server afterwards: %s\n' \
		"$(vals b_lost "$rs")" "$(vals b_items "$rs")"
	printf '    Redis commands failed (command:failed_calls), per round: %s\n' \
		"$(vals b_failed "$rs" | sed 's/ /; /g')"
}

# ---- shape f: a fleet of two proxies resizing together ------------------

# fleet_setup TAG: 4 fresh memcached (3 in the ring), a fresh Redis and two
# indexed ringproxy with the same pool name and index prefix, each its own
# file; sets FL_* (ports, pids, confs) and MG_MC/MG_REDIS (for mig_* helpers).
fleet_setup() {
	local tag=$1 i
	local -a ports
	read -r -a ports <<<"$(free_ports 7)"
	MG_MC=("${ports[@]:0:4}")
	MG_REDIS=${ports[4]}
	FL_RP=("${ports[5]}" "${ports[6]}")
	FL_PID=()
	FL_CONF=("$OUT/f-$tag-1.yml" "$OUT/f-$tag-2.yml")
	MG_PIDS=()
	FL_EXTRA="  index: {redis: 127.0.0.1:$MG_REDIS, prefix: \"rp:fleet\"}"
	for i in 0 1 2 3; do
		start_memcached "f-$tag-memcached$((i + 1))" "${MG_MC[$i]}" || return 1
		MG_PIDS+=("$STARTED_PID")
	done
	start_redis "f-$tag-redis" "$MG_REDIS" || return 1
	MG_PIDS+=("$STARTED_PID")
	for i in 0 1; do
		write_conf "${FL_CONF[$i]}" "${FL_RP[$i]}" "${MG_MC[*]:0:3}" "$FL_EXTRA"
		start_ringproxy "f-$tag-ringproxy$((i + 1))" "${FL_RP[$i]}" "${FL_CONF[$i]}" || return 1
		FL_PID+=("$STARTED_PID")
		MG_PIDS+=("$STARTED_PID")
		ctl wait-stat "${FL_RP[$i]}" migration:state idle 20 || return 1
	done
	# both in the fleet before anything is stored or resized
	ctl wait-stat "${FL_RP[0]}" migration:live_proxies 2 20 &&
		ctl wait-stat "${FL_RP[1]}" migration:live_proxies 2 20
}

# fleet_fill TAG: MIG_KEYS keys (mig:) through the first proxy and the
# loadgen's INDEX_KEYS keys (lg:, so the runs need not populate) through the
# second, at once; all indexed.
fleet_fill() {
	local pa pb rc=0
	timeout 900 "$LOADGEN_BIN" -q -p "${FL_RP[0]}" -c 50 -v 100 -k "$MIG_KEYS" -x mig: \
		--populate-only --populate-time 600 -l "f/fill/$1/mig" >"$TMPD/f.fill1" 2>>"$LOGS/loadgen.log" &
	pa=$!
	timeout 900 "$LOADGEN_BIN" -q -p "${FL_RP[1]}" -c 50 -v 100 -k "$INDEX_KEYS" \
		--populate-only --populate-time 600 -l "f/fill/$1/lg" >"$TMPD/f.fill2" 2>>"$LOGS/loadgen.log" &
	pb=$!
	wait "$pa" || rc=1
	wait "$pb" || rc=1
	cat "$TMPD/f.fill1" "$TMPD/f.fill2" >>"$OUT/raw.txt"
	[ "$rc" = 0 ] || return 1
	[ "$(kv "$(cat "$TMPD/f.fill1")" populated)" = "$MIG_KEYS" ] || return 1
	[ "$(kv "$(cat "$TMPD/f.fill2")" populated)" = "$INDEX_KEYS" ] || return 1
	ctl wait-index "${FL_RP[0]}" 120 && ctl wait-index "${FL_RP[1]}" 120
}

# fleet_ready_cmd OWN WAIT: a loadgen --on-ready command: write the
# loadgen's pid to file OWN, then wait (up to ~60 s) for file WAIT. With the
# other loadgen's file as WAIT it is a barrier (both windows open together);
# with a --go file, the watcher opens them.
fleet_ready_cmd() {
	# shellcheck disable=SC2016 # $PPID and $i are for that sh -c
	printf 'echo "$PPID" >%q && mv %q %q && i=0 && while [ ! -e %q ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i + 1)); done' \
		"$1.tmp" "$1.tmp" "$1" "$2"
}

# fleet_load_start DURATION READY_CMD_1 READY_CMD_2 LABEL: one loadgen per
# proxy, shape f's load over the (already stored) INDEX_KEYS keys, in the
# background; the first one also samples both proxies' CPU.
fleet_load_start() {
	local dur=$1 i
	local -a args cpu
	read -r -a args <<<"${SHAPE_ARGS[f]}"
	FL_LG=()
	for i in 0 1; do
		cpu=()
		[ "$i" != 0 ] || cpu=(-C "${FL_PID[0]}" -C "${FL_PID[1]}")
		timeout $((${dur%.*} + 240)) "$LOADGEN_BIN" -q -p "${FL_RP[$i]}" "${args[@]}" -N \
			-k "$INDEX_KEYS" -t "$THREADS" -d "$dur" -w "$WARMUP" "${cpu[@]}" \
			-l "$4/p$((i + 1))" --on-ready "$([ "$i" = 0 ] && echo "$2" || echo "$3")" \
			>"$TMPD/f.lg$i" 2>>"$LOGS/loadgen.log" &
		FL_LG+=("$!")
		PIDS+=("$!")
	done
}

# fleet_load_finish KEY ROUND: waits for both loadgens; their sum (ops/s,
# errors, misses), the worse of the two (p50, p99) and both proxies' CPU per
# request of either into RES[f,KEY,*].
fleet_load_finish() {
	local key=$1 r=$2 i rc l0 l1 m bad=""
	for i in 0 1; do
		rc=0
		wait "${FL_LG[$i]}" || rc=$?
		stop_pid "${FL_LG[$i]}"
		[ -s "$TMPD/f.lg$i" ] && [ "$rc" != 1 ] && [ "$rc" -le 2 ] || bad+=" p$((i + 1)):exit$rc"
	done
	l0=$(cat "$TMPD/f.lg0" 2>/dev/null || true)
	l1=$(cat "$TMPD/f.lg1" 2>/dev/null || true)
	[ -z "$l0" ] || echo "$l0" >>"$OUT/raw.txt"
	[ -z "$l1" ] || echo "$l1" >>"$OUT/raw.txt"
	if [ -n "$bad" ]; then
		log "  f $key round $r: loadgen failed ($bad, see $LOGS/loadgen.log)"
		RES[f,$key,failed]=1
		return 0
	fi
	RES[f,$key,ops_per_s]+="$(awk -v a="$(kv "$l0" ops_per_s)" -v b="$(kv "$l1" ops_per_s)" 'BEGIN { print a + b }') "
	for m in p50_us p99_us; do
		RES[f,$key,$m]+="$(awk -v a="$(kv "$l0" $m)" -v b="$(kv "$l1" $m)" 'BEGIN { print (a > b ? a : b) }') "
	done
	RES[f,$key,cpu_us_per_op]+="$(awk -v c="$(kv "$l0" cpu_us)" \
		-v n="$(($(kv "$l0" ops) + $(kv "$l0" errors) + $(kv "$l1" ops) + $(kv "$l1" errors)))" \
		'BEGIN { if (c == "-" || n == 0) print "-"; else printf "%.2f\n", c / n }') "
	for m in errors misses; do
		RES[f,$key,$m]+="$(($(kv "$l0" $m) + $(kv "$l1" $m))) "
	done
	log "$(printf '  f %-12s round %s: %8s ops/s (%s + %s)  p50 %s/%s us  p99 %s/%s us  errors %s/%s  misses %s/%s' \
		"$key" "$r" "$(awk -v a="$(kv "$l0" ops_per_s)" -v b="$(kv "$l1" ops_per_s)" 'BEGIN { print a + b }')" \
		"$(kv "$l0" ops_per_s)" "$(kv "$l1" ops_per_s)" "$(kv "$l0" p50_us)" "$(kv "$l1" p50_us)" \
		"$(kv "$l0" p99_us)" "$(kv "$l1" p99_us)" "$(kv "$l0" errors)" "$(kv "$l1" errors)" \
		"$(kv "$l0" misses)" "$(kv "$l1" misses)")"
}

# fleet_check V ROUND: every stored key read back, each through the proxy
# that did not store it (mig: through the second, lg: through the first);
# the missing ones (up to 10 each) located on the backends; items per server.
fleet_check() {
	local r=$2 i p n v lost out="" items="" names=""
	for p in "1 mig: $MIG_KEYS" "0 lg: $INDEX_KEYS"; do
		read -r i p n <<<"$p"
		v=$(ctl verify "${FL_RP[$i]}" "$p" "$n") || true
		lost=$(kv "$v" missing)
		out+="${lost:--}/"
		[ "$(kv "$v" missing_keys)" = - ] ||
			names+=" via proxy $((i + 1)): $(ctl where "$(kv "$v" missing_keys)" "${MG_MC[@]}" || true);"
	done
	IX[f$1_lost,$r]=${out%/}
	[ -z "$names" ] || log "  missing when read back (key@memcached ports holding it; ring ${MG_MC[*]}):$names"
	for i in 0 1 2 3; do
		items+="$(ctl stats "${MG_MC[$i]}" | awk '$1 == "curr_items" { print $2 }')/"
	done
	IX[f$1_items,$r]=${items%/}
}

shape_fleet() {
	local r s v i rdy watch
	for r in $(seq "$FLEET_ROUNDS"); do
		for s in $FLEET_STAGGERS; do
			v=s$s
			log "shape f round $r, SIGHUPs $s s apart: 2 proxies, fill $MIG_KEYS + $INDEX_KEYS keys, load, resize under load"
			if ! fleet_setup "r$r-$v" || ! fleet_fill "r$r-$v"; then
				log "  setup or fill failed (see $LOGS)"
				IX[f${v}_err,$r]=1
				mig_teardown
				continue
			fi
			# the same load with no migration, both windows together
			rdy=$TMPD/f$r$v.before
			rm -f "$rdy".*
			fleet_load_start "$SECONDS_PER_RUN" "$(fleet_ready_cmd "$rdy.1" "$rdy.2")" \
				"$(fleet_ready_cmd "$rdy.2" "$rdy.1")" "f/before-$v/$r"
			fleet_load_finish "before-$v" "$r"
			ctl wait-index "${FL_RP[0]}" 60 || true
			ctl wait-index "${FL_RP[1]}" 60 || true
			# both files say 4 servers; the watcher opens both windows, SIGHUPs,
			# and ends the windows once both proxies are idle at epoch 2
			for i in 0 1; do
				write_conf "${FL_CONF[$i]}" "${FL_RP[$i]}" "${MG_MC[*]}" "$FL_EXTRA"
			done
			rdy=$TMPD/f$r$v.during
			rm -f "$rdy".*
			fleet_load_start "$MIG_TIMEOUT" "$(fleet_ready_cmd "$rdy.1" "$rdy.go")" \
				"$(fleet_ready_cmd "$rdy.2" "$rdy.go")" "f/during-$v/$r"
			watch=$(timeout $((MIG_TIMEOUT + 120)) python3 "$BENCHCTL" watch-fleet \
				"${FL_RP[0]},${FL_RP[1]}" "${FL_PID[0]},${FL_PID[1]}" 2 $((MIG_TIMEOUT + 60)) \
				--stagger "$s" --ready "$rdy.1,$rdy.2" --go "$rdy.go" \
				--trace "$LOGS/f-r$r-$v.trace" 2>>"$LOGS/benchctl.log") || true
			if [ -z "$watch" ]; then
				# the watcher failed: do not let the loadgens wait or run on
				: >"$rdy.go"
				for i in 0 1; do
					kill -USR1 "${FL_LG[$i]}" 2>/dev/null || true
				done
			fi
			fleet_load_finish "during-$v" "$r"
			echo "f/watch-$v/$r $watch" >>"$OUT/raw.txt"
			for i in finished stagger_s first_move_s idle_s last_move_s moving_s keys_moved moving_kps moved_by \
				phases states keys_stale keys_failed keys_retried keys_skipped client_commands \
				fallback_reads arcs_total live_proxies; do
				IX[f${v}_$i,$r]=$(kv "$watch" "$i")
			done
			fleet_check "$v" "$r"
			rcli "$MG_REDIS" info commandstats >"$TMPD/f$r$v.cmdstats" || true
			IX[f${v}_failed,$r]=$(redis_failed "$TMPD/f$r$v.cmdstats")
			log "  $watch"
			log "  from the last SIGHUP: first key moved ${IX[f${v}_first_move_s,$r]} s, both idle at epoch 2 ${IX[f${v}_idle_s,$r]} s; moved ${IX[f${v}_keys_moved,$r]} (${IX[f${v}_moving_kps,$r]} keys/s); missing (mig: via proxy 2 / lg: via proxy 1) ${IX[f${v}_lost,$r]}; items per server ${IX[f${v}_items,$r]}"
			mig_teardown
		done
	done
}

print_fleet_table() {
	local rs=$FLEET_ROUNDS s v t m label key
	printf '\n(f) %s\n' "${SHAPE_TEXT[f]}"
	printf '  2 ringproxy, one pool name and index prefix, one Redis; %s keys of 100 B stored through proxy 1\n' "$MIG_KEYS"
	printf '  and the loadgen'"'"'s %s through proxy 2; then both files get the 4th server and both proxies a SIGHUP\n' "$INDEX_KEYS"
	printf '  (default rate) while loadgen runs 25 conns, 90%% get / 10%% set, 100 B, over those %s keys\n' "$INDEX_KEYS"
	printf '  through EACH proxy; fresh memcached, Redis and proxies for every run; %s rounds, medians.\n' "$rs"
	printf '  Times from the LAST SIGHUP; both proxies'"'"' stats polled every 20 ms. ops/s: sum of the two\n'
	printf '  loadgens; p50/p99: the worse of the two; cpu: both proxies over all requests. The window\n'
	printf '  "during" runs from the first SIGHUP until both proxies are idle at epoch 2.\n'
	for s in $FLEET_STAGGERS; do
		v=s$s
		if [ "$s" = 0 ]; then
			printf '  SIGHUPs together (stagger %s s, measured %s):\n' "$s" "$(vals "f${v}_stagger_s" "$rs")"
		else
			printf '  second SIGHUP %s s after the first (measured %s):\n' "$s" "$(vals "f${v}_stagger_s" "$rs")"
		fi
		printf '    %-34s %8s   per round\n' "" median
		for m in "first key moved, s:first_move_s" "both idle at epoch 2, s:idle_s" \
			"last key moved, s:last_move_s" "moving (first to last key), s:moving_s" \
			"keys moved:keys_moved" "keys/s while moving:moving_kps"; do
			printf '    %-34s %8s   %s\n' "${m%%:*}" "$(median "$(vals "f${v}_${m#*:}" "$rs")")" \
				"$(vals "f${v}_${m#*:}" "$rs")"
		done
		printf '    phases first seen (s from last SIGHUP), per round: %s\n' "$(vals "f${v}_phases" "$rs" | sed 's/ /; /g')"
		printf '    keys moved by proxy 1/2: %s; live proxies seen 1/2: %s; finished: %s\n' \
			"$(vals "f${v}_moved_by" "$rs")" "$(vals "f${v}_live_proxies" "$rs")" "$(vals "f${v}_finished" "$rs")"
		printf '    stale %s, failed %s, retried %s, skipped %s; fallback reads %s; client commands on changing keys %s (sums)\n' \
			"$(total "$(vals "f${v}_keys_stale" "$rs")")" "$(total "$(vals "f${v}_keys_failed" "$rs")")" \
			"$(total "$(vals "f${v}_keys_retried" "$rs")")" "$(total "$(vals "f${v}_keys_skipped" "$rs")")" \
			"$(total "$(vals "f${v}_fallback_reads" "$rs")")" "$(total "$(vals "f${v}_client_commands" "$rs")")"
		printf '    %-20s %10s %9s %9s %11s %7s %7s\n' "" ops/s p50_us p99_us cpu_us/req errors misses
		for t in before during; do
			key=$t-$v
			for m in ops_per_s p50_us p99_us cpu_us_per_op; do
				MED[f$key,$m]=$(median "${RES[f,$key,$m]:-}")
			done
			for m in errors misses; do
				MED[f$key,$m]=$(total "${RES[f,$key,$m]:-}")
			done
			label="no migration ($SECONDS_PER_RUN s)"
			[ $t = before ] || label="during the migration"
			printf '    %-20s %10s %9s %9s %11s %7s %7s%s\n' "$label" \
				"${MED[f$key,ops_per_s]}" "${MED[f$key,p50_us]}" "${MED[f$key,p99_us]}" \
				"${MED[f$key,cpu_us_per_op]}" "${MED[f$key,errors]}" "${MED[f$key,misses]}" \
				"${RES[f,$key,failed]:+  (some runs failed)}"
		done
		printf '    %-20s %10s %9s %9s %11s\n' "during/no migration" \
			"$(ratio "${MED[fduring-$v,ops_per_s]}" "${MED[fbefore-$v,ops_per_s]}")" \
			"$(ratio "${MED[fduring-$v,p50_us]}" "${MED[fbefore-$v,p50_us]}")" \
			"$(ratio "${MED[fduring-$v,p99_us]}" "${MED[fbefore-$v,p99_us]}")" \
			"$(ratio "${MED[fduring-$v,cpu_us_per_op]}" "${MED[fbefore-$v,cpu_us_per_op]}")"
		printf '    during, per round: ops/s %s; p99 %s us; errors %s; misses %s\n' \
			"$(xargs <<<"${RES[f,during-$v,ops_per_s]:--}")" "$(xargs <<<"${RES[f,during-$v,p99_us]:--}")" \
			"$(xargs <<<"${RES[f,during-$v,errors]:--}")" "$(xargs <<<"${RES[f,during-$v,misses]:--}")"
		printf '    keys missing when read back (fill keys via proxy 2 / loadgen keys via proxy 1): %s;\n      items per server: %s\n' \
			"$(vals "f${v}_lost" "$rs")" "$(vals "f${v}_items" "$rs")"
		printf '    Redis commands failed (command:failed_calls), per round: %s\n' \
			"$(vals "f${v}_failed" "$rs" | sed 's/ /; /g')"
		for r in $(seq "$rs"); do
			[ -z "${IX[f${v}_err,$r]:-}" ] || printf '    round %s: setup or fill failed (see %s)\n' "$r" "$LOGS"
		done
	done
}

# ---- shape x: index maintenance (rebuild, sweep, closing pass) ----------

declare -A MX=()        # shape x figures: "metric,kind,round" or "metric,kind" -> value

# proc_cpu_us PID...: utime+stime of the processes, microseconds (/proc/PID/stat).
proc_cpu_us() {
	local pid s=0 f
	for pid in "$@"; do
		f=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
		# after "pid (comm) ": field 3 (state) is word 1, utime word 12, stime word 13
		s=$((s + $(awk '{ print $12 + $13 }' <<<"$f")))
	done
	awk -v t="$s" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f\n", t * 1e6 / hz }'
}

# maint_rebuild_run KIND ROUND: one `ringproxy index rebuild` on shape x's
# pool; its summary, per-server keys/s, wall time and CPU per key into MX.
maint_rebuild_run() {
	local kind=$1 r=$2 out=$TMPD/x-rebuild-$1-$2 t0 t1 mc0 mc1 rd0 rd1 cli rc=0 sum
	mc0=$(proc_cpu_us "${XR_MC_PIDS[@]}")
	rd0=$(proc_cpu_us "$XR_REDIS_PID")
	t0=$(date +%s.%N)
	# `times` in the subshell: the command's user and system CPU (its children's)
	cli=$( (timeout 900 "$RINGPROXY_BIN" index rebuild -c "$OUT/x-index.yml" >"$out.out" \
		2>"$out.err" || echo "rc=$?" >&2; times) 2>>"$out.err" | sed -n 2p)
	t1=$(date +%s.%N)
	mc1=$(proc_cpu_us "${XR_MC_PIDS[@]}")
	rd1=$(proc_cpu_us "$XR_REDIS_PID")
	cat "$out.out" >>"$OUT/x-rebuild.txt"
	sum=$(sed -n 's/.* in \([0-9.]*\) s: \([0-9]*\) keys indexed (\([0-9]*\) were missing), \([0-9]*\) misplaced.*, \([0-9]*\) keys\/s$/\1 \2 \3 \4 \5/p' "$out.out")
	if [ -z "$sum" ]; then
		log "  x rebuild $kind round $r: no summary (see $out.out, $out.err)"
		MX[rb_failed,$kind]=1
		return 0
	fi
	local secs keys new misplaced kps
	read -r secs keys new misplaced kps <<<"$sum"
	MX[rb_s,$kind,$r]=$secs MX[rb_keys,$kind,$r]=$keys MX[rb_new,$kind,$r]=$new
	MX[rb_misplaced,$kind,$r]=$misplaced MX[rb_kps,$kind,$r]=$kps
	MX[rb_wall,$kind,$r]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
	MX[rb_servers,$kind,$r]=$(awk '$1 ~ /^mc[0-9]+$/ && NF == 6 { printf "%s%s", (n++ ? "/" : ""), $6 }' "$out.out")
	local k=${MX[rb_keys,$kind,$r]}
	MX[rb_cli_us,$kind,$r]=$(awk -v c="$cli" -v k="$k" 'BEGIN {
		split(c, t, " "); s = 0
		for (i = 1; i <= 2; i++) { split(t[i], p, "m"); sub("s", "", p[2]); s += p[1] * 60 + p[2] }
		printf "%.2f", (k > 0 ? s * 1e6 / k : 0) }')
	MX[rb_mc_us,$kind,$r]=$(awk -v a="$mc0" -v b="$mc1" -v k="$k" 'BEGIN { printf "%.2f", (k > 0 ? (b - a) / k : 0) }')
	MX[rb_redis_us,$kind,$r]=$(awk -v a="$rd0" -v b="$rd1" -v k="$k" 'BEGIN { printf "%.2f", (k > 0 ? (b - a) / k : 0) }')
	log "$(printf '  x rebuild %-7s round %s: %s keys (%s new) in %s s = %s keys/s (per server %s); wall %s s; cpu us/key: cli %s, memcached %s, redis %s' \
		"$kind" "$r" "$k" "${MX[rb_new,$kind,$r]}" "${MX[rb_s,$kind,$r]}" "${MX[rb_kps,$kind,$r]}" \
		"${MX[rb_servers,$kind,$r]}" "${MX[rb_wall,$kind,$r]}" "${MX[rb_cli_us,$kind,$r]}" \
		"${MX[rb_mc_us,$kind,$r]}" "${MX[rb_redis_us,$kind,$r]}")"
}

# maint_rebuild: 3 fresh memcached holding MAINT_KEYS keys (stored through
# a proxy without an index), a fresh Redis; `ringproxy index rebuild`
# into an empty index (FLUSHALL first) and again over the indexed keys.
maint_rebuild() {
	local -a ports
	local i r line lpid
	read -r -a ports <<<"$(free_ports 5)"
	XR_MC_PIDS=()
	: >"$OUT/x-rebuild.txt"
	for i in 0 1 2; do
		if ! start_memcached "x-memcached$((i + 1))" "${ports[$i]}"; then
			MX[rb_err]="memcached did not start"
			return 0
		fi
		XR_MC_PIDS+=("$STARTED_PID")
	done
	if ! start_redis x-redis "${ports[3]}"; then
		MX[rb_err]="redis-server did not start"
		return 0
	fi
	XR_REDIS_PID=$STARTED_PID
	write_conf "$OUT/x-load.yml" "${ports[4]}" "${ports[*]:0:3}"
	write_conf "$OUT/x-index.yml" "${ports[4]}" "${ports[*]:0:3}" "  index: {redis: 127.0.0.1:${ports[3]}}"
	if ! start_ringproxy x-load "${ports[4]}" "$OUT/x-load.yml"; then
		MX[rb_err]="ringproxy did not start, see $LOGS/x-load.log"
		return 0
	fi
	lpid=$STARTED_PID
	log "shape x: rebuild: storing $MAINT_KEYS keys through a proxy without an index"
	line=$(timeout 900 "$LOADGEN_BIN" -q -p "${ports[4]}" -c 50 -v 100 -k "$MAINT_KEYS" -x rb: \
		--populate-only --populate-time 600 -l "x/rebuild-fill" 2>>"$LOGS/loadgen.log") || true
	echo "$line" >>"$OUT/raw.txt"
	stop_pid "$lpid"
	MX[rb_populated]=$(kv "$line" populated)
	MX[rb_items]=$(for p in "${ports[@]:0:3}"; do ctl stats "$p" | awk '$1 == "curr_items" { print $2 }'; done |
		paste -sd/)
	for r in $(seq "$MAINT_ROUNDS"); do
		rcli "${ports[3]}" flushall >/dev/null
		maint_rebuild_run empty "$r"
		maint_rebuild_run indexed "$r"
	done
	MX[redis_version]=$(redis_field "${ports[3]}" server redis_version)
	stop_pid "$XR_REDIS_PID"
	for i in "${XR_MC_PIDS[@]}"; do
		stop_pid "$i"
	done
}

# maint_helper NAME ARG...: scripts/bench_NAME.py ARG... (release build), its
# output into $OUT/x-NAME.txt; stopped with the rest on any exit.
maint_helper() {
	local name=$1 pid rc=0
	shift
	log "shape x: scripts/bench_$name.py $*"
	RINGPROXY_BIN=$RINGPROXY_BIN LOADGEN_BIN=$LOADGEN_BIN timeout 1800 \
		"$ROOT/scripts/bench_$name.py" "$@" >"$OUT/x-$name.txt" 2>"$LOGS/x-$name.log" &
	pid=$!
	PIDS+=("$pid")
	wait "$pid" || rc=$?
	stop_pid "$pid"
	grep -v '^result ' "$OUT/x-$name.txt" | sed 's/^/  /' >&2 || true
	if [ "$rc" -ne 0 ]; then
		MX[${name}_err]="scripts/bench_$name.py exited $rc, see $LOGS/x-$name.log"
		log "  ${MX[${name}_err]}"
		tail -n 5 "$LOGS/x-$name.log" | sed 's/^/    /' >&2
	fi
}

shape_maint() {
	maint_rebuild
	if ! /usr/bin/python3 -c 'import pytest' 2>/dev/null; then
		MX[sweep_err]="/usr/bin/python3 cannot import pytest (the helpers use tests/integration's harness)"
		MX[closing_err]=${MX[sweep_err]}
		return 0
	fi
	maint_helper sweep --keys "$MAINT_KEYS" --memory "$MAINT_SWEEP_MEMORY" \
		--rounds "$MAINT_SWEEP_ROUNDS" --seconds "$MAINT_SWEEP_SECONDS" --rates 0,2000 \
		--cpu-seconds 5 --cpu-runs 1
	maint_helper closing --keys "$MAINT_CLOSING_KEYS" --rounds "$MAINT_ROUNDS"
	maint_helper index_mem --sizes 300000,1000000 --lengths 28,120 \
		--rounds "$MAINT_ROUNDS" --seconds "$MAINT_SWEEP_SECONDS"
}

# xres FILE SELECTOR KEY: KEY of the "result ... SELECTOR ..." line of FILE ("-" if none).
xres() {
	local line
	line=$(grep "^result .*$2" "$1" 2>/dev/null | head -n 1)
	line=$(kv "$line" "$3")
	echo "${line:--}"
}

# xvals METRIC KIND: MX[METRIC,KIND,1..MAINT_ROUNDS], space-separated.
xvals() {
	local r out=""
	for r in $(seq "$MAINT_ROUNDS"); do
		out+="${MX[$1,$2,$r]:--} "
	done
	echo "${out% }"
}

print_maint_table() {
	local kind f s c
	printf '\n(x) %s\n' "${SHAPE_TEXT[x]}"
	printf '  rebuild: "ringproxy index rebuild -c FILE", %s keys of 100 B (stored through a proxy without an index:\n' "$MAINT_KEYS"
	printf '  %s stored, curr_items %s) on 3 fresh memcached (-m 256 -t 1), fresh Redis %s;\n' \
		"${MX[rb_populated]:--}" "${MX[rb_items]:--}" "${MX[redis_version]:-?}"
	printf '  %s rounds of: FLUSHALL, rebuild into the empty index, rebuild again over the indexed keys; medians.\n' "$MAINT_ROUNDS"
	printf '  keys/s and seconds: the command'"'"'s own summary (the listing and indexing); wall: the whole command;\n'
	printf '  cpu us/key: user+sys of the command, of the 3 memcached and of Redis over the command, per key.\n'
	if [ -n "${MX[rb_err]:-}" ]; then
		printf '    skipped: %s\n' "${MX[rb_err]}"
	else
		printf '    %-13s %8s %10s %-26s %7s %7s %8s %9s %8s\n' into keys keys/s "per server keys/s" \
			seconds wall_s cli_us mc_us redis_us
		for kind in empty indexed; do
			printf '    %-13s %8s %10s %-26s %7s %7s %8s %9s %8s%s\n' "$kind index" \
				"$(median "$(xvals rb_keys "$kind")")" "$(median "$(xvals rb_kps "$kind")")" \
				"$(for s in 1 2 3; do median "$(xvals rb_servers "$kind" | tr ' ' '\n' |
					cut -d/ -f"$s" | paste -sd' ')"; done | paste -sd/)" \
				"$(median "$(xvals rb_s "$kind")")" "$(median "$(xvals rb_wall "$kind")")" \
				"$(median "$(xvals rb_cli_us "$kind")")" "$(median "$(xvals rb_mc_us "$kind")")" \
				"$(median "$(xvals rb_redis_us "$kind")")" "${MX[rb_failed,$kind]:+  (some runs failed)}"
			printf '    %-13s keys/s per round: %s\n' "" "$(xvals rb_kps "$kind")"
		done
	fi

	f=$OUT/x-sweep.txt
	printf '  sweep: scripts/bench_sweep.py --keys %s --memory %s --rounds %s --seconds %s --rates 0,2000\n' \
		"$MAINT_KEYS" "$MAINT_SWEEP_MEMORY" "$MAINT_SWEEP_ROUNDS" "$MAINT_SWEEP_SECONDS"
	printf '  (3 memcached of %s MB, so part of the indexed keys are evicted; full output in %s):\n' \
		"$MAINT_SWEEP_MEMORY" "${f#"$ROOT"/}"
	if [ -n "${MX[sweep_err]:-}" ]; then
		printf '    failed: %s\n' "${MX[sweep_err]}"
	fi
	if grep -q '^result ' "$f" 2>/dev/null; then
		for c in half_gone every_key_there; do
			printf '    "ringproxy index sweep" (unlimited), %-15s %8s entries (%s gone) in %s s = %s entries/s\n' \
				"$c:" "$(xres "$f" "command=$c " entries)" "$(xres "$f" "command=$c " gone)" \
				"$(xres "$f" "command=$c " seconds)" "$(xres "$f" "command=$c " per_s)"
		done
		printf '    (the seconds include the 1-2 s the command waits for the proxies to see it)\n'
		for c in half_gone all_there; do
			printf '    background sweeper at 20,000/s, no client load, %-10s %s us CPU per entry looked at: proxy %s, memcached %s, redis %s\n' \
				"$c:" "$(xres "$f" "cpu=$c " all_us)" "$(xres "$f" "cpu=$c " proxy_us)" \
				"$(xres "$f" "cpu=$c " memcached_us)" "$(xres "$f" "cpu=$c " redis_us)"
		done
		printf '    client load (50 conns, no pipelining, 90%% get, 50,000 keys of 100 B) with the sweeper off\n'
		printf '    (sweep_rate: 0) and at the default (2000/s), %s interleaved rounds x %s s, order alternating; medians;\n' \
			"$MAINT_SWEEP_ROUNDS" "$MAINT_SWEEP_SECONDS"
		printf '    cpu: us per client operation (from /proc), all five servers and apart:\n'
		printf '      %-12s %9s %9s %8s %10s %8s   %s\n' sweep_rate ops/s cpu_us/op proxy memcached redis "ops/s per round"
		for s in 0 2000; do
			printf '      %-12s %9s %9s %8s %10s %8s   %s\n' "$s" "$(xres "$f" "rate=$s " ops_per_s)" \
				"$(xres "$f" "rate=$s " cpu_us_per_op)" "$(xres "$f" "rate=$s " proxy_us)" \
				"$(xres "$f" "rate=$s " memcached_us)" "$(xres "$f" "rate=$s " redis_us)" \
				"$(xres "$f" "rate=$s " ops_rounds | tr , ' ')"
		done
		printf '      %-12s %9s %9s   (goal: the sweeper costs <= 5%%: ops/s >= 0.95x, cpu/op <= 1.05x)\n' "2000/0" \
			"$(xres "$f" "rate=2000 " ops_ratio)x" "$(xres "$f" "rate=2000 " cpu_ratio)x"
	fi

	f=$OUT/x-closing.txt
	printf '  migration closing pass: scripts/bench_closing.py --keys %s --rounds %s (3 -> 4 resize, rate unlimited,\n' \
		"$MAINT_CLOSING_KEYS" "$MAINT_ROUNDS"
	printf '  keys written straight to mc1 and never indexed; times from the proxy'"'"'s log; medians; %s):\n' "${f#"$ROOT"/}"
	if [ -n "${MX[closing_err]:-}" ]; then
		printf '    failed: %s\n' "${MX[closing_err]}"
	fi
	if grep -q '^result ' "$f" 2>/dev/null; then
		printf '      %-9s %8s %15s %11s %12s %14s %9s   %s\n' run keys moved/to_move listing_s \
			"listing s/M" "closing s/M" moves/s "closing s/M per round"
		for c in listing moving; do
			printf '      %-9s %8s %15s %11s %12s %14s %9s   %s%s\n' "$c" "$(xres "$f" "closing=$c " keys)" \
				"$(xres "$f" "closing=$c " moved)/$(xres "$f" "closing=$c " to_move)" \
				"$(xres "$f" "closing=$c " listing_s)" "$(xres "$f" "closing=$c " listing_s_per_million)" \
				"$(xres "$f" "closing=$c " total_s_per_million)" "$(xres "$f" "closing=$c " moves_per_s)" \
				"$(xres "$f" "closing=$c " total_s_per_million_rounds | tr , ' ')" \
				"$([ "$(xres "$f" "closing=$c " short)" = 0 ] || echo "  (WARNING: $(xres "$f" "closing=$c " short) keys not moved, summed over the rounds)")"
		done
		printf '      listing: every key stays on mc1; moving: keys as they fall (about a quarter move to mc4).\n'
		printf '      s/M: seconds per million keys on the source; closing: the whole pass (with moves, the second listing too).\n'
	fi

	f=$OUT/x-index_mem.txt
	printf '  index layout: scripts/bench_index_mem.py (layout 1: the same build told by its record, or RINGPROXY_OLD_BIN; %s):\n' \
		"${f#"$ROOT"/}"
	if [ -n "${MX[index_mem_err]:-}" ]; then
		printf '    failed: %s\n' "${MX[index_mem_err]}"
	fi
	grep -E '^(memory|load [a-z]+ \(layout [12]\): median)' "$f" 2>/dev/null | sed 's/^/    /' || true
}

# ---- callgrind ---------------------------------------------------------

# Instructions per request of one proxy under callgrind, for every shape of
# CG_SHAPES (default: the shapes of SHAPES that are one loadgen run).
callgrind_proxy() {
	local name=$1 port=$2
	shift 2
	local pid shape dump line reqs ir ndump=0
	local -a args
	mkdir -p "$OUT/callgrind"
	rm -f "$OUT/callgrind/$name.out"*
	start "cg-$name" "$port" 600 valgrind --tool=callgrind \
		--callgrind-out-file="$OUT/callgrind/$name.out" "$@" || return 0
	pid=$STARTED_PID
	for shape in ${CG_SHAPES:-$SHAPES}; do
		[ -n "${CG_SHAPES:-}" ] || [[ "$SPECIAL_SHAPES" != *" $shape "* ]] || continue
		read -r -a args <<<"${SHAPE_ARGS[$shape]}"
		# counters are zeroed once connected, populated and warmed up (so
		# every connection has been served), just before the counted requests
		line=$(timeout 900 "$LOADGEN_BIN" -q -p "$port" "${args[@]}" -k "${SHAPE_KEYS[$shape]:-$KEYS}" \
			-w 2 -n "$CG_REQUESTS" -T 60 -l "callgrind/$shape/$name" \
			--on-ready "callgrind_control -z $pid >/dev/null 2>&1" \
			2>>"$LOGS/loadgen.log") || true
		callgrind_control -d "$pid" >/dev/null 2>&1 || true
		ndump=$((ndump + 1))
		dump=$OUT/callgrind/$name.out.$ndump
		reqs=$(awk -v o="$(kv "$line" ops)" -v e="$(kv "$line" errors)" 'BEGIN { print o + e }')
		ir=$(sed -n 's/^summary: *//p' "$dump" 2>/dev/null | awk '{ print $1 }')
		if [ -z "$line" ] || [ -z "$ir" ] || [ "$reqs" -eq 0 ]; then
			log "callgrind $name shape $shape: no result (see $LOGS/loadgen.log)"
			continue
		fi
		CG[$shape,$name]=$(awk -v i="$ir" -v r="$reqs" 'BEGIN { printf "%.0f", i / r }')
		log "  callgrind $shape $name: $ir instructions / $reqs requests = ${CG[$shape,$name]}"
	done
}

# ---- main --------------------------------------------------------------

mkdir -p "$OUT" "$LOGS"
: >"$OUT/raw.txt"
: >"$LOGS/loadgen.log"

command -v memcached >/dev/null || fail "memcached not installed (scripts/install-deps.sh --bench)"
command -v python3 >/dev/null || fail "python3 not installed"
if [ ! -x "$LOADGEN_BIN" ]; then
	log "building $LOADGEN_BIN"
	make -s build/loadgen >&2 || fail "cannot build the load generator"
fi

declare -A SKIP=() MED=() CG=() SKIP_SHAPE=()
for t in $TARGETS; do
	case $t in direct | ringproxy | twemproxy | mcproxy) ;; *) fail "unknown target '$t'" ;; esac
done
for s in $SHAPES; do
	[ -n "${SHAPE_TEXT[$s]:-}" ] || fail "unknown shape '$s' (have: ${!SHAPE_TEXT[*]})"
done
BENCHCTL=$OUT/benchctl.py
TMPD=$OUT/tmp
mkdir -p "$TMPD"
write_benchctl
for s in i m f x; do
	[[ " $SHAPES " == *" $s "* ]] || continue
	if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
		SKIP_SHAPE[$s]="redis-server or redis-cli not installed (scripts/install-deps.sh)"
	elif [ ! -x "$RINGPROXY_BIN" ]; then
		SKIP_SHAPE[$s]="$RINGPROXY_BIN not built yet (make)"
	fi
done

BUSY=$(cpu_busy_percent)
BUSY_NOTE=""
if [ "$BUSY" -ge 10 ]; then
	BUSY_NOTE="warning: ${BUSY}% of the CPUs were busy before the bench started; figures are noisy"
	log "$BUSY_NOTE"
fi

read -r -a PORTS <<<"$(free_ports 10)"
MC_PORTS=("${PORTS[0]}" "${PORTS[1]}" "${PORTS[2]}")
PORT[direct]=${MC_PORTS[0]}
PORT[ringproxy]=${PORTS[3]}
PORT[twemproxy]=${PORTS[4]}
NC_STATS_PORT=${PORTS[5]}
CG_RP_PORT=${PORTS[6]}
CG_NC_PORT=${PORTS[7]}
CG_NC_STATS_PORT=${PORTS[8]}
PORT[mcproxy]=${PORTS[9]}

MC_USER=()
[ "$(id -u)" -eq 0 ] && MC_USER=(-u nobody)
for i in 0 1 2; do
	start_memcached "memcached$((i + 1))" "${MC_PORTS[$i]}" || fail "memcached did not start"
	MC_PIDS[i]=$STARTED_PID
done
CPU_PID[direct]=${MC_PIDS[0]}
log "memcached on 127.0.0.1:${MC_PORTS[*]}"

write_pool_conf "$OUT/ringproxy.yml" "${PORT[ringproxy]}"
write_pool_conf "$OUT/twemproxy.yml" "${PORT[twemproxy]}"

if [[ " $TARGETS " == *" ringproxy "* ]]; then
	if [ ! -x "$RINGPROXY_BIN" ]; then
		SKIP[ringproxy]="$RINGPROXY_BIN not built yet (make)"
		log "ringproxy: ${SKIP[ringproxy]}; benchmarking without it"
	elif start "ringproxy" "${PORT[ringproxy]}" 50 "$RINGPROXY_BIN" -c "$OUT/ringproxy.yml" \
		-s 0 -P 0 -T "$RP_THREADS"; then
		CPU_PID[ringproxy]=$STARTED_PID
		log "ringproxy on 127.0.0.1:${PORT[ringproxy]} (pid $STARTED_PID)"
	else
		SKIP[ringproxy]="did not start, see $LOGS/ringproxy.log"
	fi
fi
if [[ " $TARGETS " == *" twemproxy "* ]]; then
	if ! command -v nutcracker >/dev/null; then
		SKIP[twemproxy]="nutcracker not installed (scripts/install-deps.sh --bench)"
		log "twemproxy: ${SKIP[twemproxy]}; benchmarking without it"
	elif start twemproxy "${PORT[twemproxy]}" 50 nutcracker -c "$OUT/twemproxy.yml" \
		-s "$NC_STATS_PORT" -a 127.0.0.1; then
		CPU_PID[twemproxy]=$STARTED_PID
		log "twemproxy on 127.0.0.1:${PORT[twemproxy]} (pid $STARTED_PID)"
	else
		SKIP[twemproxy]="did not start, see $LOGS/twemproxy.log"
	fi
fi

if [[ " $TARGETS " == *" mcproxy "* ]]; then
	if ! mcproxy_build; then
		SKIP[mcproxy]=$MCPROXY_NOTE
		log "mcproxy: $MCPROXY_NOTE; benchmarking without it"
	elif MCP_BACKENDS=$(printf '127.0.0.1:%s,' "${MC_PORTS[@]}") start mcproxy "${PORT[mcproxy]}" 50 \
		"$MCPROXY_BIN" "${MC_USER[@]}" -l 127.0.0.1 -p "${PORT[mcproxy]}" -U 0 -c 4096 \
		-t "$PROXY_THREADS" -o proxy_config="$MCPROXY_DIR/route.lua"; then
		CPU_PID[mcproxy]=$STARTED_PID
		log "mcproxy on 127.0.0.1:${PORT[mcproxy]} (pid $STARTED_PID, $PROXY_THREADS threads)"
	else
		SKIP[mcproxy]="did not start, see $LOGS/mcproxy.log"
		MCPROXY_NOTE=${SKIP[mcproxy]}
	fi
fi

for shape in $SHAPES; do
	[[ "$SPECIAL_SHAPES" != *" $shape "* ]] || continue
	log "shape $shape: ${SHAPE_TEXT[$shape]}"
	for round in $(seq "$ROUNDS"); do
		for target in $TARGETS; do
			[ -z "${SKIP[$target]:-}" ] || continue
			run_one "$shape" "$target" "$round"
		done
	done
done
for shape in e i m f x; do
	[[ " $SHAPES " == *" $shape "* ]] || continue
	if [ -n "${SKIP_SHAPE[$shape]:-}" ]; then
		log "shape $shape skipped: ${SKIP_SHAPE[$shape]}"
		continue
	fi
	log "shape $shape: ${SHAPE_TEXT[$shape]}"
	case $shape in
	e) shape_meta ;;
	i) shape_index ;;
	m) shape_migration ;;
	f) shape_fleet ;;
	x) shape_maint ;;
	esac
done

{
	print_table
	for shape in e i m f x; do
		[[ " $SHAPES " == *" $shape "* ]] || continue
		if [ -n "${SKIP_SHAPE[$shape]:-}" ]; then
			printf '\n(%s) %s\n  skipped: %s\n' "$shape" "${SHAPE_TEXT[$shape]}" "${SKIP_SHAPE[$shape]}"
			continue
		fi
		case $shape in
		e) print_meta_table ;;
		i) print_index_table ;;
		m) print_migration_table ;;
		f) print_fleet_table ;;
		x) print_maint_table ;;
		esac
	done
} | tee "$OUT/results.txt"

if [ "$CALLGRIND" = 1 ]; then
	command -v valgrind >/dev/null || fail "BENCH_CALLGRIND=1 needs valgrind"
	log "callgrind: $CG_REQUESTS requests per shape"
	if [ -z "${SKIP[ringproxy]:-}" ] && [ -x "$RINGPROXY_BIN" ]; then
		write_pool_conf "$OUT/callgrind-ringproxy.yml" "$CG_RP_PORT"
		callgrind_proxy ringproxy "$CG_RP_PORT" "$RINGPROXY_BIN" -c "$OUT/callgrind-ringproxy.yml" -s 0 -P 0
	fi
	if command -v nutcracker >/dev/null; then
		write_pool_conf "$OUT/callgrind-twemproxy.yml" "$CG_NC_PORT"
		callgrind_proxy twemproxy "$CG_NC_PORT" nutcracker -c "$OUT/callgrind-twemproxy.yml" \
			-s "$CG_NC_STATS_PORT" -a 127.0.0.1
	fi
	{
		printf '\ncallgrind: user-space instructions per request (%s requests per shape)\n' "$CG_REQUESTS"
		printf '  %-6s %12s %12s %10s\n' shape ringproxy twemproxy rp/tw
		for shape in $SHAPES; do
			[[ "$SPECIAL_SHAPES" != *" $shape "* ]] || continue
			printf '  %-6s %12s %12s %10s\n' "$shape" "${CG[$shape,ringproxy]:--}" \
				"${CG[$shape,twemproxy]:--}" \
				"$(ratio "${CG[$shape,ringproxy]:--}" "${CG[$shape,twemproxy]:--}")"
		done
	} | tee -a "$OUT/results.txt"
	# shape i: the same proxy without and with the index, shape i's load
	if [[ " $SHAPES " == *" i "* ]] && [ -z "${SKIP_SHAPE[i]:-}" ]; then
		read -r cg_redis cg_n cg_i <<<"$(free_ports 3)"
		if start_redis cg-redis "$cg_redis"; then
			write_pool_conf "$OUT/callgrind-noindex.yml" "$cg_n"
			write_conf "$OUT/callgrind-index.yml" "$cg_i" "${MC_PORTS[*]}" \
				"  index: {redis: 127.0.0.1:$cg_redis}"
			CG_SHAPES=i callgrind_proxy noindex "$cg_n" "$RINGPROXY_BIN" \
				-c "$OUT/callgrind-noindex.yml" -s 0 -P 0
			CG_SHAPES=i callgrind_proxy index "$cg_i" "$RINGPROXY_BIN" \
				-c "$OUT/callgrind-index.yml" -s 0 -P 0
		fi
		printf '\ncallgrind, shape i (%s requests after populate and warmup): instructions per request:\n  ringproxy %s, ringproxy+index %s, index/no-index %s\n' \
			"$CG_REQUESTS" "${CG[i,noindex]:--}" "${CG[i,index]:--}" \
			"$(ratio "${CG[i,index]:--}" "${CG[i,noindex]:--}")" | tee -a "$OUT/results.txt"
	fi
fi
log "results in ${OUT#"$ROOT"/}/results.txt, every run in ${OUT#"$ROOT"/}/raw.txt"
