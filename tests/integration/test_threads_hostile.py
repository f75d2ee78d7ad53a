"""An indexed pool on several threads under attack (docs/ARCHITECTURE.md,
"Threads: indexed pools"): during a resize the request workers hand every
command to the home thread through one link connection shared by their
clients, so nothing one client does may make the home thread close that
link under the others."""
import signal
import socket
import threading

import redis

from harness import (Wire, free_port, locate, pool_yaml, proxy_stats, sigstop,
                     wait_until)
from test_migration import FakeProxy, wait_phase

CONNS = 16      # connections land on both threads (SO_REUSEPORT)


def indexed(port, mcs, rport, **kw):
    settings = dict(index={"redis": "127.0.0.1:%d" % rport, "sweep_rate": 0},
                    migration={"rate": 1})
    settings.update(kw)
    return pool_yaml("indexed", port, [(m.addr, 1, "mc%d" % (i + 1))
                                       for i, m in enumerate(mcs)], **settings)


def start_held(cluster, tmp_path, nservers=3, threads="2", **kw):
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
                          extra=["-T", threads])
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
            # The attackers' gets reached mc1 (through the link or not).
            wait_until(lambda: mc_stat(mcs[0], "get_hits") >= 4 * CONNS,
                       what="the big gets answered by mc1")
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


def mc_stat(mc, name):
    with socket.create_connection(("127.0.0.1", mc.port), timeout=10) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            buf += s.recv(65536)
    for line in buf.decode().split("\r\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[1] == name:
            return int(parts[2])
    raise KeyError(name)


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
