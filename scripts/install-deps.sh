#!/bin/sh
# Install, only when missing, every Debian package that building, running,
# testing and benchmarking ringproxy need (chromium: the status page's test,
# tests/integration/test_status_page.py). Safe to run again and again.
set -eu

PKGS="build-essential pkg-config libevent-dev libhiredis-dev libyaml-dev \
libmd-dev check memcached redis-server libmemcached-dev libmemcached-tools \
python3 python3-pytest python3-pymemcache python3-memcache python3-redis \
python3-yaml nutcracker chromium"

# Extras for one target only: `make bench` (valgrind for BENCH_CALLGRIND),
# `make fuzz` (clang's libFuzzer).
case "${1:-}" in
--bench) PKGS="$PKGS valgrind" ;;
--fuzz) PKGS="$PKGS clang libclang-rt-14-dev" ;;
esac

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
		missing="$missing $p"
	fi
done

[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
# Debian starts the packaged daemons; the tests and the sandbox start their own.
for svc in memcached redis-server nutcracker; do
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$svc" 2>/dev/null; then
		$SUDO systemctl stop "$svc" || true
	fi
done
exit 0
