"""What a client, or many, cannot make the proxy do: hold memory with a
value it never finishes, hang on a stopped backend, spin at the descriptor
limit, flood the log, or run the bytes of a meta set's value as
commands.

Memory is the proxy's resident set (VmRSS in /proc/<pid>/status), CPU its
utime + stime (/proc/<pid>/stat). Under AddressSanitizer freed memory is
held in a quarantine and its shadow stays mapped, so the proxy started for
the memory test runs without the quarantine and the bound allows for the
shadow (an eighth of what was freed).
"""
import os
import signal
import socket
import time

import pytest

from harness import (Proxy, Wire, free_port, pool_yaml, proxy_stats, rss_kb, sigstop, stat_becomes,
                     wait_until)

VERSION = b"VERSION 1.6.18 ringproxy-0.1.0\r\n"
TIMEOUT = b"SERVER_ERROR backend timeout\r\n"


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the command: state is field 3, utime 14 and stime 15 (1-based)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_lines(proxy, needle=""):
    return [l for l in proxy.log().splitlines() if needle in l]


def closed(sock, timeout=10.0, expect=b""):
    """Does the peer close sock (EOF or reset) within timeout, having sent
    exactly `expect` first?"""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    return got == expect


# --- value_timeout and client_timeout ------------------------------------


def test_clients_stalled_inside_a_value_are_closed_and_their_memory_returned(
        cluster, rss_faithful):
    proxy = cluster.pool(cluster.memcached(1), value_timeout=1500)
    pid = proxy.proc.pid
    base = rss_kb(pid)
    n, size = 200, 1000000
    almost = b"x" * (size - 1000)          # all but the last 1000 bytes
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection(("127.0.0.1", proxy.port))
            s.sendall(b"set stalled%d 0 0 %d\r\n" % (i, size) + almost)
            socks.append(s)
        # The values are buffered whole: that is what the timeout protects.
        peak = wait_until(lambda: (lambda r: r if r > base + 150 * 1024 else None)(
            rss_kb(pid)), timeout=10, what="the values to be buffered")
        wait_until(lambda: proxy_stats(proxy.port)["closed_stalled_clients"] == str(n),
                   timeout=15, what="every stalled client to be closed")
        assert all(closed(s, 2) for s in socks)
        # This one only (another thread's closes show as of its last turn).
        stat_becomes(proxy.port, "curr_connections", 1)
        # Back near where it started: what is left is under a quarter of
        # what the stalled values took.
        wait_until(lambda: rss_kb(pid) < base + (peak - base) / 4, timeout=5,
                   what="the memory to be returned (rss %d kB, base %d kB, peak "
                   "%d kB)" % (rss_kb(pid), base, peak))
    finally:
        for s in socks:
            s.close()
    # One line, then one summary, not one line per client.
    # The summary is written once its second is over (the tick's next turn).
    wait_until(lambda: len(log_lines(proxy, "suppressed")) >= 1, timeout=5,
               what="the summary of the suppressed lines")
    assert len(log_lines(proxy, "value_timeout")) <= 2, log_lines(proxy, "value_timeout")
    with Wire(proxy.port) as w:
        assert w.call(b"get stalled0\r\n") == b"END\r\n"


def test_a_slow_sender_that_keeps_sending_is_not_closed(cluster):
    proxy = cluster.pool(cluster.memcached(1), value_timeout=600)
    data = bytes(range(256)) * 12                  # 3072 bytes, over 3 s
    with Wire(proxy.port) as w:
        w.send(b"set slow 0 0 %d\r\n" % len(data))
        for i in range(0, len(data), 128):
            w.send(data[i:i + 128])
            time.sleep(0.125)
        assert w.call(b"\r\n") == b"STORED\r\n"
        # a command line sent slowly is a command too
        for ch in b"get slow\r\n":
            w.send(bytes([ch]))
            time.sleep(0.15)
        assert w.read_reply() == b"VALUE slow 0 %d\r\n%s\r\nEND\r\n" % (len(data), data)
    assert proxy_stats(proxy.port)["closed_stalled_clients"] == "0"


def test_a_half_sent_command_line_is_closed_after_value_timeout(cluster):
    proxy = cluster.pool(cluster.memcached(1), value_timeout=500)
    with Wire(proxy.port) as w:
        w.send(b"get " + b"k" * 100)
        assert closed(w.sock, 5)
    stat_becomes(proxy.port, "closed_stalled_clients", 1)


def test_an_idle_client_is_closed_after_client_timeout_and_a_busy_one_is_not(cluster):
    proxy = cluster.pool(cluster.memcached(1), client_timeout=800)
    idle, busy = Wire(proxy.port), Wire(proxy.port)
    try:
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            assert busy.call(b"version\r\n") == VERSION
            time.sleep(0.2)
        assert closed(idle.sock, 1)
        assert busy.call(b"version\r\n") == VERSION
        stats = proxy_stats(proxy.port)
        assert stats["closed_idle_clients"] == "1"
        assert stats["closed_stalled_clients"] == "0"
    finally:
        idle.close()
        busy.close()


def test_clients_stay_open_when_client_timeout_is_left_at_its_default(cluster):
    proxy = cluster.pool(cluster.memcached(1))
    with Wire(proxy.port) as w:
        time.sleep(1.5)
        assert w.call(b"version\r\n") == VERSION
    assert proxy_stats(proxy.port)["closed_idle_clients"] == "0"


# --- the backend timeout -------------------------------------------------


def test_a_get_to_a_stopped_backend_times_out_by_default(cluster):
    mc = cluster.memcached(1)[0]
    proxy = cluster.pool([mc])              # no timeout: the default
    with Wire(proxy.port) as w:
        assert w.call(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
        sigstop(mc.proc)
        try:
            start = time.monotonic()
            assert w.call(b"get k\r\n") == TIMEOUT
            took = time.monotonic() - start
        finally:
            mc.proc.send_signal(signal.SIGCONT)
    assert 4.5 < took < 8, took
    stat_becomes(proxy.port, "backend:mc1:timeouts", 1)
    assert len(log_lines(proxy, "request timed out")) == 1


def test_timeout_minus_one_is_still_accepted_and_warned_about(cluster):
    proxy = cluster.pool(cluster.memcached(1), timeout=-1)
    with Wire(proxy.port) as w:
        assert w.call(b"version\r\n") == VERSION
    assert len(log_lines(proxy, "waits forever")) == 1


# --- the descriptor limit and the log ------------------------------------


class LimitedProxy(Proxy):
    """ringproxy started under `ulimit -n`."""

    def __init__(self, *args, nofile, **kw):
        super().__init__(*args, **kw)
        self.nofile = nofile

    def argv(self):
        return ["/bin/sh", "-c", 'ulimit -n %d && exec "$@"' % self.nofile,
                "ringproxy"] + super().argv()


def test_at_the_fd_limit_the_proxy_pauses_accepting_instead_of_spinning(cluster):
    mc = cluster.memcached(1)[0]
    port = free_port()
    # preconnect: every thread has its backend connection before the
    # descriptors run out, whichever thread a client lands on (-T N).
    proxy = LimitedProxy(cluster.workdir, pool_yaml("cache", port, [(mc.addr, 1, "mc1")],
                                                    preconnect=True),
                         port, nofile=64)
    cluster.started.append(proxy)
    proxy.start()
    pid = proxy.proc.pid
    stat_becomes(port, "backend:mc1:connects", proxy.threads)
    with Wire(proxy.port) as w:
        assert w.call(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]
    try:
        wait_until(lambda: "accept failed" in proxy.log(), what="the fd limit")
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(2)
        used = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        assert used < 0.15, "the proxy used %.0f%% of a CPU" % (used * 100)
        assert len(log_lines(proxy)) < 200
        # The clients it did accept are served meanwhile.
        socks[0].sendall(b"get k\r\n")
        socks[0].settimeout(5)
        assert socks[0].recv(100) == b"VALUE k 0 1\r\nx\r\nEND\r\n"
    finally:
        for s in socks:
            s.close()
    # With descriptors free again, it accepts again.
    def serves():
        try:
            with Wire(port, timeout=3) as w:
                return w.call(b"version\r\n") == VERSION
        except OSError:
            return False
    wait_until(serves, timeout=10, what="the proxy to accept again")
    assert int(proxy_stats(port)["accept_pauses"]) >= 1
    assert len(log_lines(proxy)) < 200


def test_a_flood_of_bad_bytes_from_many_clients_writes_a_few_log_lines(cluster):
    proxy = cluster.pool(cluster.memcached(1))
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            s.sendall(b"\x80")
            assert closed(s, 5, b"CLIENT_ERROR binary protocol is not supported\r\n")
    wait_until(lambda: log_lines(proxy, "suppressed"), timeout=5,
               what="the summary line")
    assert len(log_lines(proxy, "binary protocol")) <= 20
    assert proxy_stats(proxy.port)["closed_bad_clients"] == "300"


# --- meta commands -------------------------------------------------------


@pytest.fixture
def meta_proxy(cluster):
    return cluster.pool(cluster.memcached(2), item_size_max="2k")


def test_the_value_of_a_meta_set_is_never_run_as_a_command(meta_proxy):
    with Wire(meta_proxy.port) as w:
        assert w.call(b"set victim 0 0 1\r\nv\r\n") == b"STORED\r\n"
        # 13 bytes of value: "delete victim", then its "\r\n"
        assert w.call(b"ms foo 13 T0\r\ndelete victim\r\n") == b"HD\r\n"
        # an error after the length was read: the block is dropped, not run
        assert w.call(b"ms foo 13 zz\r\ndelete victim\r\n") == (
            b"CLIENT_ERROR invalid flag\r\n")
        assert w.call(b"get victim\r\n") == b"VALUE victim 0 1\r\nv\r\nEND\r\n"
        assert w.call(b"get foo\r\n") == (
            b"VALUE foo 0 13\r\ndelete victim\r\nEND\r\n")


def test_meta_commands_are_served_and_counted(meta_proxy):
    with Wire(meta_proxy.port) as w:
        assert w.call(b"ms foo 2\r\nab\r\n") == b"HD\r\n"
        assert w.call(b"mg foo v\r\n") == b"VA 2\r\n"
        assert w.read_exact(4) == b"ab\r\n"
        assert w.call(b"ma foo\r\n") == (
            b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        assert w.call(b"md foo q\r\nmn\r\n") == b"MN\r\n"
        assert w.call(b"me foo\r\n") == b"EN\r\n"
        # Pipelined after other commands: replies stay in order.
        assert w.call(b"version\r\nmg foo\r\nversion\r\n", replies=3) == (
            VERSION + b"EN\r\n" + VERSION)
        # Not meta: longer names are plain unknown commands.
        assert w.call(b"mget foo\r\n") == b"ERROR\r\n"
    stats = proxy_stats(meta_proxy.port)
    assert stats["cmd_meta"] == "7"
    assert stats["cmd_set"] == "1" and stats["cmd_delete"] == "1"
    assert stats["cmd_get"] == "2"
    assert stats["get_hits"] == "1" and stats["get_misses"] == "1"


@pytest.mark.parametrize("line,answer", [
    (b"ms foo", b"CLIENT_ERROR bad command line format\r\n"),
    (b"ms foo x13", b"CLIENT_ERROR bad command line format\r\n"),
    (b"ms foo -1", b"CLIENT_ERROR bad command line format\r\n"),
    (b"ms foo 99999999999999999999", b"CLIENT_ERROR bad command line format\r\n")])
def test_a_meta_set_whose_length_cannot_be_read_leaves_the_next_line_a_command(
        meta_proxy, line, answer):
    """memcached's own reading: no length, no data block to skip."""
    with Wire(meta_proxy.port) as w:
        assert w.call(line + b"\r\ndelete victim\r\n", replies=2) == (
            answer + b"NOT_FOUND\r\n")


def test_a_meta_set_over_item_size_max_is_refused_and_skipped(meta_proxy):
    with Wire(meta_proxy.port) as w:
        assert w.call(b"ms foo 1\r\nx\r\n") == b"HD\r\n"
        value = b"delete victim\r\n" * 200
        w.send(b"ms foo %d\r\n" % len(value) + value + b"\r\n")
        assert w.read_line() == b"SERVER_ERROR object too large for cache\r\n"
        # the old value is unlinked, as memcached does; the block was data
        assert w.call(b"mg foo v\r\n") == b"EN\r\n"
    assert proxy_stats(meta_proxy.port)["too_large"] == "1"
