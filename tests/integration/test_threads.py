"""Event-loop threads (docs/ARCHITECTURE.md, "Threads"): `threads:` / -T.
A pool without an index is served by every thread, each with its own
listener (SO_REUSEPORT), clients and backend connections; its counters are
summed over the threads; a reload reaches every thread; SIGTERM stops them
all. An indexed pool is served by the home thread alone."""
import re
import signal
import socket
import subprocess

from harness import (RINGPROXY, Wire, admin_get, admin_json, free_port, locate,
                     pool_yaml, proxy_stats, stats_port_json, wait_until)

CONNS = 16


def conf(port, mcs, **kw):
    return pool_yaml("cache", port, [(m.addr, 1, "mc%d" % (i + 1))
                                     for i, m in enumerate(mcs)], **kw)


def start(cluster, text, port, threads="2"):
    return cluster.proxy(text, port=port, extra=["-T", threads])


def fill_through(port, keys):
    """Store each key through one of CONNS connections (spread over the
    threads by the kernel), reading each value back on another."""
    wires = [Wire(port) for _ in range(CONNS)]
    try:
        for i, k in enumerate(keys):
            v = b"v-" + k.encode()
            w = wires[i % CONNS]
            assert w.call(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v)) == \
                b"STORED\r\n"
            r = wires[(i + 1) % CONNS]
            assert r.call(b"get %s\r\n" % k.encode()) == \
                b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k.encode(), len(v), v)
    finally:
        for w in wires:
            w.close()


def held_by(mc, key):
    s = socket.create_connection(("127.0.0.1", mc.port), timeout=10)
    try:
        s.sendall(b"get %s\r\n" % key.encode())
        buf = b""
        while not buf.endswith(b"END\r\n"):
            buf += s.recv(65536)
        return buf.startswith(b"VALUE ")
    finally:
        s.close()


def test_threads_share_a_plain_pool_and_sum_their_counters(cluster):
    mcs = cluster.memcached(2)
    port = free_port()
    proxy = start(cluster, conf(port, mcs), port)
    assert "2 threads" in proxy.log()
    keys = ["t%d" % i for i in range(200)]
    fill_through(port, keys)

    def summed():
        st = proxy_stats(port)
        # Each thread has its own connection to each backend: 2 each, and
        # the counters of both threads in one answer (a tick late at most).
        return (int(st["backend:mc1:connects"]) == 2 and
                int(st["backend:mc2:connects"]) == 2 and
                int(st["cmd_set"]) == len(keys) and
                int(st["cmd_get"]) == len(keys) and
                int(st["get_hits"]) == len(keys) and
                int(st["total_connections"]) >= CONNS)
    wait_until(summed, what="counters summed over both threads")
    where = locate(proxy.conf_path, keys)
    for k in keys:
        assert held_by(mcs[int(where[k][2:]) - 1], k)


def metric(aport, name):
    _, _, body = admin_get(aport, "/metrics")
    m = re.search(r'^%s\{pool="cache"\} (\S+)$' % name, body, re.M)
    return float(m.group(1))


def test_stats_port_and_status_json_sum_the_threads(cluster):
    mcs = cluster.memcached(2)
    port, sport, aport = free_port(), free_port(), free_port()
    proxy = cluster.proxy(conf(port, mcs), port=port, stats_port=sport,
                          admin_port=aport, extra=["-T", "2"])
    keys = ["s%d" % i for i in range(200)]
    fill_through(port, keys)    # a set and a get of each key: 400 requests

    def summed():
        pool = stats_port_json(sport)["cache"]
        page = admin_json(aport, "/status.json")["pools"][0]
        return (sum(pool[s]["requests"] for s in ("mc1", "mc2")) == 2 * len(keys) and
                page["counters"]["cmd_set"] == len(keys) and
                page["counters"]["get_hits"] == len(keys) and
                sum(sv["counters"]["requests"] for sv in page["servers"]) ==
                2 * len(keys))
    wait_until(summed, what="the stats port and /status.json summed over both threads")
    assert int(proxy_stats(port)["backend:mc1:connects"]) == 2    # both threads served


def test_stats_reset_holds_on_every_thread_and_metrics_never_go_down(cluster):
    mcs = cluster.memcached(2)
    port, aport = free_port(), free_port()
    cluster.proxy(conf(port, mcs), port=port, admin_port=aport, extra=["-T", "2"])
    fill_through(port, ["a%d" % i for i in range(100)])
    wait_until(lambda: metric(aport, "ringproxy_pool_cmd_set_total") == 100,
               what="100 sets counted")
    w = Wire(port)
    assert w.call(b"stats reset\r\n") == b"RESET\r\n"
    w.close()
    fill_through(port, ["b%d" % i for i in range(32)])

    def every_connection_sees_32():
        # CONNS connections land on both threads; each one's view subtracts
        # the one base the reset recorded, whichever thread took it.
        wires = [Wire(port) for _ in range(CONNS)]
        try:
            return all(int(stats_of(x)["cmd_set"]) == 32 for x in wires)
        finally:
            for x in wires:
                x.close()
    wait_until(every_connection_sees_32, what="the reset's base on every thread")
    assert metric(aport, "ringproxy_pool_cmd_set_total") == 132


def stats_of(w):
    """`stats` on an open connection (so on the thread that serves it)."""
    out = w.call(b"stats\r\n").decode()
    return dict(line.split(" ", 2)[1:] for line in out.split("\r\n")
                if line.startswith("STAT "))


def test_a_reload_reaches_every_thread(cluster):
    mcs = cluster.memcached(3)
    port = free_port()
    proxy = start(cluster, conf(port, mcs[:2]), port)
    proxy.write_config(conf(port, mcs))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "applied" in proxy.log(), what="the reload")
    keys = ["r%d" % i for i in range(300)]
    fill_through(port, keys)
    where = locate(proxy.conf_path, keys)
    assert set(where.values()) == {"mc1", "mc2", "mc3"}
    # Every key is where the new ring puts it, whichever thread stored it.
    for k in keys:
        assert held_by(mcs[int(where[k][2:]) - 1], k), k
    st = proxy_stats(port)
    assert st["servers"] == "3"


def test_an_indexed_pool_is_served_by_the_home_thread(cluster):
    mcs = cluster.memcached(2)
    rds = cluster.redis()
    port, iport = free_port(), free_port()
    text = conf(port, mcs) + pool_yaml(
        "indexed", iport, [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)],
        index={"redis": "127.0.0.1:%d" % rds.port})
    proxy = start(cluster, text, port)
    wait_until(lambda: proxy_stats(iport).get("migration:state") == "idle",
               what="the indexed pool to serve")
    fill_through(iport, ["i%d" % i for i in range(100)])
    st = proxy_stats(iport)
    # One thread: at most one connection per backend (server_connections: 1),
    # where the plain pool next to it has one per thread.
    assert int(st["backend:mc1:connects"]) <= 1 and int(st["backend:mc2:connects"]) <= 1
    assert int(st["cmd_set"]) == 100 and int(st["get_hits"]) == 100


def test_sigterm_stops_every_thread_and_exits_0(cluster):
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = start(cluster, conf(port, mcs), port, threads="3")
    wires = [Wire(port) for _ in range(CONNS)]
    for w in wires:
        assert w.call(b"version\r\n").startswith(b"VERSION ")
    assert proxy.stop() == 0
    for w in wires:
        assert w.closed_by_peer()
        w.close()


def test_thread_count_from_the_file_and_its_bounds(cluster, tmp_path):
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = cluster.proxy("threads: 2\n" + conf(port, mcs), port=port)
    if "-T" not in proxy.argv():
        assert "2 threads" in proxy.log()
    bad = tmp_path / "bad.yml"
    bad.write_text("threads: 65\n" + conf(port, mcs))
    r = subprocess.run([RINGPROXY, "-t", "-c", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "threads: expected an integer from 0 to 64, got '65'" in r.stdout + r.stderr
    r = subprocess.run([RINGPROXY, "-T", "x", "-c", str(bad)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "-T takes a thread count" in r.stderr
