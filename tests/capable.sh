#!/usr/bin/env bash
# memccapable's ascii conformance suite against ringproxy.
#
# usage: tests/capable.sh BIN
#
# Starts three memcached servers and BIN (a ringproxy) over them on free
# loopback ports, runs `memccapable -a` against the proxy, and stops
# everything on exit, whatever happens. Passes when memccapable says "All
# tests passed" for all 27 ascii tests; the last line of output is always
# "memccapable: P passed, F failed".
set -u

BIN=${1:?usage: tests/capable.sh BIN}
EXPECTED=27
NSERVERS=3

case $BIN in /*) ;; *) BIN=$PWD/$BIN ;; esac
if [ ! -x "$BIN" ]; then
	echo "capable: $BIN is not an executable" >&2
	exit 2
fi
for tool in memcached memccapable; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "capable: $tool is not installed (scripts/install-deps.sh)" >&2
		exit 2
	fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringproxy-capable.XXXXXX")
PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
	/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT PID: until something listens on PORT, or PID dies (10 s).
wait_port() {
	local i
	for i in $(seq 500); do
		if ! kill -0 "$2" 2>/dev/null; then
			return 1
		fi
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
			return 0
		fi
		sleep 0.02
	done
	return 1
}

USER_FLAG=()
[ "$(id -u)" -eq 0 ] && USER_FLAG=(-u root)

CONF=$WORK/ringproxy.yml
PROXY_PORT=$(free_port)
{
	echo "capable:"
	echo "  listen: 127.0.0.1:$PROXY_PORT"
	echo "  servers:"
} >"$CONF"
for i in $(seq "$NSERVERS"); do
	port=$(free_port)
	memcached -p "$port" -U 0 -l 127.0.0.1 -m 64 -t 1 "${USER_FLAG[@]}" \
		>"$WORK/memcached-$i.log" 2>&1 &
	PIDS+=($!)
	if ! wait_port "$port" $!; then
		echo "capable: memcached $i did not start on port $port" >&2
		cat "$WORK/memcached-$i.log" >&2
		exit 1
	fi
	echo "    - 127.0.0.1:$port:1 mc$i" >>"$CONF"
done

"$BIN" -c "$CONF" -s 0 -P 0 -v 5 >"$WORK/ringproxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
if ! wait_port "$PROXY_PORT" "$PROXY_PID"; then
	echo "capable: ringproxy did not start on port $PROXY_PORT" >&2
	cat "$WORK/ringproxy.log" >&2
	exit 1
fi

memccapable -a -h 127.0.0.1 -p "$PROXY_PORT" -t 5 >"$WORK/capable.out" 2>&1
rc=$?
cat "$WORK/capable.out"

passed=$(grep -c '\[pass\]' "$WORK/capable.out")
failed=$(grep -ci '\[fail\]' "$WORK/capable.out")
status=0
if [ "$rc" -ne 0 ] || ! grep -q '^All tests passed' "$WORK/capable.out" ||
	[ "$passed" -ne "$EXPECTED" ] || [ "$failed" -ne 0 ]; then
	echo "capable: expected all $EXPECTED ascii tests to pass (memccapable exit $rc)" >&2
	echo "capable: ringproxy log:" >&2
	tail -n 50 "$WORK/ringproxy.log" >&2
	status=1
fi
# Stop the proxy first: leaks are reported when it exits.
kill -TERM "$PROXY_PID"
wait "$PROXY_PID"
proxy_rc=$?
if [ "$proxy_rc" -ne 0 ]; then
	echo "capable: ringproxy exited with status $proxy_rc on SIGTERM" >&2
	status=1
fi
if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$WORK/ringproxy.log"; then
	echo "capable: sanitizer report in the ringproxy log:" >&2
	cat "$WORK/ringproxy.log" >&2
	status=1
fi
echo "memccapable: $passed passed, $failed failed"
exit $status
