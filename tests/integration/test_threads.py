"""Event-loop threads (docs/ARCHITECTURE.md, "Threads"): `threads:` / -T.
A pool without an index is served by every thread, each with its own
listener (SO_REUSEPORT), clients and backend connections; its counters are
summed over the threads; a reload reaches every thread; SIGTERM stops them
all. An indexed pool is served by every thread too; its index writer and
migration stay on the home thread, and during a resize the other threads
hand its commands to the home thread."""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import redis

import pytest

from harness import (HOME_LINES_LAG, RINGPROXY, Wire, admin_get, admin_json, free_port,
                     fresh_stats, key_per_server,
                     locate, pool_yaml, proxy_stats, sigstop, stats_port_json, stats_until,
                     wait_until)

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


class McConns:
    """memcached's open connections (curr_connections), asked on one
    connection kept open, so that no connection of its own comes and goes
    between two answers."""

    def __init__(self, mc):
        self.w = Wire(mc.port)

    def __call__(self):
        out = self.w.call(b"stats\r\n").decode()
        return int(re.search(r"STAT curr_connections (\d+)", out).group(1))

    def close(self):
        self.w.close()


def one_client_per_thread(port, mc, key):
    """Two connections to the proxy (-T 2) served by different threads.
    Each thread opens its own connection to mc on its first request, so a
    client whose get makes mc count one connection more is on a thread not
    seen yet."""
    count = McConns(mc)
    base, found, spare = count(), [], []
    try:
        while len(found) < 2 and len(spare) < 64:
            w = Wire(port)
            assert w.call(b"get %s\r\n" % key.encode()) == b"END\r\n"
            (found if count() > base + len(found) else spare).append(w)
    finally:
        count.close()
        for w in spare:
            w.close()
    assert len(found) == 2, "the kernel gave 64 connections to one thread"
    return found


@pytest.mark.parametrize("served_by", [0, 1])
def test_a_killed_backend_is_down_whichever_thread_found_it(cluster, served_by):
    # Only the thread of clients[served_by] ever uses mc2 (home or worker,
    # whichever it is: one of the two runs is the worker); yet every
    # reader, on whichever thread answers it, shows mc2 down
    # (docs/ARCHITECTURE.md "Threads": merged over the threads).
    mc1, mc2 = cluster.memcached(2)
    port, sport, aport = free_port(), free_port(), free_port()
    proxy = cluster.proxy(conf(port, [mc1, mc2]), port=port, stats_port=sport,
                          admin_port=aport, extra=["-T", "2"])
    key = key_per_server(proxy.conf_path)
    clients = one_client_per_thread(port, mc1, key["mc1"])
    # The stats port sums both threads' connections to mc1.
    wait_until(lambda: stats_port_json(sport)["cache"]["mc1"]["server_connections"] == 2,
               what="server_connections summed over both threads")
    mc2.kill()
    assert clients[served_by].call(b"get %s\r\n" % key["mc2"].encode()).startswith(
        b"SERVER_ERROR ")
    for w in clients:
        wait_until(lambda: stats_of(w)["backend:mc2:state"] == "down",
                   what="mc2 down in the stats of both threads")
    assert admin_get(aport, "/healthz")[0] == 200     # mc1 serves
    mc1.kill()      # both threads are connected to it: both find it gone
    code, _, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(
        admin_get(aport, "/healthz")), what="/healthz to say 503")
    assert "pool cache: no backend is up" in body
    servers = admin_json(aport, "/ring")["pools"][0]["servers"]
    assert [s["state"] for s in servers] == ["down", "down"]
    assert stats_port_json(sport)["cache"]["mc1"]["server_connections"] == 0
    for w in clients:
        w.close()


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


def indexed(port, mcs, rport, **kw):
    settings = dict(index={"redis": "127.0.0.1:%d" % rport, "sweep_rate": 0})
    settings.update(kw)
    return pool_yaml("indexed", port, [(m.addr, 1, "mc%d" % (i + 1))
                                       for i, m in enumerate(mcs)], **settings)


def wait_serving(port):
    wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
               what="the indexed pool to serve")


def indexed_proxy(cluster, nmcs=2, **kw):
    """An indexed pool on 2 threads, serving: (port, memcached list, Redis
    client, proxy)."""
    mcs = cluster.memcached(nmcs)
    rds = cluster.redis()
    port = free_port()
    proxy = start(cluster, indexed(port, mcs, rds.port, **kw), port)
    wait_serving(port)
    return port, mcs, redis.Redis(port=rds.port), proxy


def index_members(r, prefix="rp:indexed"):
    return {m.decode() for name in r.scan_iter(match=prefix + ":v:*", count=1000)
            for m in r.zrange(name, 0, -1)}


def test_an_indexed_pool_is_served_by_every_thread(cluster):
    """Each thread serves its share of an indexed pool's clients on its own
    backend connections (docs/ARCHITECTURE.md, "Threads: indexed pools"):
    nothing is handed to the home thread while no key moves, every key a
    request worker stored reaches the index, and `stats` on any connection
    shows the index and migration lines of the home thread."""
    port, mcs, r, _ = indexed_proxy(cluster)
    keys = ["i%d" % i for i in range(300)]
    fill_through(port, keys)
    # The other thread's counts show as of the end of its last loop turn,
    # which may come after its last reply (docs/ARCHITECTURE.md, "Threads").
    st = stats_until(port, lambda s: int(s["cmd_set"]) == 300 and int(s["get_hits"]) == 300,
                     what="both threads' counts of the fill")
    # Both threads served: each opened its own connection to each backend.
    assert int(st["backend:mc1:connects"]) == 2 and int(st["backend:mc2:connects"]) == 2
    assert int(st["threads:forwarded"]) == 0
    wait_until(lambda: index_members(r) == set(keys), what="every key indexed")
    wires = [Wire(port) for _ in range(CONNS)]
    try:
        for w in wires:
            got = stats_of(w)
            assert got["index:state"] == "ready" and got["migration:state"] == "idle", got
    finally:
        for w in wires:
            w.close()


def test_a_resize_through_every_thread_loses_nothing(cluster):
    """A 2 -> 3 resize while 16 connections (on both threads) write and read
    their own keys: during it the request workers hand every command to the
    home thread (threads:forwarded grows), each read sees its writer's last
    value, multi-gets included, and afterwards every key is on the server
    the new ring names, and only there."""
    mcs = cluster.memcached(3)
    rds = cluster.redis()
    port = free_port()
    proxy = start(cluster, indexed(port, mcs[:2], rds.port,
                                   migration={"rate": 2000}), port)
    wait_serving(port)
    per = 40
    keys = [["w%d-%d" % (c, i) for i in range(per)] for c in range(CONNS)]
    fill_through(port, [k for ks in keys for k in ks])
    stop = threading.Event()
    errors = []

    def writer(c):
        w = Wire(port)
        model = {k: b"v-" + k.encode() for k in keys[c]}
        n = 0
        try:
            while not stop.is_set():
                k = keys[c][n % per]
                v = b"%s-%d" % (k.encode(), n)
                if w.call(b"set %s 0 0 %d\r\n%s\r\n" % (k.encode(), len(v), v)) != b"STORED\r\n":
                    errors.append(("set", k))
                model[k] = v
                k2 = keys[c][(n * 7) % per]
                got = w.call(b"get %s\r\n" % k2.encode())
                if got != b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k2.encode(), len(model[k2]),
                                                                   model[k2]):
                    errors.append(("get", k2, got[:80]))
                if n % 10 == 0:
                    some = keys[c][n % 5::5]
                    got = w.call(b"get %s\r\n" % " ".join(some).encode())
                    want = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (x.encode(), len(model[x]),
                                                                    model[x]) for x in some)
                    if got != want + b"END\r\n":
                        errors.append(("mget", some[0], got[:80]))
                n += 1
        finally:
            w.close()
    threads = [threading.Thread(target=writer, args=(c,)) for c in range(CONNS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: int(proxy_stats(port)["cmd_set"]) > CONNS * per + 200,
                   what="the writers to run")
        proxy.write_config(indexed(port, mcs, rds.port, migration={"rate": 2000}))
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: int(proxy_stats(port).get("threads:forwarded", 0)) > 0,
                   what="commands handed to the home thread")
        wait_until(lambda: proxy_stats(port).get("migration:state") == "idle" and
                   proxy_stats(port).get("servers") == "3", timeout=60,
                   what="the resize to end")
        # Back to serving on every thread: while the writers go on, nothing
        # more is handed over. The base count is fresh: a stale one (taken
        # before the last forwarded commands landed) would never match.
        base = fresh_stats(port)
        time.sleep(HOME_LINES_LAG)
        now = fresh_stats(port)
        assert int(now["cmd_set"]) > int(base["cmd_set"]), "the writers stopped"
        assert now["threads:forwarded"] == base["threads:forwarded"], (base, now)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == [], errors[:10]
    everything = [k for ks in keys for k in ks]
    where = locate(proxy.conf_path, everything, pool="indexed")
    by_name = {"mc%d" % (i + 1): m for i, m in enumerate(mcs)}
    for k in everything:
        for name, m in by_name.items():
            assert held_by(m, k) == (where[k] == name), (k, name, where[k])


def test_flush_all_through_a_request_worker_empties_the_index_before_it_answers(cluster):
    """flush_all on any thread's connection runs on the home thread, which
    empties the index before the answer: a key stored after it (on either
    thread) is indexed, and none stored before it is."""
    port, mcs, r, _ = indexed_proxy(cluster)
    fill_through(port, ["old%d" % i for i in range(100)])
    wait_until(lambda: len(index_members(r)) == 100, what="the first keys indexed")
    wires = [Wire(port) for _ in range(CONNS)]
    try:
        for i, w in enumerate(wires):
            assert w.call(b"flush_all\r\n") == b"OK\r\n"
            k = b"new%d" % i
            assert w.call(b"set %s 0 0 1\r\nx\r\n" % k) == b"STORED\r\n"
    finally:
        for w in wires:
            w.close()
    # Each flush emptied the index before the next connection's set: only
    # the last key stored is left.
    wait_until(lambda: index_members(r) == {"new%d" % (CONNS - 1)},
               what="the index to hold only what was stored after the last flush")


def test_every_thread_is_fenced_with_its_home_thread(cluster):
    """With Redis frozen past half the liveness, the request workers refuse
    the pool's commands as the home thread does (the fence deadline they
    read: docs/ARCHITECTURE.md, I6), and serve again once it answers."""
    mcs = cluster.memcached(2)
    rds = cluster.redis()
    port = free_port()
    start(cluster, indexed(port, mcs, rds.port, migration={"liveness": 2000}), port)
    wait_serving(port)
    wires = [Wire(port) for _ in range(CONNS)]
    try:
        for w in wires:
            assert w.call(b"set k 0 0 1\r\nx\r\n") == b"STORED\r\n"
        sigstop(rds.proc)
        try:
            wait_until(lambda: all(w.call(b"get k\r\n").startswith(
                b"SERVER_ERROR ringproxy fenced") for w in wires), timeout=10,
                what="every connection fenced")
        finally:
            rds.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: all(w.call(b"get k\r\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"
                               for w in wires), timeout=10, what="every connection served")
    finally:
        for w in wires:
            w.close()


def test_every_thread_shows_the_index_health_the_home_thread_answered(cluster):
    """The index's state and health, like the migration's phase, reach the
    other threads' `stats` at the end of the home thread's loop turn that
    changed them (pool_hub_turn), not at its next tick: once /healthz (the
    home thread) has said Redis refuses writes, or takes them again, no
    `stats` on either thread says otherwise."""
    mcs = cluster.memcached(1)
    rds = cluster.redis()
    r = redis.Redis(port=rds.port)
    port, aport = free_port(), free_port()
    cluster.proxy(indexed(port, mcs, rds.port), port=port, admin_port=aport,
                  extra=["-T", "2"])
    wait_serving(port)
    store = Wire(port)
    try:
        for n, (want, redis_setting) in enumerate((("refused_oom", r.info("memory")[
                "used_memory"] + 256 * 1024), ("ok", 0))):
            r.config_set("maxmemory-policy", "noeviction")
            r.config_set("maxmemory", redis_setting)
            if want == "refused_oom":
                with pytest.raises(redis.exceptions.ResponseError, match="^OOM"):
                    for i in range(100000):
                        r.set("fill:%d" % i, b"x" * 1024)
            said, after = False, 0
            deadline = time.monotonic() + 30
            while after < 40:
                assert time.monotonic() < deadline, "/healthz never said %s" % want
                store.call(b"set h%d-%d 0 0 1\r\nv\r\n" % (n, after))
                said = said or want in admin_get(aport, "/healthz")[2]
                # A new connection: either thread may answer.
                got = proxy_stats(port)["index:health"]
                if said:
                    assert got == want, "stats said %s after /healthz said %s" % (got, want)
                    after += 1
    finally:
        store.close()


def test_the_threads_link_serves_no_other_process(cluster):
    """The link a request worker reaches the home thread by is a unix socket
    in the abstract namespace, which has no file mode: another process that
    connects is closed unserved (it would be a client outside
    client_connections and client_timeout)."""
    mcs = cluster.memcached(1)
    rds = cluster.redis()
    port = free_port()
    proxy = start(cluster, indexed(port, mcs, rds.port), port)
    wait_serving(port)
    with open("/proc/net/unix") as f:
        names = [line.split()[-1] for line in f
                 if line.split()[-1].startswith("@ringproxy.%d." % proxy.proc.pid)]
    assert names, "no link socket"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect("\0" + names[0][1:])
        try:
            s.sendall(b"version\r\n")
            got = s.recv(100)
        except (BrokenPipeError, ConnectionResetError):
            got = b""       # closed before the command, or over it unread
        assert got == b"", got
    finally:
        s.close()
    wait_until(lambda: "refused a connection to the threads' link" in proxy.log(),
               what="the refusal logged")
    assert Wire(port).call(b"version\r\n").startswith(b"VERSION ")


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
    assert "-T" not in proxy.argv() and "2 threads" in proxy.log()
    proxy.stop()
    # Neither -T nor threads: one thread per online core, at most 8.
    cores = min(os.cpu_count(), 8)
    proxy = cluster.proxy(conf(port, mcs), port=port, extra=["-T", "default"])
    assert "-T" not in proxy.argv()
    assert "%d thread%s" % (cores, "s" if cores > 1 else "") in proxy.log()
    bad = tmp_path / "bad.yml"
    bad.write_text("threads: 65\n" + conf(port, mcs))
    r = subprocess.run([RINGPROXY, "-t", "-c", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "threads: expected an integer from 0 to 64, got '65'" in r.stdout + r.stderr
    r = subprocess.run([RINGPROXY, "-T", "x", "-c", str(bad)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "-T takes a thread count" in r.stderr
