#!/bin/sh
# `make run`: a local sandbox cluster in the foreground — three memcached,
# its own redis-server on a free port, and ringproxy on a copy of
# conf/ringproxy.yml whose index points at that Redis (written to
# build/sandbox/ringproxy.yml; conf/ stays as you edited it). Ctrl-C stops it
# all and exits 0.
#
#   scripts/sandbox.sh           start it (what `make run` does)
#   scripts/sandbox.sh reload    after editing conf/ringproxy.yml (a resize):
#                                write the copy again and SIGHUP the proxy
set -eu
cd "$(dirname "$0")/.."
BIN=${RINGPROXY_BIN:-build/ringproxy}
CONF=${RINGPROXY_CONF:-conf/ringproxy.yml}
STATE=build/sandbox
GEN=$STATE/ringproxy.yml

# The index's `redis: host:port` lines, pointed at the sandbox's Redis (a
# pool's twemproxy `redis: true|false` has no port and is left alone).
write_conf() {
	sed -E "s/^([[:space:]]+redis:[[:space:]]*)[^[:space:]#]+:[0-9]+/\\1127.0.0.1:$1/" \
		"$CONF" >"$GEN.tmp"
	mv "$GEN.tmp" "$GEN"
}

if [ "${1:-}" = reload ]; then
	if [ ! -f "$STATE/redis.port" ] || [ ! -f "$STATE/ringproxy.pid" ]; then
		echo "no sandbox runs (start it with make run)" >&2
		exit 1
	fi
	write_conf "$(cat "$STATE/redis.port")"
	"$BIN" -t -c "$GEN" >/dev/null || { "$BIN" -t -c "$GEN"; exit 1; }
	kill -HUP "$(cat "$STATE/ringproxy.pid")"
	echo "reloaded $GEN (from $CONF)"
	exit 0
fi

RUN=$(mktemp -d /tmp/ringproxy-sandbox.XXXXXX)
pids=""

cleanup() {
	trap - INT TERM EXIT
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$RUN" "$STATE/redis.port" "$STATE/ringproxy.pid"
	echo "sandbox stopped"
}
# Ctrl-C is how the sandbox ends: a clean stop, exit 0 (make reports no error).
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

# Does something accept connections on 127.0.0.1:$1? (sh has no /dev/tcp.)
port_busy() {
	python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' \
		"$1" 2>/dev/null
}

free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "$STATE"
USER_OPT=""
[ "$(id -u)" -eq 0 ] && USER_OPT="-u root"
for port in 11212 11213 11214 22121; do
	if port_busy "$port"; then
		echo "port $port is taken: stop what runs there first" >&2
		exit 1
	fi
done
for port in 11212 11213 11214; do
	# shellcheck disable=SC2086
	memcached -p "$port" -l 127.0.0.1 -U 0 -m 64 $USER_OPT &
	pids="$pids $!"
done
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
	--dir "$RUN" --daemonize no >"$RUN/redis.log" 2>&1 &
pids="$pids $!"
echo "$REDIS_PORT" >"$STATE/redis.port"
tries=0
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do
	tries=$((tries + 1))
	if [ "$tries" -gt 100 ]; then
		echo "redis-server did not start on port $REDIS_PORT:" >&2
		cat "$RUN/redis.log" >&2
		exit 1
	fi
	sleep 0.1
done
write_conf "$REDIS_PORT"
# The default log level (notice) is the same on either -v scale.
"$BIN" -c "$GEN" -p "$STATE/ringproxy.pid" &
pids="$pids $!"
tries=0
until port_busy 22121; do
	tries=$((tries + 1))
	if [ "$tries" -gt 100 ]; then
		echo "ringproxy did not start (its log is above)" >&2
		exit 1
	fi
	sleep 0.1
done
cat <<MSG

ringproxy sandbox is up (config: $GEN, made from $CONF)
  memcached backends: 127.0.0.1:11212 11213 11214, redis: 127.0.0.1:$REDIS_PORT
  connect a client to 127.0.0.1:22121, for example:
      printf 'set greeting 0 0 5\r\nhello\r\nget greeting\r\nstats\r\n' | \\
          python3 -c 'import socket,sys; s=socket.create_connection(("127.0.0.1",22121)); s.sendall(sys.stdin.buffer.read()); import time; time.sleep(0.2); print(s.recv(65536).decode())'
  where does a key go:   $BIN locate -c $GEN greeting
  the ring:              $BIN ring -c $GEN
  resize: edit $CONF, then run  scripts/sandbox.sh reload
Ctrl-C stops everything.
MSG
wait
