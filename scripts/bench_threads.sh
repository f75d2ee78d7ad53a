#!/usr/bin/env bash
# ringproxy with 1 vs 2 event-loop threads (docs/ARCHITECTURE.md, "Threads"):
# scripts/bench.sh's shapes a, b and c through 3 fresh memcached (one thread
# each), rounds interleaved, one line per run: ops/s, errors, p50 and the
# proxy's CPU per request (loadgen -C).
#
# usage: scripts/bench_threads.sh [ROUNDS]   (default 5; 5 s per run)
# env:   RINGPROXY_BIN [build/ringproxy]  LOADGEN_BIN [build/loadgen]
#        BENCH_PORT [24311]: the proxy's port; memcached on the next three
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${RINGPROXY_BIN:-$ROOT/build/ringproxy}
LG=${LOADGEN_BIN:-$ROOT/build/loadgen}
ROUNDS=${1:-5}
PORT=${BENCH_PORT:-24311}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringproxy-bench-threads.XXXXXX")
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT
{
	printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  servers:\n' "$PORT"
	for i in 1 2 3; do
		memcached -p $((PORT + i)) -U 0 -l 127.0.0.1 -m 256 -t 1 -u "$(id -un)" &
		PIDS+=($!)
		printf '    - 127.0.0.1:%s:1 mc%s\n' $((PORT + i)) "$i"
	done
} >"$WORK/p.yml"
sleep 0.5
declare -A S=([a]="-c 50 -P 1 -r 90 -m 1 -v 100" [b]="-c 10 -P 32 -r 90 -m 1 -v 100"
	[c]="-c 50 -P 1 -r 100 -m 10 -v 100")
for round in $(seq "$ROUNDS"); do
	for shape in a b c; do
		for t in 1 2; do
			"$BIN" -c "$WORK/p.yml" -s 0 -T "$t" >"$WORK/rp.log" 2>&1 &
			rp=$!
			sleep 0.4
			# shellcheck disable=SC2086
			out=$("$LG" -p "$PORT" ${S[$shape]} -k 10000 -d 5 -w 1 -C "$rp" -q 2>/dev/null)
			echo "round=$round shape=$shape threads=$t $(echo "$out" | tr ' ' '\n' |
				grep -E '^(ops_per_s|errors|p50_us|cpu_us_per_op)=' | tr '\n' ' ')"
			kill -TERM "$rp"
			wait "$rp" 2>/dev/null
		done
	done
done
