"""The Redis key index (docs/ARCHITECTURE.md, "The index"): every key the proxy stores is in the
sorted set of the v-node that owns it, scored by its ring hash; deletes
remove it; failed stores add nothing; Redis trouble never reaches clients."""
import random
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis
from pymemcache.client.base import Client

from harness import (RINGPROXY, Redis, free_port, home_lines_lag, pool_yaml, proxy_stats,
                     set_members, vnode_of, wait_until)

PREFIX = "rp:cache"


def config(port, mcs, redis_port, queue_max=100000):
    """The sweeper is off: these tests look at what stores and deletes alone
    leave in the index (test_sweep.py is the sweeper's)."""
    servers = [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]
    return pool_yaml("cache", port, servers, hash="fnv1a_64",
                     index={"redis": "127.0.0.1:%d" % redis_port,
                            "queue_max": queue_max, "sweep_rate": 0})


def owners(conf_path, keys):
    """key -> (hash, point, server) from `ringproxy locate`, bytes-safe."""
    out = {}
    for i in range(0, len(keys), 2000):
        res = subprocess.run([RINGPROXY, "locate", "-c", conf_path, "--"] + keys[i:i + 2000],
                             check=True, capture_output=True)
        for line in res.stdout.split(b"\n")[1:]:
            if line:
                pool, key, h, point, server, addr = line.split(b" ")
                out[key] = (int(h), int(point), server.decode())
    return out


def vnode(server, point):
    return "%s:v:%s:%d" % (PREFIX, server, point)


def wait_index_idle(c, timeout=10, stores=0):
    """stores: wait until the writer took at least that many stores (sent
    or filtered) too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(home_lines_lag())    # c may be on a thread other than home
        st = c.stats()
        if st[b"index:queued"] == 0 and st[b"index:inflight"] == 0 and \
                st[b"index:adds"] + st[b"index:filtered"] >= stores:
            return st
        time.sleep(0.02)
    raise AssertionError("index writes never drained: %s" % st)


def indexed_members(r):
    members = {}
    for name in r.scan_iter(match=PREFIX + ":v:*", count=1000):
        for m, score in set_members(r, name):
            members.setdefault(m, []).append((vnode_of(name), int(score)))
    return members


@pytest.fixture
def setup(cluster):
    mcs = cluster.memcached(3)
    rs = cluster.redis()
    port = free_port()
    proxy = cluster.proxy(config(port, mcs, rs.port), port=port)
    r = redis.Redis(port=rs.port)
    # the first ring record's rebuild (src/adopt.c) lists the backends while
    # a test writes: its add of a long key beside the writer's RPUSH of it
    # makes a twin in the key's list (docs/ARCHITECTURE.md L1), which tests
    # counting entries per key would take for a misfiled key
    wait_until(lambda: (r.hget(PREFIX + ":index", "rebuild") or b"").startswith(b"done"),
               timeout=30, what="the first record's rebuild to end")
    c = Client(("127.0.0.1", port), allow_unicode_keys=True, timeout=10)
    yield proxy, c, r, rs
    c.close()


def random_keys(n, seed=7):
    rnd = random.Random(seed)
    alphabet = [chr(c) for c in range(0x21, 0x7f)] + ["é", "ß", "日", "\u00ff"]
    keys = set()
    while len(keys) < n:
        length = rnd.randint(1, 60)
        k = "".join(rnd.choice(alphabet) for _ in range(length))
        if len(k.encode()) <= 250:
            keys.add(k)
    return sorted(keys)


def test_every_stored_key_is_in_its_vnode_set_with_its_ring_hash(setup):
    proxy, c, r, _ = setup
    keys = random_keys(10000)
    for i in range(0, len(keys), 1000):
        assert c.set_many({k: b"\x00\xff" + k.encode() for k in keys[i:i + 1000]},
                          noreply=False) == []
    wait_index_idle(c)
    raw = [k.encode() for k in keys]
    where = owners(proxy.conf_path, raw)
    members = indexed_members(r)
    assert len(members) == len(keys)
    for k in raw:
        h, point, server = where[k]
        assert members[k] == [(vnode(server, point), h)], k


def test_deletes_leave_entries_and_failed_stores_add_nothing(setup):
    """The index is a superset: a delete does not remove its key's entry
    (a removal could reach Redis after a later store through another proxy,
    and an unindexed key would not move); the mover drops entries of keys it
    finds gone. A store the backend refused adds nothing."""
    proxy, c, r, _ = setup
    keep = ["keep%d" % i for i in range(200)]
    gone = ["gone%d" % i for i in range(200)]
    assert c.set_many({k: b"x" for k in keep + gone}, noreply=False) == []
    for k in gone:
        assert c.delete(k, noreply=False)
    # Stores that fail on the backend: replace/append/prepend of missing keys,
    # cas of a missing key, add of an existing key.
    assert not c.replace("never1", b"x", noreply=False)
    assert not c.append("never2", b"x", noreply=False)
    assert not c.prepend("never3", b"x", noreply=False)
    assert c.cas("never4", b"x", b"12345", noreply=False) is None
    assert not c.add("keep0", b"y", noreply=False)
    # Refused by the proxy itself: too large.
    with pytest.raises(Exception):
        c.set("never5", b"z" * (1024 * 1024 + 1), noreply=False)
    c.version()
    wait_index_idle(c)
    members = indexed_members(r)
    assert set(members) == {k.encode() for k in keep + gone}


def test_noreply_writes_are_indexed(setup):
    proxy, c, r, _ = setup
    keys = ["nr%d" % i for i in range(500)]
    c.set_many({k: b"v" for k in keys}, noreply=True)
    c.delete_many(keys[:100], noreply=True)    # deletes leave their entries
    # noreply gives no moment when all backends have answered: wait for the
    # index to settle on the expected set (or time out with the difference).
    want = {k.encode() for k in keys}
    deadline = time.monotonic() + 10
    while True:
        wait_index_idle(c)
        got = set(indexed_members(r))
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == want


def test_meta_writes_are_indexed_like_their_text_counterparts(setup):
    """ms answered HD (or nothing under q), mg and ma that may have created
    the item (N), a base64 key by its decoded bytes; md leaves its entry;
    refused stores, plain reads and binary keys add nothing."""
    import base64
    proxy, c, r, _ = setup
    b64 = base64.b64encode
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    cmds = (b"ms m1 1\r\nx\r\n" b"ms m2 1 q\r\nx\r\n" b"ms m3 1 T0 F5 k O1\r\nx\r\n"
            b"ms " + b64(b"m4") + b" 1 b\r\nx\r\n"
            b"ms " + b64(b"bin ary") + b" 1 b\r\nx\r\n"
            b"ms m1 1 ME\r\nx\r\n" b"ms never1 1 MR\r\nx\r\n" b"ms never2 1 MA q\r\nx\r\n"
            b"mg never3 v\r\n" b"mg m5 N30 v\r\n" b"mg m6 N30 q\r\n"
            b"ma m7 N0 J3 v\r\n" b"ma m8 N0 q\r\n" b"ma never4 v\r\n"
            b"md m1\r\n" b"md m2 q\r\n" b"mn\r\n")
    s.sendall(cmds)
    got = b""
    while not got.endswith(b"MN\r\n"):
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    s.close()
    assert got.count(b"HD") == 7 and got.count(b"NS\r\n") == 3 and b"NF\r\n" in got, got
    st = wait_index_idle(c)
    want = [b"m1", b"m2", b"m3", b"m4", b"m5", b"m6", b"m7", b"m8"]
    members = indexed_members(r)
    assert set(members) == set(want)
    where = owners(proxy.conf_path, want)
    for k in want:
        h, point, server = where[k]
        assert members[k] == [(vnode(server, point), h)], k
    assert st[b"meta_unindexed_keys"] == 1


def test_storing_a_key_again_costs_redis_nothing(setup):
    proxy, c, r, _ = setup
    keys = ["again%d" % i for i in range(1000)]
    c.set_many({k: b"v" for k in keys}, noreply=False)
    # Every store reached the writer (from another thread, a tick later).
    st1 = wait_index_idle(c, stores=1000)
    for _ in range(3):
        c.set_many({k: b"w" for k in keys}, noreply=False)
    st2 = wait_index_idle(c, stores=4000)
    # Only keys whose filter slot another key took are sent again (< 1%).
    assert st2[b"index:adds"] - st1[b"index:adds"] <= 30
    assert st2[b"index:filtered"] - st1[b"index:filtered"] >= 2970


def test_redis_killed_under_load_costs_clients_nothing(cluster):
    mcs = cluster.memcached(2)
    rs = cluster.redis()
    port = free_port()
    cluster.proxy(config(port, mcs, rs.port, queue_max=500), port=port)
    errors, done = [], threading.Event()
    counts = [0]

    def load():
        c = Client(("127.0.0.1", port), timeout=5)
        i = 0
        try:
            while not done.is_set():
                i += 1
                k = "load%d" % i
                assert c.set(k, b"v", noreply=False)
                assert c.get(k) == b"v"
                counts[0] += 1
        except Exception as e:
            errors.append(repr(e))
        finally:
            c.close()

    t = threading.Thread(target=load)
    t.start()
    try:
        time.sleep(0.5)
        rs.kill()                       # Redis vanishes without a goodbye
        at_kill = counts[0]
        time.sleep(1.5)
        assert counts[0] - at_kill > 200, "clients stalled while Redis was down"
        st = Client(("127.0.0.1", port)).stats()
        assert st[b"index:state"] != b"ready"
        assert st[b"index:dropped"] > 0
        rs.start()                      # back on the same port, empty
        deadline = time.monotonic() + 15
        while Client(("127.0.0.1", port)).stats()[b"index:state"] != b"ready":
            assert time.monotonic() < deadline, "the writer never reconnected"
            time.sleep(0.1)
    finally:
        done.set()
        t.join(30)
    assert errors == []
    c = Client(("127.0.0.1", port))
    # queue_max is 500: a store while the queue is still full of the load's
    # writes would be dropped (and counted), not indexed
    wait_index_idle(c, timeout=30)
    c.set("after-restart", b"v", noreply=False)
    wait_index_idle(c)
    r = redis.Redis(port=rs.port)
    assert b"after-restart" in indexed_members(r)
    c.close()


def reply_timeout_config(port, mcs, redis_addr, timeout_ms):
    servers = [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]
    return pool_yaml("cache", port, servers, hash="fnv1a_64",
                     index={"redis": redis_addr, "sweep_rate": 0,
                            "reply_timeout": timeout_ms})


def test_a_redis_that_stops_answering_is_dropped_within_reply_timeout(cluster):
    """A stopped Redis keeps its connections open and answers nothing: the
    writer gives up on it after index.reply_timeout and connects again (to
    the kernel's backlog, where the same happens), counting what it owed as
    dropped; once Redis answers again, the writer drains and indexes. Without
    the deadline the writes stay in flight for as long as Redis is stopped."""
    mcs = cluster.memcached(2)
    rs = cluster.redis()
    port = free_port()
    cluster.proxy(reply_timeout_config(port, mcs, "127.0.0.1:%d" % rs.port, 400), port=port)
    c = Client(("127.0.0.1", port), timeout=5)
    c.set("before", b"v", noreply=False)
    wait_index_idle(c)
    before = c.stats()
    rs.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(50):
            assert c.set("frozen%d" % i, b"v", noreply=False)
        # at least two deadlines: the connection of before, then a new one
        # the kernel accepted for the stopped Redis
        st = wait_until(lambda: (lambda s: int(s["index:disconnects"]) >=
                                 before[b"index:disconnects"] + 2 and s)(proxy_stats(port)),
                        timeout=10, interval=0.05, what="the writer to give up on Redis")
        assert "answered nothing for 400 ms" in st.get("index:health_reason", ""), st
        assert int(st["index:dropped"]) > before[b"index:dropped"]
        assert c.get("frozen7") == b"v"            # clients never noticed
    finally:
        rs.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: proxy_stats(port)["index:state"] == "ready", timeout=10,
               what="the writer to reconnect")
    c.set("after-thaw", b"v", noreply=False)
    wait_index_idle(c)
    assert b"after-thaw" in indexed_members(redis.Redis(port=rs.port))
    c.close()


def test_a_connection_redis_never_accepts_is_given_up_within_reply_timeout(cluster):
    """A listener whose backlog is full drops the SYNs: the connect neither
    succeeds nor fails. The writer gives up on it after reply_timeout, says
    why, and tries again. (Stores are fenced: no proxy of the fleet could
    have told this one the ring, docs/ARCHITECTURE.md I6.)"""
    mcs = cluster.memcached(1)
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    filler = []
    try:
        for _ in range(4):          # fill the accept queue (backlog 0 takes 1 or 2)
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(lst.getsockname())
            filler.append(f)
        time.sleep(0.2)
        port = free_port()
        cluster.proxy(reply_timeout_config(port, mcs, "127.0.0.1:%d" % lst.getsockname()[1],
                                           300), port=port)
        st = wait_until(lambda: (lambda s: int(s["index:disconnects"]) >= 2 and s)(
            proxy_stats(port)), timeout=10, interval=0.05, what="the connect to be given up")
        assert "not connected within 300 ms" in st.get("index:health_reason", ""), st
        assert st["index:connects"] == "0"
        st = wait_until(lambda: (lambda s: int(s["index:disconnects"]) >= 4 and s)(
            proxy_stats(port)), timeout=10, interval=0.05, what="the connect to be retried")
        assert st["index:connects"] == "0"
    finally:
        for f in filler:
            f.close()
        lst.close()


def test_index_stats_and_check_report_what_redis_and_backends_hold(cluster):
    mcs = cluster.memcached(3)
    rs = cluster.redis()
    port = free_port()
    proxy = cluster.proxy(config(port, mcs, rs.port), port=port)
    c = Client(("127.0.0.1", port))
    keys = ["chk%d" % i for i in range(3000)]
    assert c.set_many({k: b"v" for k in keys}, noreply=False) == []
    wait_index_idle(c)

    out = subprocess.run([RINGPROXY, "index", "stats", "-c", proxy.conf_path],
                         check=True, capture_output=True, text=True).stdout
    assert "3000 indexed keys" in out
    assert "epoch 1, matches this config" in out
    per_server = [l.split() for l in out.splitlines() if l.strip().startswith("mc")]
    assert sum(int(f[2]) for f in per_server) == 3000

    out = subprocess.run([RINGPROXY, "index", "check", "-c", proxy.conf_path,
                          "--sample", "500"], check=True, capture_output=True,
                         text=True).stdout
    assert "checked 500 indexed keys" in out
    assert "misplaced: 0, wrong score: 0" in out
    assert "on their backend: 500 (100.0%)" in out

    # Keys deleted around the proxy stay in the index: check sees them gone.
    for m in mcs:
        with socket.create_connection(("127.0.0.1", m.port)) as s:
            s.sendall(b"flush_all\r\n")
            assert s.recv(100) == b"OK\r\n"
    out = subprocess.run([RINGPROXY, "index", "check", "-c", proxy.conf_path,
                          "--sample", "100"], check=True, capture_output=True,
                         text=True).stdout
    assert "on their backend: 0 (0.0%)" in out and "deleted around the proxy): 100" in out
    c.close()


def test_a_redis_that_returns_empty_is_reported_and_re_recorded(cluster):
    mcs = cluster.memcached(2)
    rs = cluster.redis()
    port = free_port()
    proxy = cluster.proxy(config(port, mcs, rs.port), port=port)
    r = redis.Redis(port=rs.port)
    deadline = time.monotonic() + 10
    while not r.exists(PREFIX + ":ring"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rs.kill()
    rs.start()                          # no persistence: it comes back empty
    deadline = time.monotonic() + 15
    while "it lost the index" not in proxy.log() or not r.exists(PREFIX + ":ring"):
        assert time.monotonic() < deadline, proxy.log()[-2000:]
        time.sleep(0.1)
    assert r.hget(PREFIX + ":ring", "epoch") == b"1"
