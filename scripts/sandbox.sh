#!/bin/sh
# `make run`: a local sandbox cluster in the foreground — three memcached,
# one redis-server and ringproxy on conf/ringproxy.yml. Ctrl-C stops it all.
set -eu
cd "$(dirname "$0")/.."
BIN=${RINGPROXY_BIN:-build/ringproxy}
CONF=${RINGPROXY_CONF:-conf/ringproxy.yml}
RUN=$(mktemp -d /tmp/ringproxy-sandbox.XXXXXX)
pids=""

cleanup() {
	trap - INT TERM EXIT
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$RUN"
	echo "sandbox stopped"
}
trap cleanup INT TERM EXIT

port_busy() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

USER_OPT=""
[ "$(id -u)" -eq 0 ] && USER_OPT="-u root"
for port in 11212 11213 11214; do
	if port_busy "$port"; then
		echo "port $port is taken: stop what runs there first" >&2
		exit 1
	fi
	# shellcheck disable=SC2086
	memcached -p "$port" -l 127.0.0.1 -U 0 -m 64 $USER_OPT &
	pids="$pids $!"
done
if port_busy 6379; then
	echo "port 6379 is taken: using the redis-server already there"
else
	redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no \
		--dir "$RUN" --daemonize no >"$RUN/redis.log" 2>&1 &
	pids="$pids $!"
fi
sleep 0.3
"$BIN" -c "$CONF" -v 6 &
pids="$pids $!"
sleep 0.3
cat <<MSG

ringproxy sandbox is up (config: $CONF)
  memcached backends: 127.0.0.1:11212 11213 11214, redis: 127.0.0.1:6379
  connect a client to 127.0.0.1:22121, for example:
      printf 'set greeting 0 0 5\r\nhello\r\nget greeting\r\nstats\r\n' | \\
          python3 -c 'import socket,sys; s=socket.create_connection(("127.0.0.1",22121)); s.sendall(sys.stdin.buffer.read()); import time; time.sleep(0.2); print(s.recv(65536).decode())'
  where does a key go:   $BIN locate -c $CONF greeting
  the ring:              $BIN ring -c $CONF
Ctrl-C stops everything.
MSG
wait
