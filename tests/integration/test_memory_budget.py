"""What a client cannot make the proxy hold: replies it never reads
(client_max_memory), noreply commands to a stopped server (the client's
commands in flight, and server_max_queue per backend connection), index
writes of flush_all while Redis is stopped (queue_max), and the shares of
one huge multi-get during a resize (no key silently a miss).

Memory is the proxy's resident set (VmRSS); the proxies here run without
ASan's quarantine (conftest.py, rss_faithful), so freed memory is reused.
"""
import signal
import socket
import threading
import time

import pytest
import redis

from harness import (fresh_stats, free_port, pool_yaml, proxy_stats, rss_kb, stats_until,
                     wait_until)
from test_migration import FakeProxy, pool_config, wait_phase, wait_ready
from test_migration import proxy_stats as mig_stats

MB = 1024


class Peak:
    """The highest VmRSS of pid, sampled every 20 ms while in the block."""

    def __init__(self, pid):
        self.pid, self.kb, self.stop = pid, rss_kb(pid), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                self.kb = max(self.kb, rss_kb(self.pid))
            except (OSError, AssertionError):
                return
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


# --- client_max_memory ---------------------------------------------------


def test_clients_that_never_read_are_closed_at_client_max_memory(cluster, rss_faithful):
    """4 clients ask for 500 gets of a 500 KB value each and never read
    (250 MB of replies each): each is closed once 16 MiB are held for it,
    and the proxy's memory stays near 4 x 16 MiB, not 1 GB."""
    # The replies of a closed client are still read off the backend (the
    # others' come after them): no backend timeout on a loaded machine.
    proxy = cluster.pool(cluster.memcached(1), client_max_memory="16m", timeout=60000)
    pid = proxy.proc.pid
    value = b"v" * 500000
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"set big 0 0 %d\r\n%s\r\n" % (len(value), value))
        s.settimeout(5)
        assert s.recv(100) == b"STORED\r\n"
    base = rss_kb(pid)
    socks = []
    try:
        with Peak(pid) as peak:
            for _ in range(4):
                s = socket.create_connection(("127.0.0.1", proxy.port))
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                s.sendall(b"get big\r\n" * 500)
                socks.append(s)
            wait_until(lambda: proxy_stats(proxy.port)["closed_slow_clients"] == "4",
                       timeout=90, what="the 4 clients to be closed")
        grew = (peak.kb - base) // MB
        print("client_max_memory 16m, 4 clients: rss %d MB -> peak %d MB (+%d MB)"
              % (base // MB, peak.kb // MB, grew))
        assert grew < 4 * 16 + 48, grew
        for s in socks:
            s.settimeout(10)
            try:
                while s.recv(1 << 20):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for s in socks:
            s.close()
    # A client that reads gets the same replies in full.
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"get big\r\n" * 40)
        want = (b"VALUE big 0 500000\r\n" + value + b"\r\nEND\r\n") * 40
        got = b""
        s.settimeout(10)
        while len(got) < len(want):
            chunk = s.recv(1 << 20)
            assert chunk
            got += chunk
        assert got == want
    assert proxy_stats(proxy.port)["closed_slow_clients"] == "4"


def test_a_client_that_reads_is_never_closed_however_much_it_asks_for(cluster):
    """The budget counts what is held now, not what went through: 100
    rounds of 3 pipelined multi-gets over 3 servers (4 MB of replies per
    get, 1.2 GB in all, waiting in requests and shares on the way) under a
    16 MiB budget: each get's reply alone is under it."""
    proxy = cluster.pool(cluster.memcached(3), client_max_memory="16m")
    keys = [b"m%d" % i for i in range(20)]
    value = b"w" * 200000
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.settimeout(30)
        for k in keys:
            s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value))
            assert s.recv(100) == b"STORED\r\n"
        line = b"get " + b" ".join(keys) + b"\r\n"
        one = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(value), value)
                       for k in keys) + b"END\r\n"
        for _ in range(100):
            s.sendall(line * 3)
            got = bytearray()
            while len(got) < 3 * len(one):
                chunk = s.recv(1 << 22)
                assert chunk, "closed by the proxy"
                got += chunk
            assert got == one * 3
    assert proxy_stats(proxy.port)["closed_slow_clients"] == "0"


def test_client_max_memory_is_checked_at_load(cluster, tmp_path):
    mc = cluster.memcached(1)[0]
    path = tmp_path / "bad.yml"
    path.write_text(pool_yaml("cache", free_port(), [(mc.addr, 1, "mc1")],
                              client_max_memory="1k", server_max_queue="x"))
    from harness import run_cli
    res = run_cli("-t", "-c", str(path))
    assert res.returncode != 0
    err = res.stderr if isinstance(res.stderr, str) else res.stderr.decode()
    assert "bad.yml:3:22: client_max_memory: expected a size" in err, err
    assert "server_max_queue: expected a size" in err, err


# --- noreply commands and server_max_queue -------------------------------


def flood(port, n, size, prefix, sent):
    """Send n noreply sets of size bytes; sent[prefix] counts what went."""
    value = b"n" * size
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(60)
            for i in range(n):
                s.sendall(b"set %s%d 0 0 %d noreply\r\n%s\r\n" % (prefix, i, size, value))
                sent[prefix] = sent.get(prefix, 0) + size
    except OSError:
        pass


@pytest.mark.parametrize("clients", [1, 8])
def test_noreply_sets_to_a_stopped_server_pause_their_senders(cluster, rss_faithful,
                                                              clients):
    """noreply sets to a stopped memcached (300 MB offered) are not buffered
    without bound: each client's commands in flight count against it, and
    the connection's unsent output against server_max_queue; senders pause,
    and once the server resumes every set lands."""
    mc = cluster.memcached(1, memory_mb=512)[0]
    proxy = cluster.pool([mc], timeout=60000, server_max_queue="4m")
    pid = proxy.proc.pid
    base = rss_kb(pid)
    sent, n, size = {}, 600 // clients, 500000
    mc.proc.send_signal(signal.SIGSTOP)
    threads = [threading.Thread(target=flood, args=(proxy.port, n, size, b"c%d-" % i, sent),
                                daemon=True) for i in range(clients)]
    try:
        with Peak(pid) as peak:
            for t in threads:
                t.start()
            time.sleep(4)
            offered = sum(sent.values())
            time.sleep(1)
            assert sum(sent.values()) == offered, "the senders were not paused"
        grew = (peak.kb - base) // MB
        print("noreply to a stopped server, %d clients: %d MB sent, rss %d MB -> "
              "peak %d MB (+%d MB)" % (clients, offered >> 20, base // MB,
                                       peak.kb // MB, grew))
        assert offered < 100 << 20
        assert grew < 48, grew
        if clients > 1:
            assert int(proxy_stats(proxy.port)["backend:mc1:queue_pauses"]) >= 1
    finally:
        mc.proc.send_signal(signal.SIGCONT)
    for t in threads:
        t.join(60)
    assert sum(sent.values()) == clients * n * size
    wait_until(lambda: (lambda st: st["cmd_set"] == str(clients * n) and
                        st["backend:mc1:inflight"] == "0")(proxy_stats(proxy.port)),
               timeout=30, what="every set to land")
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.settimeout(10)
        s.sendall(b"get c0-%d\r\n" % (n - 1))
        got = b""
        while not got.endswith(b"END\r\n"):
            got += s.recv(1 << 20)
        assert got.startswith(b"VALUE c0-%d 0 %d\r\n" % (n - 1, size)), got[:200]


# --- the index and flush_all ---------------------------------------------


def test_flush_all_noreply_while_redis_is_stopped_holds_one_flush(cluster, rss_faithful):
    mcs = cluster.memcached(2)
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    port = free_port()
    servers = [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]
    proxy = cluster.proxy(pool_yaml("cache", port, servers, hash="fnv1a_64",
                                    index={"redis": "127.0.0.1:%d" % rs.port,
                                           "queue_max": 1000},
                                    migration={"liveness": 0}), port=port)
    wait_ready(port)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        s.sendall(b"set before 0 0 1\r\nb\r\n")
        assert s.recv(100) == b"STORED\r\n"
    wait_until(lambda: proxy_stats(port)["index:commands"] != "0" and
               proxy_stats(port)["index:inflight"] == "0", what="the index write")
    pid = proxy.proc.pid
    base = rss_kb(pid)
    commands = int(fresh_stats(port)["index:commands"])
    rs.proc.send_signal(signal.SIGSTOP)
    try:
        n = 100000
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"flush_all noreply\r\n" * n)
            wait_until(lambda: (lambda st: st["cmd_flush"] == str(n) and
                                st["backend:mc1:inflight"] == "0" and
                                st["backend:mc2:inflight"] == "0")(proxy_stats(port)),
                       timeout=60, what="every flush_all to be answered")
            s.sendall(b"set after 0 0 1\r\na\r\n")
            s.settimeout(30)
            got = b""
            while not got.endswith(b"\r\n"):
                got += s.recv(100)
            assert got == b"STORED\r\n"
        st = proxy_stats(port)
        assert st["cmd_flush"] == str(n)
        grew = (rss_kb(pid) - base) // MB
        print("%d flush_all noreply, Redis stopped: rss %d MB -> %d MB, index "
              "commands +%d, queued %s, inflight %s" % (
                  n, base // MB, rss_kb(pid) // MB,
                  int(st["index:commands"]) - commands, st["index:queued"],
                  st["index:inflight"]))
        assert grew < 20, grew
        # One batch of UNLINKs sent (16 servers' points fit in few), one
        # flush pending, the store after it queued behind it.
        assert int(st["index:commands"]) - commands <= 2 * (2 * 160 // 256 + 1)
        assert int(st["index:queued"]) + int(st["index:inflight"]) <= 1000
    finally:
        rs.proc.send_signal(signal.SIGCONT)
    stats_until(port, lambda st: st["index:queued"] == "0" and st["index:inflight"] == "0",
                timeout=15, what="the index to drain")
    # The store after the flushes is indexed; the one before is not.
    members = set()
    for name in r.scan_iter(match="rp:cache:v:*"):
        members |= set(r.zrange(name, 0, -1))
    assert members == {b"after"}, members


# --- a multi-get with more shares than a request holds --------------------


def test_a_huge_multiget_during_a_resize_answers_every_hit(cluster):
    """1 -> 2 servers, held in "prepared" by a fake proxy: each key whose
    owner changes (about half) needs a share of its own. A get of 150,000
    keys (about 75,000 shares, more than 16-bit share indices held: it used
    to answer 4,466 false misses, then an error) answers every cached key,
    in order, and nothing else."""
    rs = cluster.redis(persist=True)
    r = redis.Redis(port=rs.port)
    mcs = cluster.memcached(2)
    for i, m in enumerate(mcs):
        m.ident = i + 1
    port = free_port()
    proxy = cluster.proxy(pool_config(port, mcs[:1], rs.port, rate=1), port=port)
    wait_ready(port)
    keys = [b"key:%d" % i for i in range(150000)]
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(30)
        for k in keys[-2000:]:
            s.sendall(b"set %s 0 0 1 noreply\r\nx\r\n" % k)
        s.sendall(b"version\r\n")
        got = b""
        while not got.endswith(b"\r\n"):
            got += s.recv(100)
    time.sleep(1.2)     # the heartbeat is in Redis
    with FakeProxy(r):
        proxy.write_config(pool_config(port, mcs, rs.port, rate=1))
        proxy.signal(signal.SIGHUP)
        wait_phase(port, "prepared")
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(60)
            s.sendall(b"get " + b" ".join(keys) + b"\r\n")
            got = b""
            while not got.endswith(b"END\r\n"):
                got += s.recv(1 << 20)
            want = b"".join(b"VALUE %s 0 1\r\nx\r\n" % k for k in keys[-2000:])
            assert got == want + b"END\r\n"
            assert mig_stats(port)["migration:client_commands"] != "0"
            # Fewer keys: every cached one is a hit.
            s.sendall(b"get " + b" ".join(keys[-20000:]) + b"\r\n")
            got = b""
            while not got.endswith(b"END\r\n"):
                got += s.recv(1 << 20)
            assert got.count(b"VALUE ") == 2000
        # Held there: the fake proxy acknowledges no further than this.
        assert mig_stats(port)["migration:phase"] in ("prepared", "switched")
