#!/bin/sh
# Install, only when missing, every Debian package that building, running,
# testing and benchmarking ringproxy need (chromium: the status page's test,
# tests/integration/test_status_page.py). Safe to run again and again.
set -eu

PKGS="build-essential pkg-config libevent-dev libhiredis-dev libyaml-dev \
libmd-dev check memcached redis-server libmemcached-dev libmemcached-tools \
python3 python3-pytest python3-pytest-xdist python3-pymemcache python3-memcache python3-redis \
python3-yaml nutcracker chromium systemd man-db groff-base docker-compose"

# Extras for one target only: `make bench` (valgrind for BENCH_CALLGRIND),
# `make fuzz` (clang's libFuzzer).
case "${1:-}" in
--bench) PKGS="$PKGS valgrind" ;;
--fuzz) PKGS="$PKGS clang libclang-rt-14-dev" ;;
esac

# promtool (make test checks dist/prometheus/ringproxy-rules.yml with it)
# comes in Debian's prometheus package, which would start a Prometheus
# server on :9090; only promtool is taken from it, into build/tools/.
install_promtool() {
	command -v promtool >/dev/null 2>&1 && return 0
	[ -x build/tools/promtool ] && return 0
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download prometheus >/dev/null) || {
		$SUDO apt-get update -qq
		(cd "$tmp" && apt-get download prometheus >/dev/null)
	}
	dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
	mkdir -p build/tools
	cp "$tmp/root/usr/bin/promtool" build/tools/promtool
	rm -rf "$tmp"
	echo "install-deps: promtool in build/tools/"
}

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
cd "$(dirname "$0")/.."
install_promtool

[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# Debian starts the packaged memcached and redis-server on their usual ports
# (11211, 6379). They are the host's: left running. The tests and the
# sandbox start their own servers, on free ports (tests/integration/
# harness.py; scripts/sandbox.sh's Redis) or on ports no package uses
# (the sandbox's memcached on 11212-11214).
exit 0
