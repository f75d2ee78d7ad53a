"""An indexed pool on several threads under attack (docs/ARCHITECTURE.md,
"Threads: indexed pools"): during a resize the request workers hand every
command to the home thread through one link connection shared by their
clients, so nothing one client does may make the home thread close that
link under the others."""
import random
import re
import signal
import socket
import threading

import pytest
import redis

from harness import (Wire, admin_get, free_port, locate, pool_yaml, proxy_stats,
                     recv_to_eof, sigstop, stats_port_json, wait_until)
from test_migration import FakeProxy, wait_phase
from test_sweep import mc_stat

CONNS = 16      # connections land on both threads (SO_REUSEPORT)


def indexed(port, mcs, rport, **kw):
    settings = dict(index={"redis": "127.0.0.1:%d" % rport, "sweep_rate": 0},
                    migration={"rate": 1})
    settings.update(kw)
    return pool_yaml("indexed", port, [(m.addr, 1, "mc%d" % (i + 1))
                                       for i, m in enumerate(mcs)], **settings)


def start_held(cluster, tmp_path, nservers=3, threads="2", ports=None, **kw):
    """A proxy on `threads` threads over nservers - 1 memcached, then
    resized to nservers and held in `prepared` by a fake proxy of the fleet
    (test_migration.FakeProxy): every request worker forwards. Returns
    (proxy, mcs, redis client, fake proxy entered, where-before, where-after)
    for the caller to locate keys with."""
    mcs = cluster.memcached(nservers)
    rds = cluster.redis()
    r = redis.Redis(port=rds.port)
    port = free_port()
    proxy = cluster.proxy(indexed(port, mcs[:-1], rds.port, **kw), port=port,
                          extra=["-T", threads], **(ports or {}))
    wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
               what="the indexed pool to serve")
    wait_until(lambda: any(not k.startswith((b"fake", b"sweeper:"))
                           for k in r.hgetall("rp:indexed:proxies")),
               what="the proxy's heartbeat in Redis")
    fake = FakeProxy(r, "rp:indexed").__enter__()
    after = tmp_path / "after.yml"
    after.write_text(indexed(port, mcs, rds.port, **kw))
    proxy.write_config(after.read_text())
    proxy.signal(signal.SIGHUP)
    wait_phase(port, "prepared")
    return proxy, mcs, r, fake, str(after)


def stable_key(before_conf, after_conf, server, prefix):
    """A key the rings before and after the resize both place on server."""
    keys = ["%s-%d" % (prefix, i) for i in range(400)]
    b, a = locate(before_conf, keys), locate(after_conf, keys)
    return next(k for k in keys if b[k] == server and a[k] == server)


def test_a_client_over_its_budget_never_closes_the_link_of_the_others(cluster, tmp_path):
    """A reply larger than client_max_memory closes the client that asked
    for it, never the link its request worker shares with its other clients:
    clients waiting on a stalled server through the link get their values
    once it resumes, not an error because another client asked for 3.6 MB."""
    proxy, mcs, _, fake, after = start_held(cluster, tmp_path,
                                            client_max_memory="2m", timeout=20000,
                                            server_connections=1)
    try:
        before = tmp_path / "before.yml"
        before.write_text(proxy_conf_without(proxy, mcs[-1]))
        slow = stable_key(str(before), after, "mc2", "slow")
        big = stable_key(str(before), after, "mc1", "big")
        value = b"b" * 900000
        with Wire(proxy.port) as w:
            assert w.call(b"set %s 0 0 1\r\ns\r\n" % slow.encode()) == b"STORED\r\n"
            assert w.call(b"set %s 0 0 %d\r\n%s\r\n" % (big.encode(), len(value), value)) \
                == b"STORED\r\n"
        victims = [Wire(proxy.port, timeout=60) for _ in range(CONNS)]
        attackers = [Wire(proxy.port, timeout=60) for _ in range(CONNS)]
        sigstop(mcs[1].proc)
        try:
            for v in victims:
                v.send(b"get %s\r\n" % slow.encode())
            for a in attackers:
                a.send(b"get %s %s %s %s\r\n" % ((big.encode(),) * 4))
            # An attacker's gets reached mc1 (through the link or not). Not
            # necessarily all: the home thread stops reading a link once
            # it holds past client_max_memory for it, and on the link the
            # victims' replies, stalled on mc2, come before the attackers',
            # so attackers sent after that wait for mc2 too (seen when the
            # worker wrote the gets to the link over several loop turns).
            wait_until(lambda: mc_stat(mcs[0], "get_hits") >= 4,
                       what="a big get answered by mc1")
        finally:
            mcs[1].proc.send_signal(signal.SIGCONT)
        for v in victims:
            assert v.read_reply() == b"VALUE %s 0 1\r\ns\r\nEND\r\n" % slow.encode()
            v.close()
        for a in attackers:
            a.close()
        assert "closing thread-link" not in proxy.log()
    finally:
        fake.__exit__()


def proxy_conf_without(proxy, mc):
    """The proxy's file before the resize: its servers less mc (the last)."""
    with open(proxy.conf_path) as f:
        text = f.read()
    return "".join(line + "\n" for line in text.split("\n")
                   if line and mc.addr not in line)


def test_a_store_pipelined_after_flush_all_survives_it_on_every_thread(cluster):
    """flush_all on a request worker runs on the home thread, on its own
    backend connections (docs/ARCHITECTURE.md, "Threads: indexed pools"),
    while the worker routes the next command itself: a set pipelined
    right after the flush must not reach the server first and be wiped by
    it, as on one thread, where both go down one connection in order."""
    mcs = cluster.memcached(2)
    rds = cluster.redis()
    port = free_port()
    cluster.proxy(indexed(port, mcs, rds.port), port=port, extra=["-T", "2"])
    wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
               what="the indexed pool to serve")
    for round_ in range(4):
        for i in range(CONNS):
            k = b"f%d-%d" % (round_, i)
            hit = b"VALUE %s 0 1\r\nx\r\nEND\r\n" % k
            with Wire(port) as w:
                got = w.call(b"flush_all\r\nset %s 0 0 1\r\nx\r\nget %s\r\n" % (k, k),
                             replies=3)
                assert got == b"OK\r\nSTORED\r\n" + hit, got
                # The flush answered: it is done; the set came after it.
                assert w.call(b"get %s\r\n" % k) == hit


class Pipeliner:
    """One connection that sends deep pipelines (hundreds of commands in one
    write: text and meta, noreply and quiet ones, multi-gets) on keys of its
    own, and checks every reply against a model of one memcached."""

    def __init__(self, port, n, seed):
        self.port, self.n = port, n
        self.rng = random.Random(seed)
        self.keys = ["p%d-%d" % (n, i) for i in range(24)]
        self.counters = ["c%d-%d" % (n, i) for i in range(4)]
        self.model = {}
        self.rounds = 0

    # The stores: the line (key, length, value) and its reply (None: none).
    STORES = ((b"set %s 0 0 %d\r\n%s\r\n", b"STORED\r\n"),
              (b"set %s 0 0 %d noreply\r\n%s\r\n", None),
              (b"ms %s %d T0\r\n%s\r\n", b"HD\r\n"),
              (b"ms %s %d q\r\n%s\r\n", None))

    def step(self, out, want):
        rng, m = self.rng, self.model
        k = rng.choice(self.keys)
        kb = k.encode()
        op = rng.randrange(16)
        v = b"%d.%d" % (self.rounds, rng.randrange(10 ** 6))
        if op < len(self.STORES):
            line, reply = self.STORES[op]
            out.append(line % (kb, len(v), v))
            want.extend([reply] if reply else [])
            m[k] = v
        elif op == 4:
            out.append(b"get %s\r\n" % kb)
            want.append(self.value(k) + b"END\r\n")
        elif op == 5:
            out.append(b"append %s 0 0 1\r\n+\r\n" % kb)
            want.append(b"STORED\r\n" if k in m else b"NOT_STORED\r\n")
            if k in m:
                m[k] += b"+"
        elif op == 6:
            out.append(b"delete %s\r\n" % kb)
            want.append(b"DELETED\r\n" if m.pop(k, None) is not None else b"NOT_FOUND\r\n")
        elif op == 7:
            out.append(b"delete %s noreply\r\n" % kb)
            m.pop(k, None)
        elif op == 8:
            some = rng.sample(self.keys, 6)
            out.append(b"get %s\r\n" % b" ".join(x.encode() for x in some))
            want.append(b"".join(self.value(x) for x in some) + b"END\r\n")
        elif op in (9, 14):
            self.count(op == 14, out, want)
        elif op == 10:
            c = rng.choice(self.counters)
            out.append(b"set %s 0 0 1 noreply\r\n7\r\n" % c.encode())
            m[c] = b"7"
        elif op == 11:
            out.append(b"mg %s v\r\n" % kb)
            want.append(b"VA %d\r\n%s\r\n" % (len(m[k]), m[k]) if k in m else b"EN\r\n")
        elif op == 12:
            out.append(b"mg %s v q\r\n" % kb)
            if k in m:
                want.append(b"VA %d\r\n%s\r\n" % (len(m[k]), m[k]))
        elif op == 13:
            out.append(b"md %s q\r\n" % kb)
            if m.pop(k, None) is None:
                want.append(b"NF\r\n")
        else:
            out.append(b"mn\r\n")
            want.append(b"MN\r\n")

    def count(self, meta, out, want):
        """incr by 3, or ma (by 1) with its value."""
        c = self.rng.choice(self.counters)
        m = self.model
        out.append(b"ma %s v\r\n" % c.encode() if meta else b"incr %s 3\r\n" % c.encode())
        if c not in m:
            want.append(b"NF\r\n" if meta else b"NOT_FOUND\r\n")
            return
        m[c] = b"%d" % (int(m[c]) + (1 if meta else 3))
        want.append(b"VA %d\r\n%s\r\n" % (len(m[c]), m[c]) if meta else m[c] + b"\r\n")

    def value(self, k):
        v = self.model.get(k)
        return b"" if v is None else b"VALUE %s 0 %d\r\n%s\r\n" % (k.encode(), len(v), v)

    def run(self, stop, errors):
        with Wire(self.port, timeout=60) as w:
            # A clean start: the keys of an earlier run are gone.
            w.send(b"".join(b"delete %s noreply\r\n" % k.encode()
                            for k in self.keys + self.counters) + b"mn\r\n")
            assert w.read_line() == b"MN\r\n"
            while not stop.is_set():
                out, want = [], []
                for _ in range(self.rng.randrange(100, 400)):
                    self.step(out, want)
                out.append(b"mn\r\n")
                want.append(b"MN\r\n")
                w.send(b"".join(out))
                expect = b"".join(want)
                got = w.read_exact(len(expect))
                if got != expect:
                    errors.append((self.n, self.rounds, first_difference(got, expect)))
                    return
                self.rounds += 1


def first_difference(got, want):
    i = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]),
             min(len(got), len(want)))
    return (got[max(0, i - 60):i + 60], want[max(0, i - 60):i + 60])


def test_deep_pipelines_see_their_own_writes_across_every_switch(cluster, tmp_path):
    """16 connections (on both threads) pipeline hundreds of commands per
    write on their own keys while the pool goes direct -> forward (the fleet
    held in `prepared`, then `switched`, then `moving` with the mover held
    back) -> direct again once the resize ends: every reply comes in order
    and every read sees the connection's own last write, text and meta,
    noreply and quiet commands included."""
    mcs = cluster.memcached(3)
    rds = cluster.redis()
    r = redis.Redis(port=rds.port)
    port = free_port()
    proxy = cluster.proxy(indexed(port, mcs[:2], rds.port), port=port,
                          extra=["-T", "2"])
    wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
               what="the indexed pool to serve")
    wait_until(lambda: any(not k.startswith((b"fake", b"sweeper:"))
                           for k in r.hgetall("rp:indexed:proxies")),
               what="the proxy's heartbeat in Redis")
    stop, errors = threading.Event(), []
    pipers = [Pipeliner(port, n, n) for n in range(CONNS)]
    threads = [threading.Thread(target=p.run, args=(stop, errors)) for p in pipers]
    for t in threads:
        t.start()

    def more_rounds(n=2):
        base = [p.rounds for p in pipers]
        wait_until(lambda: errors or all(p.rounds >= b + n for p, b in zip(pipers, base)),
                   timeout=60, what="every connection to pipeline %d more rounds" % n)
    try:
        more_rounds()
        with FakeProxy(r, "rp:indexed") as fake:
            proxy.write_config(indexed(port, mcs, rds.port))
            proxy.signal(signal.SIGHUP)
            wait_phase(port, "prepared")
            more_rounds()
            fake.ack = "prepared"
            wait_phase(port, "switched")
            more_rounds()
            fake.ack = "switched"
            wait_phase(port, "moving")
            more_rounds()
            proxy.write_config(indexed(port, mcs, rds.port, migration={"rate": 0}))
            proxy.signal(signal.SIGHUP)
            wait_until(lambda: proxy_stats(port).get("migration:state") == "idle" and
                       proxy_stats(port).get("servers") == "3", timeout=60,
                       what="the resize to end")
        more_rounds()
        assert int(proxy_stats(port)["threads:forwarded"]) > 0
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert errors == [], errors[:3]


def test_sigterm_in_a_resize_answers_every_pipeline_and_exits_0(cluster, tmp_path):
    """SIGTERM while every request worker forwards (the fleet held in
    `prepared`): each connection's pipeline, sent before the signal, is
    answered in full before its connection ends, and the process exits 0,
    its links to the home thread no obstacle."""
    proxy, mcs, _, fake, _ = start_held(cluster, tmp_path, threads="3")
    try:
        pipers = [Pipeliner(proxy.port, n, 100 + n) for n in range(CONNS)]
        wires, wants = [], []
        for p in pipers:
            w = Wire(proxy.port, timeout=30)
            out, want = [], []
            for _ in range(300):
                p.step(out, want)
            w.send(b"".join(out) + b"mn\r\n")
            wires.append(w)
            wants.append(b"".join(want) + b"MN\r\n")
        # Every pipeline reached the proxy: its last reply is on its way.
        for w, want in zip(wires, wants):
            assert w.read_exact(len(want) - 4) == want[:-4]
            w.send(b"mn\r\n" * 50)
        fake.stop.set()         # its last heartbeat holds the fleet meanwhile
        fake.thread.join(5)
        assert proxy.stop() == 0
        for w in wires:
            got = w.buf + recv_to_eof(w.sock)
            assert got == b"MN\r\n" * (got.count(b"MN\r\n")) and len(got) >= 4, got[:100]
            w.close()
        assert "stopped" in proxy.log()
    finally:
        fake.__exit__()


def link_sockets(pid):
    """The threads' link sockets of process pid in /proc/net/unix (the
    listener and each connection it accepted carry its name)."""
    with open("/proc/net/unix") as f:
        return [line.split()[-1] for line in f
                if line.split()[-1].startswith("@ringproxy.%d." % pid)]


def test_a_reload_that_removes_an_indexed_pool_closes_its_link(cluster):
    """Removing an indexed pool served by every thread: the home pool goes
    once its clients are gone, the link's connections included (each
    request worker's copy closes its link as it goes), and nothing of the
    link is left listening."""
    mcs = cluster.memcached(2)
    rds = cluster.redis()
    port, other = free_port(), free_port()
    plain = pool_yaml("plain", other, [(mcs[0].addr, 1, "mc1")])
    proxy = cluster.proxy(indexed(port, mcs, rds.port) + plain, port=port,
                          extra=["-T", "2"])
    wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
               what="the indexed pool to serve")
    wires = [Wire(port) for _ in range(CONNS)]
    for w in wires:
        assert w.call(b"flush_all\r\n") == b"OK\r\n"   # through the link on a copy
    assert len(link_sockets(proxy.proc.pid)) >= 2      # the listener, a link
    proxy.write_config(plain)
    proxy.signal(signal.SIGHUP)
    for w in wires:
        assert w.closed_by_peer()
        w.close()
    wait_until(lambda: "pool indexed: removed" in proxy.log(), what="the pool removed")
    wait_until(lambda: link_sockets(proxy.proc.pid) == [], what="the link gone")
    assert Wire(other).call(b"version\r\n").startswith(b"VERSION")


def serve_everywhere(port, tag):
    """CONNS connections (both threads) each store and read back a key."""
    wires = [Wire(port) for _ in range(CONNS)]
    try:
        for i, w in enumerate(wires):
            k = b"%s-%d" % (tag.encode(), i)
            assert w.call(b"set %s 0 0 1\r\nx\r\n" % k) == b"STORED\r\n"
            assert w.call(b"get %s\r\n" % k) == b"VALUE %s 0 1\r\nx\r\nEND\r\n" % k
            assert w.call(b"flush_all\r\n") == b"OK\r\n"    # through the link
    finally:
        for w in wires:
            w.close()


@pytest.mark.parametrize("first", [True, False], ids=["reuseport", "no-reuseport"])
def test_reloads_that_toggle_reuseport_and_move_the_port_keep_every_thread_serving(cluster,
                                                                                first):
    """An indexed pool on 2 threads reloaded to `reuseport: false` (the home
    thread alone serves it), back to true (every thread again), then to
    another port: every step applies on every thread, serves, and leaves
    no thread refusing it."""
    mcs = cluster.memcached(2)
    rds = cluster.redis()
    port, port2 = free_port(), free_port()
    proxy = cluster.proxy(indexed(port, mcs, rds.port, reuseport=first), port=port,
                          extra=["-T", "2"])
    wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
               what="the indexed pool to serve")
    serve_everywhere(port, "a")
    steps = [(port, dict(reuseport=False)), (port, {}), (port2, {}),
             (port2, dict(reuseport=False)), (port, {})]
    for n, (p, kw) in enumerate(steps):
        before = proxy.log().count("applied")
        proxy.write_config(indexed(p, mcs, rds.port, **kw))
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: proxy.log().count("applied") > before, what="reload %d" % n)
        wait_until(lambda: proxy_stats(p).get("migration:state") == "idle",
                   what="the pool to serve after reload %d" % n)
        serve_everywhere(p, "s%d" % n)
        log = proxy.log()
        assert "nothing changed" not in log and "no home pool" not in log, log[-2000:]



def held_by(mc, key):
    with socket.create_connection(("127.0.0.1", mc.port), timeout=10) as s:
        s.sendall(b"get %s\r\n" % key.encode())
        buf = b""
        while not buf.endswith(b"END\r\n"):
            buf += s.recv(65536)
        return buf.startswith(b"VALUE ")


def test_a_copy_replaced_while_the_old_one_drains_still_follows_the_home(cluster, tmp_path):
    """reuseport off then on again while a request worker's copy still
    drains a client (its get waits on a stopped server): the new copy takes
    the thread's place in the hub, and the old one, freed later, must not
    take the new one's wake-up with it. Else the new copy never hears of
    the next resize and keeps storing by the old ring."""
    mcs = cluster.memcached(3)
    rds = cluster.redis()
    port = free_port()
    conf = lambda n, **kw: indexed(port, mcs[:n], rds.port, timeout=20000,
                                   migration={"rate": 0}, **kw)
    proxy = cluster.proxy(conf(2), port=port, extra=["-T", "2"])
    wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
               what="the indexed pool to serve")
    first = tmp_path / "first.yml"
    first.write_text(conf(2))
    stall = stable_key(str(first), str(first), "mc1", "stall")
    wires = [Wire(port, timeout=60) for _ in range(CONNS)]
    assert wires[0].call(b"set %s 0 0 1\r\nx\r\n" % stall.encode()) == b"STORED\r\n"

    def reload(text):
        before = proxy.log().count(" applied")
        proxy.write_config(text)
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: proxy.log().count(" applied") > before, what="the reload")
    sigstop(mcs[0].proc)
    try:
        for w in wires:
            w.send(b"get %s\r\n" % stall.encode())
        reload(conf(2, reuseport=False))
        reload(conf(2))
    finally:
        mcs[0].proc.send_signal(signal.SIGCONT)
    for w in wires:
        assert w.read_reply() == b"VALUE %s 0 1\r\nx\r\nEND\r\n" % stall.encode()
        w.close()
    wait_until(lambda: "pool indexed: removed" in proxy.log(), what="the old copy freed")
    reload(conf(3))
    wait_until(lambda: proxy_stats(port).get("migration:state") == "idle" and
               proxy_stats(port).get("servers") == "3", timeout=60,
               what="the resize to end")
    keys = ["n%d" % i for i in range(200)]
    wires = [Wire(port) for _ in range(CONNS)]
    try:
        for i, k in enumerate(keys):
            assert wires[i % CONNS].call(b"set %s 0 0 1\r\ny\r\n" % k.encode()) == \
                b"STORED\r\n"
    finally:
        for w in wires:
            w.close()
    where = locate(proxy.conf_path, keys)
    for k in keys:
        assert held_by(mcs[int(where[k][2:]) - 1], k), (k, where[k])


def test_forwarded_commands_and_links_are_counted_once(cluster, tmp_path):
    """While every request worker forwards (held in `prepared`), what its
    clients ask is counted where they asked it: `stats` on any connection,
    /metrics and the stats port show each command once, and the links to
    the home thread are no client connections."""
    sport, aport = free_port(), free_port()
    proxy, mcs, _, fake, _ = start_held(cluster, tmp_path, threads="3",
                                        ports=dict(stats_port=sport, admin_port=aport))
    try:
        with Wire(proxy.port) as w:
            assert w.call(b"stats reset\r\n") == b"RESET\r\n"
        wires = [Wire(proxy.port) for _ in range(CONNS)]
        per = 10
        for i, w in enumerate(wires):
            for j in range(per):
                k = b"ct%d-%d" % (i, j)
                assert w.call(b"set %s 0 0 1\r\nx\r\n" % k) == b"STORED\r\n"
                assert w.call(b"get %s\r\n" % k) == b"VALUE %s 0 1\r\nx\r\nEND\r\n" % k
        n = CONNS * per
        # asked on a connection already open: each poll through a new one
        # would add to total_connections
        wait_until(lambda: int(stats_of(wires[0])["threads:forwarded"]) > 0,
                   what="commands forwarded")

        def once(st):
            return (int(st["cmd_set"]) == n and int(st["cmd_get"]) == n and
                    int(st["get_hits"]) == n and int(st["get_misses"]) == 0 and
                    int(st["curr_connections"]) == CONNS and
                    int(st["total_connections"]) == CONNS)
        # every thread's view (the first connection asked for the reset)
        wait_until(lambda: all(once(stats_of(w)) for w in wires),
                   what="each command counted once on every connection")

        def metric(name):
            _, _, body = admin_get(aport, "/metrics")
            m = re.search(r'^%s\{pool="indexed"\} (\S+)$' % name, body, re.M)
            return float(m.group(1))
        wait_until(lambda: metric("ringproxy_pool_cmd_set_total") == n and
                   metric("ringproxy_pool_get_hits_total") == n,
                   what="/metrics counting each command once")
        def port_once():
            pool = stats_port_json(sport)["indexed"]
            servers = [v for v in pool.values() if isinstance(v, dict)]
            # at most once each (a moving key's command is the migration's
            # own meta connection's, not counted there)
            return (pool["client_connections"] == CONNS and
                    n <= sum(v["requests"] for v in servers) <= 2 * n, pool)
        try:
            wait_until(lambda: port_once()[0], what="the stats port counting each once")
        except AssertionError:
            raise AssertionError(port_once()[1])
        for w in wires:
            w.close()
    finally:
        fake.__exit__()


def stats_of(w):
    out = w.call(b"stats\r\n").decode()
    return dict(line.split(" ", 2)[1:] for line in out.split("\r\n")
                if line.startswith("STAT "))


def test_a_sighup_storm_in_a_resize_loses_no_pipelined_reply(cluster, tmp_path):
    """40 reloads in a row while the fleet is held in `prepared` and 16
    connections pipeline on both threads: each reload reaches every thread
    (a thread that refused one would keep the old file), no reply is lost
    or out of order, and the resize then ends."""
    proxy, mcs, _, fake, _ = start_held(cluster, tmp_path)
    port = proxy.port
    stop, errors = threading.Event(), []
    pipers = [Pipeliner(port, n, 200 + n) for n in range(CONNS)]
    threads = [threading.Thread(target=p.run, args=(stop, errors)) for p in pipers]
    for t in threads:
        t.start()
    rport = int(re.search(r"redis: \"127.0.0.1:(\d+)\"", open(proxy.conf_path).read()).group(1))
    try:
        for i in range(40):
            proxy.write_config(indexed(port, mcs, rport, timeout=1000 + i,
                                       migration={"rate": 1 + i % 2}))
            proxy.signal(signal.SIGHUP)
        wait_until(lambda: proxy.log().count(" applied") >= 2, what="reloads applied")
        base = [p.rounds for p in pipers]
        wait_until(lambda: errors or all(p.rounds >= b + 2 for p, b in zip(pipers, base)),
                   timeout=60, what="the pipelines to go on")
        fake.ack = "switched"
        proxy.write_config(indexed(port, mcs, rport, migration={"rate": 0}))
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: proxy_stats(port).get("migration:state") == "idle" and
                   proxy_stats(port).get("servers") == "3", timeout=60,
                   what="the resize to end")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        fake.__exit__()
    assert errors == [], errors[:3]
    assert "keeps the previous config" not in proxy.log()


def test_no_thread_refuses_as_fenced_when_the_pool_starts_serving(cluster):
    """Connections made while an indexed pool waits for Redis are served
    once it is ready, on every thread: a request worker woken by the home
    thread's first routing must not read it with the fence of before (0,
    "fenced", until the home said otherwise) and refuse as fenced."""
    mcs = cluster.memcached(2)
    rds = cluster.redis()
    for attempt in range(5):
        port = free_port()
        proxy = cluster.proxy(indexed(port, mcs, rds.port), port=port,
                              extra=["-T", "2"])
        wires = [Wire(port) for _ in range(CONNS)]
        for i, w in enumerate(wires):
            w.send(b"set st%d-%d 0 0 1\r\nx\r\nmg st%d-%d v\r\n" % (attempt, i, attempt, i))
        for w in wires:
            assert w.read_line() == b"STORED\r\n"
            assert w.read_line() == b"VA 1\r\n" and w.read_line() == b"x\r\n"
            w.close()
        assert proxy.stop() == 0
