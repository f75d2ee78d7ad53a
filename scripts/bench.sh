#!/usr/bin/env bash
# bench.sh — direct memcached vs ringproxy vs twemproxy, same backends, same load, one run.
#
# Starts, on free loopback ports, three memcached backends, ringproxy and
# nutcracker (twemproxy) over the same pool, then runs every load shape
# against each target in turn (direct = the first backend alone),
# interleaved round by round so that drift in the machine hits all targets
# alike, and prints the median of the rounds with ratios. Everything it
# started is stopped on any exit.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS   measured seconds per run [5]
#   BENCH_ROUNDS    rounds per shape; the table shows the median [3]
#   BENCH_SHAPES    shapes to run, from: a b c d g [a b c d]
#   BENCH_TARGETS   targets, from: direct ringproxy twemproxy [all three]
#   BENCH_WARMUP    unmeasured load before each run, seconds [0.5]
#   BENCH_KEYS      key space [10000]
#   BENCH_THREADS   loadgen threads [1]
#   BENCH_CALLGRIND=1  also run each proxy under callgrind for a fixed
#                   number of requests per shape (after a 2 s warmup) and
#                   print instructions per request (user space only) [0]
#   BENCH_CALLGRIND_REQUESTS  requests per shape under callgrind [20000]
#   RINGPROXY_BIN   [build/ringproxy]   LOADGEN_BIN [build/loadgen]
#   BENCH_OUT       where results.txt, raw.txt and logs go [build/bench]
#
# Shapes (all on 100-byte values, key space BENCH_KEYS, pre-populated):
#   a  50 connections, no pipelining, 90% get / 10% set
#   b  10 connections, 32 requests in flight each, 90% get / 10% set
#   c  50 connections, no pipelining, 100% gets of 10 keys (one request each)
#   d  1,000 connections, no pipelining, 90% get / 10% set
#   g  (not run by default) 50 connections, no pipelining, 100% single-key gets
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECONDS_PER_RUN=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
SHAPES=${BENCH_SHAPES:-a b c d}
TARGETS=${BENCH_TARGETS:-direct ringproxy twemproxy}
WARMUP=${BENCH_WARMUP:-0.5}
KEYS=${BENCH_KEYS:-10000}
THREADS=${BENCH_THREADS:-1}
CALLGRIND=${BENCH_CALLGRIND:-0}
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
)
declare -A SHAPE_TEXT=(
	[a]="50 conns, no pipelining, 90% get / 10% set, 100 B values"
	[b]="10 conns, pipelined 32 deep, 90% get / 10% set, 100 B values"
	[c]="50 conns, no pipelining, multi-get of 10 keys, 100 B values"
	[d]="1000 conns, no pipelining, 90% get / 10% set, 100 B values"
	[g]="50 conns, no pipelining, 100% single-key gets, 100 B values"
)

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

# Writes a twemproxy-format pool config listening on port $2 to file $1.
write_pool_conf() {
	cat >"$1" <<EOF
bench:
  listen: 127.0.0.1:$2
  hash: fnv1a_64
  distribution: ketama
  servers:
   - 127.0.0.1:${MC_PORTS[0]}:1 mc1
   - 127.0.0.1:${MC_PORTS[1]}:1 mc2
   - 127.0.0.1:${MC_PORTS[2]}:1 mc3
EOF
}

# ---- results -----------------------------------------------------------

declare -A RES=()       # "shape,target,metric" -> values of the rounds
declare -A PORT=() CPU_PID=()

# kv LINE KEY: the value of key in a loadgen result line.
kv() { sed -n "s/.* $2=\\([^ ]*\\).*/\\1/p" <<<" $1"; }

median() {
	tr ' ' '\n' <<<"$*" | grep -E '^[0-9.]+$' | sort -g |
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

run_one() {
	local shape=$1 target=$2 round=$3 line rc=0
	local -a args
	read -r -a args <<<"${SHAPE_ARGS[$shape]}"
	if ! kill -0 "${CPU_PID[$target]}" 2>/dev/null; then
		log "$target (pid ${CPU_PID[$target]}) is gone; skipping its runs"
		return 0
	fi
	line=$(timeout $((${SECONDS_PER_RUN%.*} * 3 + 180)) "$LOADGEN_BIN" -q \
		-p "${PORT[$target]}" "${args[@]}" -k "$KEYS" -t "$THREADS" \
		-d "$SECONDS_PER_RUN" -w "$WARMUP" -C "${CPU_PID[$target]}" \
		-l "$shape/$target/$round" 2>>"$LOGS/loadgen.log") || rc=$?
	if [ -z "$line" ] || [ "$rc" -eq 1 ] || [ "$rc" -gt 2 ]; then
		log "  $shape $target round $round: loadgen failed (exit $rc, see $LOGS/loadgen.log)"
		RES[$shape,$target,failed]=1
		return 0
	fi
	echo "$line" >>"$OUT/raw.txt"
	local m
	for m in ops_per_s p50_us p99_us cpu_us_per_op errors misses; do
		RES[$shape,$target,$m]+="$(kv "$line" "$m") "
	done
	log "$(printf '  %s %-9s round %s: %8s ops/s  p50 %7s us  p99 %8s us  cpu %6s us/req  errors %s' \
		"$shape" "$target" "$round" "$(kv "$line" ops_per_s)" "$(kv "$line" p50_us)" \
		"$(kv "$line" p99_us)" "$(kv "$line" cpu_us_per_op)" "$(kv "$line" errors)")"
}

print_table() {
	local shape target m
	printf 'ringproxy bench, %s: %s rounds x %s s (+%s s warmup) per target and shape, medians\n' \
		"$(date -u '+%Y-%m-%d %H:%M UTC')" "$ROUNDS" "$SECONDS_PER_RUN" "$WARMUP"
	printf 'machine: %s cores, %s; memcached %s; nutcracker %s\n' "$(nproc)" "$(uname -r)" \
		"$(memcached -V | awk '{ print $2 }')" "$(nutcracker_version)"
	[ -z "$BUSY_NOTE" ] || printf '%s\n' "$BUSY_NOTE"
	printf 'cpu us/req: utime+stime of the proxy (for direct: of the memcached) over the\n'
	printf 'measured window, divided by the requests; a 10-key multi-get is one request.\n'
	printf 'ops/s, latency and cpu are medians of the rounds; errors and misses are totals.\n'
	for shape in $SHAPES; do
		printf '\n(%s) %s\n' "$shape" "${SHAPE_TEXT[$shape]}"
		printf '  %-20s %10s %9s %9s %11s %7s %7s\n' target ops/s p50_us p99_us cpu_us/req errors misses
		for target in $TARGETS; do
			if [ -n "${SKIP[$target]:-}" ]; then
				printf '  %-20s %s\n' "$target" "skipped: ${SKIP[$target]}"
				continue
			fi
			for m in ops_per_s p50_us p99_us cpu_us_per_op; do
				MED[$target,$m]=$(median "${RES[$shape,$target,$m]:-}")
			done
			for m in errors misses; do
				MED[$target,$m]=$(total "${RES[$shape,$target,$m]:-}")
			done
			printf '  %-20s %10s %9s %9s %11s %7s %7s%s\n' "$target" \
				"${MED[$target,ops_per_s]}" "${MED[$target,p50_us]}" "${MED[$target,p99_us]}" \
				"${MED[$target,cpu_us_per_op]}" "${MED[$target,errors]}" "${MED[$target,misses]}" \
				"${RES[$shape,$target,failed]:+  (some runs failed)}"
		done
		local a b
		for pair in "ringproxy twemproxy" "ringproxy direct" "twemproxy direct"; do
			read -r a b <<<"$pair"
			[[ " $TARGETS " == *" $a "* && " $TARGETS " == *" $b "* ]] || continue
			if [ -n "${SKIP[$a]:-}" ] || [ -n "${SKIP[$b]:-}" ]; then
				continue
			fi
			printf '  %-20s %10s %9s %9s %11s\n' "$a/$b" \
				"$(ratio "${MED[$a,ops_per_s]}" "${MED[$b,ops_per_s]}")" \
				"$(ratio "${MED[$a,p50_us]}" "${MED[$b,p50_us]}")" \
				"$(ratio "${MED[$a,p99_us]}" "${MED[$b,p99_us]}")" \
				"$(ratio "${MED[$a,cpu_us_per_op]}" "${MED[$b,cpu_us_per_op]}")"
		done
	done
}

# ---- callgrind ---------------------------------------------------------

# Instructions per request of one proxy under callgrind, for every shape.
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
	for shape in $SHAPES; do
		read -r -a args <<<"${SHAPE_ARGS[$shape]}"
		# counters are zeroed once connected, populated and warmed up (so
		# every connection has been served), just before the counted requests
		line=$(timeout 900 "$LOADGEN_BIN" -q -p "$port" "${args[@]}" -k "$KEYS" \
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

declare -A SKIP=() MED=() CG=()
for t in $TARGETS; do
	case $t in direct | ringproxy | twemproxy) ;; *) fail "unknown target '$t'" ;; esac
done
for s in $SHAPES; do
	[ -n "${SHAPE_ARGS[$s]:-}" ] || fail "unknown shape '$s' (have: ${!SHAPE_ARGS[*]})"
done

BUSY=$(cpu_busy_percent)
BUSY_NOTE=""
if [ "$BUSY" -ge 10 ]; then
	BUSY_NOTE="warning: ${BUSY}% of the CPUs were busy before the bench started; figures are noisy"
	log "$BUSY_NOTE"
fi

read -r -a PORTS <<<"$(free_ports 9)"
MC_PORTS=("${PORTS[0]}" "${PORTS[1]}" "${PORTS[2]}")
PORT[direct]=${MC_PORTS[0]}
PORT[ringproxy]=${PORTS[3]}
PORT[twemproxy]=${PORTS[4]}
NC_STATS_PORT=${PORTS[5]}
CG_RP_PORT=${PORTS[6]}
CG_NC_PORT=${PORTS[7]}
CG_NC_STATS_PORT=${PORTS[8]}

MC_USER=()
[ "$(id -u)" -eq 0 ] && MC_USER=(-u nobody)
for i in 0 1 2; do
	start "memcached$((i + 1))" "${MC_PORTS[$i]}" 50 memcached "${MC_USER[@]}" -t 1 -U 0 -m 256 \
		-c 4096 -l 127.0.0.1 -p "${MC_PORTS[$i]}" || fail "memcached did not start"
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
	elif start ringproxy "${PORT[ringproxy]}" 50 "$RINGPROXY_BIN" -c "$OUT/ringproxy.yml"; then
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

for shape in $SHAPES; do
	log "shape $shape: ${SHAPE_TEXT[$shape]}"
	for round in $(seq "$ROUNDS"); do
		for target in $TARGETS; do
			[ -z "${SKIP[$target]:-}" ] || continue
			run_one "$shape" "$target" "$round"
		done
	done
done

print_table | tee "$OUT/results.txt"

if [ "$CALLGRIND" = 1 ]; then
	command -v valgrind >/dev/null || fail "BENCH_CALLGRIND=1 needs valgrind"
	log "callgrind: $CG_REQUESTS requests per shape"
	if [ -z "${SKIP[ringproxy]:-}" ] && [ -x "$RINGPROXY_BIN" ]; then
		write_pool_conf "$OUT/callgrind-ringproxy.yml" "$CG_RP_PORT"
		callgrind_proxy ringproxy "$CG_RP_PORT" "$RINGPROXY_BIN" -c "$OUT/callgrind-ringproxy.yml"
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
			printf '  %-6s %12s %12s %10s\n' "$shape" "${CG[$shape,ringproxy]:--}" \
				"${CG[$shape,twemproxy]:--}" \
				"$(ratio "${CG[$shape,ringproxy]:--}" "${CG[$shape,twemproxy]:--}")"
		done
	} | tee -a "$OUT/results.txt"
fi
log "results in ${OUT#"$ROOT"/}/results.txt, every run in ${OUT#"$ROOT"/}/raw.txt"
