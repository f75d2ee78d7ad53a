"""Hot reload and live migration (docs/ARCHITECTURE.md, "Resizing a fleet"): a resize moves exactly the keys
whose owner changed, loses none, and never serves a read older than the last
acknowledged write, also while clients keep writing and reading."""
import os
import re
import signal
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import redis
from pymemcache.client.base import Client

from harness import TcpRelay, free_port, locate, mc_value, paused, pool_yaml, wait_until

SETTLE = 60.0     # upper bound for a migration to finish in these tests


def pool_config(port, mcs, redis_port, weights=None, rate=0, delete_source=True,
                extra=None):
    servers = [(m.addr, (weights or [1] * len(mcs))[i], "mc%d" % (mcs_names(m)))
               for i, m in enumerate(mcs)]
    settings = dict(hash="md5", timeout=2000,
                    index={"redis": "127.0.0.1:%d" % redis_port},
                    migration={"rate": rate, "delete_source": delete_source})
    settings.update(extra or {})
    return pool_yaml("cache", port, servers, **settings)


def mcs_names(m):
    return m.ident


def mc_stats(m):
    with socket.create_connection(("127.0.0.1", m.port)) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            buf += s.recv(65536)
    out = {}
    for line in buf.decode().split("\r\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out


def mc_ttl(m, key):
    """Remaining TTL and flags of a key, read from the backend itself."""
    with socket.create_connection(("127.0.0.1", m.port)) as s:
        s.sendall(b"mg " + key + b" t f\r\n")
        line = s.recv(4096).split(b"\r\n")[0].split(b" ")
    assert line[0] == b"HD", line
    flags = dict((t[:1], t[1:]) for t in line[1:])
    return int(flags[b"t"]), int(flags[b"f"])


def proxy_stats(port):
    c = Client(("127.0.0.1", port))
    try:
        return {k.decode(): (v.decode() if isinstance(v, bytes) else v)
                for k, v in c.stats().items()}
    finally:
        c.close()


def wait_migrated(port, epoch, timeout=SETTLE):
    """Until the proxy serves ring `epoch` with no migration under way."""
    deadline = time.monotonic() + timeout
    st = {}
    while time.monotonic() < deadline:
        st = proxy_stats(port)
        if st.get("migration:state") == "idle" and int(st.get("migration:epoch", 0)) >= epoch:
            return st
        time.sleep(0.05)
    raise AssertionError("migration did not finish: %s" % st)


def wait_moved(port, n, timeout=20):
    """Until a migration has moved at least n keys (it is under way)."""
    deadline = time.monotonic() + timeout
    while int(proxy_stats(port)["migration:keys_moved"]) < n:
        assert time.monotonic() < deadline, "the migration moved fewer than %d keys" % n
        time.sleep(0.05)


def reload(proxy, text):
    proxy.write_config(text)
    proxy.signal(signal.SIGHUP)


@pytest.fixture
def env(cluster):
    """memcached servers named mc1.., one Redis, a helper to start the proxy."""
    class Env:
        def __init__(self):
            self.redis = cluster.redis(persist=True)
            self.r = redis.Redis(port=self.redis.port)
            self.pool = []

        def servers(self, n):
            new = cluster.memcached(n)
            for m in new:
                self.pool.append(m)
                m.ident = len(self.pool)
            return new

        def config(self, mcs, port, **kw):
            return pool_config(port, mcs, self.redis.port, **kw)

        def proxy(self, mcs, port=None, **kw):
            port = port or free_port()
            p = cluster.proxy(self.config(mcs, port, **kw), port=port)
            wait_ready(port)
            return p

    return Env()


def wait_ready(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proxy_stats(port).get("migration:state") not in (None, "starting"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("proxy on %d never became ready" % port)


def fill(port, n, prefix="k", expire=0, flags=0):
    c = Client(("127.0.0.1", port))
    keys = ["%s%d" % (prefix, i) for i in range(n)]
    for i in range(0, n, 500):
        chunk = {k: ("v-" + k).encode() for k in keys[i:i + 500]}
        failed = c.set_many(chunk, expire=expire, flags=flags, noreply=False)
        assert failed == []
    c.close()
    return keys


def assert_all_hit(port, keys):
    c = Client(("127.0.0.1", port))
    got = {}
    for i in range(0, len(keys), 500):
        got.update(c.get_many(keys[i:i + 500]))
    c.close()
    missing = [k for k in keys if got.get(k) != ("v-" + k).encode()]
    assert missing == [], "%d keys missing or wrong, e.g. %s" % (len(missing), missing[:5])


def assert_placement(proxy, mcs, keys):
    """Every key is on exactly the server the config's ring names."""
    where = locate(proxy.conf_path, keys)
    by_name = {"mc%d" % m.ident: m for m in mcs}
    holdings = {name: m.keys() for name, m in by_name.items()}
    for k in keys:
        owner = where[k]
        assert k.encode() in holdings[owner], "%s not on its owner %s" % (k, owner)
        for name, held in holdings.items():
            if name != owner:
                assert k.encode() not in held, "%s left behind on %s" % (k, name)


def test_grow_3_to_4_moves_exactly_the_keys_whose_owner_changed(env):
    old = env.servers(3)
    proxy = env.proxy(old)
    keys = fill(proxy.port, 30000, expire=7200, flags=7)
    before = locate(proxy.conf_path, keys)
    new = env.servers(1)
    text = env.config(old + new, proxy.port)
    with open(proxy.conf_path + ".new", "w") as f:
        f.write(text)
    after = locate(proxy.conf_path + ".new", keys)
    changed = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "mc4" for k in changed)
    time.sleep(0.3)     # let the index writes land
    stats_before = {m.ident: mc_stats(m) for m in old + new}

    reload(proxy, text)
    st = wait_migrated(proxy.port, 2)

    assert int(st["migration:keys_moved"]) == len(changed)
    assert int(st["migration:keys_failed"]) == 0
    # No other key was read or written: each old server was read (mg hits) and
    # deleted from exactly for its keys that left; only the new one was written.
    for m in old:
        b, a = stats_before[m.ident], mc_stats(m)
        left = sum(1 for k in changed if before[k] == "mc%d" % m.ident)
        # hits: a key the second pass lists again before the first pass's
        # index update landed (the index is written asynchronously) costs a
        # get that misses, so only the hits are exact
        assert int(a["get_hits"]) - int(b["get_hits"]) == left
        assert int(a["delete_hits"]) - int(b["delete_hits"]) == left
        assert int(a["cmd_set"]) == int(b["cmd_set"])
    b, a = stats_before[new[0].ident], mc_stats(new[0])
    assert int(a["cmd_set"]) - int(b["cmd_set"]) == len(changed)

    assert_all_hit(proxy.port, keys)
    assert_placement(proxy, old + new, keys)
    # Flags and TTLs travelled with the values.
    for k in changed[:50]:
        ttl, flags = mc_ttl(new[0], k.encode())
        assert flags == 7
        assert 7000 < ttl <= 7200
    rec = env.r.hgetall("rp:cache:ring")
    assert rec[b"epoch"] == b"2" and b"mc4" in rec[b"servers"]


class DoubtMonitor:
    """Every HSET and HDEL of <prefix>:migration:doubts:* that Redis runs,
    in its order (MONITOR), as (command, [fields])."""

    STOP = "doubt-monitor-stop"

    def __init__(self, r):
        self.r, self.commands = r, []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def run(self):
        with self.r.monitor() as mon:
            self.ready.set()
            for c in mon.listen():
                words = c["command"].split(" ")
                if words[0].upper() == "ECHO" and words[1:] == [self.STOP]:
                    return
                if (words[0].upper() in ("HSET", "HDEL") and len(words) > 1 and
                        ":migration:doubts:" in words[1]):
                    self.commands.append((words[0].upper(), words[2:]))

    def stop(self):
        self.r.echo(self.STOP)
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_copies_are_recorded_in_batches_and_each_record_removed_after_it(env):
    """Each copy is recorded in Redis before it is sent and the record is
    removed once it is answered (move.c, "A copy in doubt"); the records of
    a loop turn go as one HSET, their removals as one HDEL, and Redis must
    run each removal after the record it removes."""
    old = env.servers(3)
    proxy = env.proxy(old)
    keys = fill(proxy.port, 12000)
    before = locate(proxy.conf_path, keys)
    text = env.config(old + env.servers(1), proxy.port)
    with open(proxy.conf_path + ".new", "w") as f:
        f.write(text)
    after = locate(proxy.conf_path + ".new", keys)
    changed = {k for k in keys if before[k] != after[k]}
    time.sleep(0.3)     # let the index writes land
    mon = DoubtMonitor(env.r)
    reload(proxy, text)
    st = wait_migrated(proxy.port, 2)
    mon.stop()
    assert int(st["migration:keys_moved"]) == len(changed)

    live, ever = set(), set()      # records Redis holds; keys ever recorded
    hsets = 0
    for cmd, words in mon.commands:
        if cmd == "HSET":
            hsets += 1
            # field, then the value "<hash> <CAS>": three words a record
            assert len(words) % 3 == 0, words[:6]
            for k in words[0::3]:
                assert k not in live, "%s recorded again before its removal" % k
                live.add(k)
                ever.add(k)
        else:
            for k in words:
                assert k in live, "%s removed before its record" % k
                live.remove(k)
    assert ever == changed
    assert not live, "records left: %s" % sorted(live)[:5]
    assert hsets < len(changed), "one HSET per copy: %d for %d" % (hsets, len(changed))
    assert not env.r.keys("rp:cache:migration:doubts:*")
    assert_all_hit(proxy.port, keys)


class Workload:
    """Clients writing versioned values and reading them back throughout;
    with deletes=True they also delete keys, and a deleted key must read as
    a miss until written again (a move must never resurrect it)."""

    def __init__(self, port, keys, threads=4, deletes=False):
        self.port, self.keys, self.deletes = port, keys, deletes
        self.stop = threading.Event()
        self.acked = {}             # key -> last version acknowledged
        self.lock = threading.Lock()
        self.errors = []
        self.reads = self.writes = 0
        self.threads = [threading.Thread(target=self.run, args=(i, threads))
                        for i in range(threads)]

    def run(self, me, n):
        c = Client(("127.0.0.1", self.port), timeout=10)
        mine = self.keys[me::n]     # each key has one writer: versions are ordered
        version = {k: 0 for k in mine}
        deleted = set()
        i = 0
        try:
            while not self.stop.is_set():
                k = mine[i % len(mine)]
                i += 1
                if self.deletes and i % 11 == 0 and k not in deleted:
                    assert c.delete(k, noreply=False)
                    deleted.add(k)
                    with self.lock:
                        self.acked[k] = None
                        self.writes += 1
                elif i % 3 == 0:
                    version[k] += 1
                    assert c.set(k, "%s:%d" % (k, version[k]), noreply=False)
                    deleted.discard(k)
                    with self.lock:
                        self.acked[k] = version[k]
                        self.writes += 1
                else:
                    v = c.get(k)
                    with self.lock:
                        self.reads += 1
                    if k in deleted:
                        if v is not None:
                            self.errors.append("deleted %s came back: %r" % (k, v))
                        continue
                    if v is None:
                        self.errors.append("miss on %s" % k)
                        continue
                    got = int(v.split(b":")[1])
                    if got < version[k]:
                        self.errors.append("stale read on %s: %d < %d" % (k, got, version[k]))
        except Exception as e:      # surfaces in the test, not lost in a thread
            self.errors.append(repr(e))
        finally:
            c.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def seed_versioned(port, keys):
    c = Client(("127.0.0.1", port))
    for i in range(0, len(keys), 500):
        assert c.set_many({k: "%s:0" % k for k in keys[i:i + 500]}, noreply=False) == []
    c.close()


def test_resize_under_load_has_no_miss_and_no_stale_read(env):
    old = env.servers(3)
    proxy = env.proxy(old, rate=3000)
    keys = ["w%d" % i for i in range(6000)]
    seed_versioned(proxy.port, keys)
    time.sleep(0.3)
    new = env.servers(1)
    with Workload(proxy.port, keys, deletes=True) as w:
        time.sleep(0.5)
        reload(proxy, env.config(old + new, proxy.port, rate=3000))
        wait_migrated(proxy.port, 2)
        time.sleep(0.5)
    assert w.errors == [], w.errors[:10]
    assert w.reads > 1000 and w.writes > 500
    st = proxy_stats(proxy.port)
    assert int(st["migration:keys_failed"]) == 0
    # Everything is where ring B says, with the last acknowledged version.
    c = Client(("127.0.0.1", proxy.port))
    for k in keys:
        v = c.get(k)
        if w.acked.get(k, 0) is None:
            assert v is None, "deleted %s came back" % k
        else:
            assert int(v.split(b":")[1]) == w.acked.get(k, 0)
    c.close()
    alive = [k for k in keys[:2000] if w.acked.get(k, 0) is not None]
    assert_placement(proxy, old + new, alive)


@pytest.mark.parametrize("change", ["drain_4_to_3", "reweight"])
def test_shrink_and_reweight_lose_nothing(env, change):
    mcs = env.servers(4)
    proxy = env.proxy(mcs)
    keys = fill(proxy.port, 8000)
    time.sleep(0.3)
    if change == "drain_4_to_3":
        target, weights = mcs[:3], None
    else:
        target, weights = mcs, [1, 3, 1, 2]
    reload(proxy, env.config(target, proxy.port, weights=weights))
    wait_migrated(proxy.port, 2)
    assert_all_hit(proxy.port, keys)
    assert_placement(proxy, mcs, keys)
    if change == "drain_4_to_3":
        assert mcs[3].keys() == set()     # the removed server was drained


def test_24_to_25_also_moves_keys_between_old_servers(env):
    mcs = env.servers(25)
    proxy = env.proxy(mcs[:24])
    keys = fill(proxy.port, 6000)
    time.sleep(0.3)
    with open(proxy.conf_path + ".new", "w") as f:
        f.write(env.config(mcs, proxy.port))
    before = locate(proxy.conf_path, keys)
    after = locate(proxy.conf_path + ".new", keys)
    between_old = [k for k in keys if before[k] != after[k] and after[k] != "mc25"]
    assert between_old, "the 156-point quirk should move keys between old servers"
    reload(proxy, env.config(mcs, proxy.port))
    wait_migrated(proxy.port, 2)
    assert_all_hit(proxy.port, keys)
    assert_placement(proxy, mcs, between_old)


def test_invalid_config_on_sighup_keeps_the_old_ring(env):
    mcs = env.servers(3)
    proxy = env.proxy(mcs)
    keys = fill(proxy.port, 1000)
    good = open(proxy.conf_path).read()
    bad = good.replace("servers:", "servers:\n    - 127.0.0.1:0:1 broken", 1)
    reload(proxy, bad)
    deadline = time.monotonic() + 10
    while "keeping the running config" not in proxy.log():
        assert time.monotonic() < deadline, proxy.log()[-2000:]
        time.sleep(0.05)
    log = proxy.log()
    assert "%s:" % proxy.conf_path in log and "port must be a number" in log
    line = [l for l in log.splitlines() if "port must be a number" in l][0]
    assert ":%s:" % (bad.splitlines().index("    - 127.0.0.1:0:1 broken") + 1) in line
    assert_all_hit(proxy.port, keys)
    assert proxy_stats(proxy.port)["migration:state"] == "idle"


def test_sighup_during_a_migration_is_applied_after_it(env):
    mcs = env.servers(5)
    proxy = env.proxy(mcs[:3], rate=2000)
    keys = fill(proxy.port, 6000)
    time.sleep(0.3)
    reload(proxy, env.config(mcs[:4], proxy.port, rate=2000))
    time.sleep(0.3)
    assert proxy_stats(proxy.port)["migration:state"] != "idle"
    reload(proxy, env.config(mcs, proxy.port, rate=0))
    wait_migrated(proxy.port, 3)
    assert_all_hit(proxy.port, keys)
    assert_placement(proxy, mcs, keys)
    assert b"mc5" in env.r.hget("rp:cache:ring", "servers")


def test_proxy_killed_mid_migration_resumes_after_restart(env, cluster):
    mcs = env.servers(4)
    proxy = env.proxy(mcs[:3], rate=1500)
    keys = fill(proxy.port, 12000)
    time.sleep(0.3)
    reload(proxy, env.config(mcs, proxy.port, rate=1500))
    wait_moved(proxy.port, 500)
    assert proxy_stats(proxy.port)["migration:state"] == "moving"
    proxy.kill()
    # The config on disk is the new one; the data still obeys the old ring.
    assert env.r.hget("rp:cache:ring", "epoch") == b"1"
    proxy.start()
    wait_ready(proxy.port)
    wait_migrated(proxy.port, 2)
    assert_all_hit(proxy.port, keys)
    assert_placement(proxy, mcs, keys)


def test_two_proxies_share_one_migration(env, cluster):
    mcs = env.servers(4)
    a = env.proxy(mcs[:3], rate=4000)
    b = env.proxy(mcs[:3], rate=4000)
    keys = ["w%d" % i for i in range(4000)]
    seed_versioned(a.port, keys)
    # Keys no workload writes: only the mover can put these in place (a
    # busy machine can let the workloads rewrite every w-key at home first).
    still = fill(b.port, 2000, prefix="still")
    time.sleep(0.3)
    # Sets and deletes race the moves through both proxies.
    with Workload(a.port, keys[:2000], threads=2, deletes=True) as wa, \
            Workload(b.port, keys[2000:], threads=2, deletes=True) as wb:
        time.sleep(0.3)
        reload(a, env.config(mcs, a.port, rate=4000))
        time.sleep(0.2)
        reload(b, env.config(mcs, b.port, rate=4000))
        wait_migrated(a.port, 2)
        wait_migrated(b.port, 2)
        time.sleep(0.3)
    assert wa.errors == [] and wb.errors == [], (wa.errors + wb.errors)[:10]
    moved = [int(proxy_stats(p.port)["migration:keys_moved"]) for p in (a, b)]
    leases = [("holds the coordinator lease" in p.log()) for p in (a, b)]
    assert leases.count(True) >= 1
    acked = dict(wa.acked)
    acked.update(wb.acked)
    for p in (a, b):
        c = Client(("127.0.0.1", p.port))
        for k in keys[::7]:
            v = c.get(k)
            if acked.get(k, 0) is None:
                assert v is None, "deleted %s came back through %d" % (k, p.port)
            else:
                assert v is not None and int(v.split(b":")[1]) == acked.get(k, 0)
        c.close()
    assert sum(moved) > 0
    assert_all_hit(a.port, still)
    assert_all_hit(b.port, still)


def test_sigterm_during_a_migration_stops_cleanly_and_a_restart_finishes(env):
    mcs = env.servers(4)
    proxy = env.proxy(mcs[:3], rate=1000)
    keys = fill(proxy.port, 8000)
    time.sleep(0.3)
    with Workload(proxy.port, keys[:400], threads=2) as w:
        reload(proxy, env.config(mcs, proxy.port, rate=1000))
        wait_moved(proxy.port, 200)
        w.stop.set()
        for t in w.threads:
            t.join(30)
        assert proxy.stop() == 0        # graceful, sanitizer-clean, mid-migration
    proxy.start()
    wait_ready(proxy.port)
    wait_migrated(proxy.port, 2)
    assert_all_hit(proxy.port, keys[400:])
    assert_placement(proxy, mcs, keys)


def test_nothing_changes_until_every_live_proxy_proposes_the_ring(env):
    mcs = env.servers(4)
    a = env.proxy(mcs[:3])
    b = env.proxy(mcs[:3])
    keys = fill(a.port, 3000)
    time.sleep(0.3)
    reload(a, env.config(mcs, a.port))
    deadline = time.monotonic() + 10
    while "proposed; waiting for" not in a.log():
        assert time.monotonic() < deadline, a.log()[-3000:]
        time.sleep(0.05)
    time.sleep(1.5)     # b still proposes the old ring: nothing may change
    st = proxy_stats(a.port)
    assert st["migration:state"] == "proposed" and st["migration:phase"] == "none"
    assert int(st["migration:keys_moved"]) == 0 and int(st["migration:epoch"]) == 1
    assert env.r.hget("rp:cache:ring", "epoch") == b"1"
    assert not env.r.exists("rp:cache:migration")
    # a serves the recorded ring, not its file's: writes through either
    # proxy are read back through the other.
    ca = Client(("127.0.0.1", a.port), default_noreply=False)
    cb = Client(("127.0.0.1", b.port), default_noreply=False)
    for k in keys[:300]:
        assert ca.set(k, b"via-a") and cb.get(k) == b"via-a"
    reload(b, env.config(mcs, b.port))
    wait_migrated(a.port, 2)
    wait_migrated(b.port, 2)
    for p in (a, b):
        assert_all_hit(p.port, keys[300:])
    assert ca.get(keys[0]) == b"via-a"
    assert_placement(a, mcs, keys)
    ca.close()
    cb.close()


class FakeProxy:
    """A heartbeat in Redis for a proxy that acknowledges `ack` and nothing
    more, copied from a real proxy's: the fleet then waits for it, and the
    real proxies stay in the phase the test wants. It acknowledges nothing of
    a migration at first ("stable"), which holds the fleet in `prepared`;
    "prepared" lets it go to `switched`, "switched" to `moving` (migrate.c:
    acked_prepared, acked_switched). Until 2026-12 it started at "prepared",
    so the fleet left `prepared` within half a second and the tests "held in
    prepared" failed whenever they took longer."""

    def __init__(self, r, prefix="rp:cache"):
        self.r, self.key, self.ack = r, prefix + ":proxies", "stable"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def beat(self):
        # a real proxy's heartbeat (not a sweeper's announcement, which has
        # three fields: docs/ARCHITECTURE.md, "The sweeper")
        model = next(v.decode() for k, v in self.r.hgetall(self.key).items()
                     if not k.startswith(b"fake") and not k.startswith(b"sweeper:"))
        _, want, _, to = model.split(" ")
        secs, usecs = self.r.time()
        self.r.hset(self.key, "fake:1", "%d %s %s %s" % (secs * 1000 + usecs // 1000,
                                                          want, self.ack, to))

    def run(self):
        while not self.stop.is_set():
            self.beat()
            time.sleep(0.1)

    def __enter__(self):
        self.beat()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.r.hdel(self.key, "fake:1")


def wait_phase(port, phase, timeout=15):
    deadline = time.monotonic() + timeout
    while proxy_stats(port)["migration:phase"] != phase:
        assert time.monotonic() < deadline, proxy_stats(port)
        time.sleep(0.05)


def every_command(c, moving, mcs, fresh):
    """Each command on a changing key answers as one memcached would."""
    g, s, d, ad, rp, ap, pp, cs, inc, tch, gat, num = moving
    assert c.get(g) == fresh(g)
    assert c.set(s, b"new") and c.get(s) == b"new"
    assert c.delete(d) and c.get(d) is None and not c.delete(d)
    assert not c.add(ad, b"x") and c.get(ad) == fresh(ad)
    assert c.delete(ad) and c.add(ad, b"added") and c.get(ad) == b"added"
    assert not c.add(ad, b"again") and c.get(ad) == b"added"
    assert c.replace(rp, b"r") and c.get(rp) == b"r"
    assert c.append(ap, b"+") and c.get(ap) == fresh(ap) + b"+"
    assert c.prepend(pp, b"-") and c.get(pp) == b"-" + fresh(pp)
    value, token = c.gets(cs)
    assert value == fresh(cs)
    assert c.cas(cs, b"swapped", token) and not c.cas(cs, b"again", token)
    assert c.set(num, b"41") and c.incr(num, 1) == 42 and c.decr(num, 2) == 40
    assert c.touch(tch, 100) and c.get(tch) == fresh(tch)
    assert c.set(d, b"back") and c.get(d) == b"back" and c.delete(d)
    with socket.create_connection(("127.0.0.1", c.server[1])) as raw:
        raw.sendall(b"gat 100 " + gat.encode() + b"\r\n")
        want = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (gat.encode(), len(fresh(gat)),
                                                   fresh(gat))
        got = b""
        while not got.endswith(b"END\r\n"):
            got += raw.recv(4096)
        assert got == want
        raw.sendall(b"incr " + inc.encode() + b" 1\r\n")
        assert raw.recv(4096).startswith(b"CLIENT_ERROR")


@pytest.mark.parametrize("phase", ["prepared", "moving"])
def test_every_command_on_a_changing_key_behaves_as_on_one_server(env, phase):
    """While the fleet is held in a phase (a fake proxy acknowledges no
    further), every command on a key whose owner changes answers as a single
    memcached would, through either proxy, and its effect survives the
    move. In "moving" the mover is held back (rate 1), so the switched rules
    run on keys still on their old owner."""
    mcs = env.servers(4)
    a = env.proxy(mcs[:3], rate=1)
    b = env.proxy(mcs[:3], rate=1)
    keys = ["k%d" % i for i in range(3000)]
    fill(a.port, 3000)
    time.sleep(0.3)
    with open(a.conf_path + ".new", "w") as f:
        f.write(env.config(mcs, a.port))
    after = locate(a.conf_path + ".new", keys)
    moving = [k for k in keys if after[k] == "mc4"][:24]
    assert len(moving) == 24
    fresh = lambda k: ("v-" + k).encode()
    time.sleep(1.2)     # both heartbeats are in Redis
    with FakeProxy(env.r) as fake:
        reload(a, env.config(mcs, a.port, rate=1))
        reload(b, env.config(mcs, b.port, rate=1))
        wait_phase(a.port, "prepared")
        if phase == "moving":
            fake.ack = "switched"
            wait_phase(a.port, "moving")
        ca = Client(("127.0.0.1", a.port), default_noreply=False)
        cb = Client(("127.0.0.1", b.port), default_noreply=False)
        every_command(ca, moving[:12], mcs, fresh)
        every_command(cb, moving[12:], mcs, fresh)
        # Written through one proxy, read through the other.
        for i, k in enumerate(moving):
            assert (ca if i % 2 else cb).set(k, b"x-" + k.encode())
            assert (cb if i % 2 else ca).get(k) == b"x-" + k.encode()
        assert proxy_stats(a.port)["migration:phase"] == phase
        fake.ack = "switched"
        reload(a, env.config(mcs, a.port, rate=0))     # release the mover
        reload(b, env.config(mcs, b.port, rate=0))
        wait_migrated(a.port, 2)
        wait_migrated(b.port, 2)
    for k in moving:
        assert ca.get(k) == b"x-" + k.encode() and cb.get(k) == b"x-" + k.encode()
    held = {m.ident: m.keys() for m in mcs}
    for k in moving:
        assert k.encode() in held[4] and all(k.encode() not in held[i] for i in (1, 2, 3))
    ca.close()
    cb.close()


def test_a_source_server_that_stalls_mid_migration_loses_nothing(env):
    mcs = env.servers(4)
    proxy = env.proxy(mcs[:3], rate=2000)
    keys = fill(proxy.port, 9000)
    time.sleep(0.3)
    reload(proxy, env.config(mcs, proxy.port, rate=2000))
    wait_moved(proxy.port, 200)
    mcs[0].proc.send_signal(signal.SIGSTOP)     # unreachable, data intact
    try:
        time.sleep(3.0)                         # longer than the 2 s timeout
    finally:
        mcs[0].proc.send_signal(signal.SIGCONT)
    st = wait_migrated(proxy.port, 2)
    assert int(st["migration:keys_failed"]) > 0     # the stall really hit moves
    assert_all_hit(proxy.port, keys)
    assert_placement(proxy, mcs, keys)


def test_redis_killed_mid_migration_resumes_when_it_returns(env):
    mcs = env.servers(4)
    proxy = env.proxy(mcs[:3], rate=2000)
    keys = fill(proxy.port, 9000)
    time.sleep(0.3)
    reload(proxy, env.config(mcs, proxy.port, rate=2000))
    wait_moved(proxy.port, 300)
    env.redis.kill()
    # Clients are served meanwhile, with the fallback for moving keys.
    assert_all_hit(proxy.port, keys[::10])
    time.sleep(1.0)
    env.redis.start()           # same port, its data back from the AOF
    wait_migrated(proxy.port, 2)
    assert_all_hit(proxy.port, keys)
    assert_placement(proxy, mcs, keys)


def test_pointing_the_pool_back_mid_migration_moves_the_moved_keys_back(env):
    """SIGHUP with the old list while a resize runs: the recorded migration
    finishes, then the fleet migrates back; every key ends on its owner in
    the old ring, none left on the server that was added."""
    mcs = env.servers(4)
    proxy = env.proxy(mcs[:3], rate=3000)
    keys = fill(proxy.port, 9000)
    time.sleep(0.3)
    reload(proxy, env.config(mcs, proxy.port, rate=3000))
    wait_moved(proxy.port, 300)
    reload(proxy, env.config(mcs[:3], proxy.port, rate=0))
    deadline = time.monotonic() + 5
    while int(proxy_stats(proxy.port)["migration:pending_change"]) != 1:
        assert time.monotonic() < deadline, "the change back is not pending"
        time.sleep(0.02)
    wait_migrated(proxy.port, 3)
    assert_all_hit(proxy.port, keys)
    assert_placement(proxy, mcs[:3], keys)
    assert mcs[3].keys() == set()


def test_a_stopped_proxy_leaves_the_fleet_at_once(env):
    """SIGTERM removes the proxy's heartbeat and lease (at once: it has no
    client, nothing in flight): the others need not wait out the liveness
    time to resize without it."""
    mcs = env.servers(4)
    a = env.proxy(mcs[:3], extra={"migration": {"rate": 0, "liveness": 60000}})
    b = env.proxy(mcs[:3], extra={"migration": {"rate": 0, "liveness": 60000}})
    keys = fill(a.port, 2000)
    deadline = time.monotonic() + 10
    while len(env.r.hgetall("rp:cache:proxies")) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert b.stop() == 0
    assert len(env.r.hgetall("rp:cache:proxies")) == 1
    reload(a, env.config(mcs, a.port, extra={"migration": {"rate": 0, "liveness": 60000}}))
    wait_migrated(a.port, 2, timeout=20)       # far less than the 60 s liveness
    assert_all_hit(a.port, keys)
    assert_placement(a, mcs, keys)


def test_a_pool_removed_mid_migration_is_torn_down_cleanly(env, cluster):
    """A reload that removes a pool while it moves keys: its migration, its
    meta connections (moves in flight fail) and its backends are closed and
    freed at the end of a loop turn, and the config it pointed into once the
    pool is gone (docs/ARCHITECTURE.md, "Teardown"). The other pool keeps
    serving and the process stops sanitizer-clean."""
    mcs = env.servers(4)
    plain_mc = cluster.memcached(1)[0]
    port, plain_port = free_port(), free_port()
    plain = pool_yaml("plain", plain_port, [(plain_mc.addr, 1, None)], hash="md5")
    proxy = cluster.proxy(env.config(mcs[:3], port, rate=300) + plain, port=port)
    wait_ready(port)
    fill(port, 6000)
    reload(proxy, env.config(mcs, port, rate=300) + plain)
    wait_moved(port, 50)
    assert proxy_stats(port)["migration:state"] != "idle"
    held = socket.create_connection(("127.0.0.1", port))   # drained by the removal

    reload(proxy, plain)
    deadline = time.monotonic() + SETTLE
    while not any(line.endswith("pool cache: removed") for line in proxy.log().splitlines()):
        assert time.monotonic() < deadline, "the removed pool was never freed"
        time.sleep(0.05)
    assert held.recv(1) == b""      # the proxy closed it
    held.close()

    c = Client(("127.0.0.1", plain_port))
    for i in range(200):
        c.set("p%d" % i, b"v%d" % i, noreply=False)
    assert all(c.get("p%d" % i) == b"v%d" % i for i in range(200))
    c.close()
    assert proxy.proc.poll() is None
    assert proxy.stop() == 0        # ASan/LSan: nothing used after free, nothing lost


def meta_steps(k, k2):
    """Meta commands on two changing keys (k holds "v-<k>"; k2 is deleted
    first), each step answered as one memcached answers it."""
    from test_meta import cmd, ms
    return [
        cmd(b"mg " + k + b" v f k O1"), cmd(b"mg " + k + b" s t v q") + cmd(b"mn"),
        # the most flags a moving key takes (15), without c and f: the two
        # the proxy adds on the old owner (move.c, meta_judged_line) fit
        cmd(b"mg " + k + b" v s t k O8 u N30 T0 R5 C1 F2 M3 J4 D5 P"),
        cmd(b"mg " + k + b" v s t k O9 u T0 R5 q C1 F2 M3 J4 D5") + cmd(b"mn"),
        cmd(b"mg " + k + b" q") + cmd(b"mn"), cmd(b"me " + k),
        ms(k, b"new", b"T0 F5 k"), cmd(b"mg " + k + b" v f"),
        ms(k, b"+", b"MA O2"), ms(k, b"-", b"MP q") + cmd(b"mn"), cmd(b"mg " + k + b" v"),
        ms(k, b"x", b"ME k"), ms(k, b"x", b"ME q") + cmd(b"mn"),
        cmd(b"md " + k + b" q") + cmd(b"mn"), cmd(b"mg " + k + b" v"),
        cmd(b"mg " + k + b" v q k") + cmd(b"mn"), cmd(b"md " + k + b" k"),
        ms(k, b"ad", b"ME k"), cmd(b"mg " + k + b" v"), ms(k, b"r", b"MR q") + cmd(b"mn"),
        cmd(b"mg " + k + b" c v"), ms(k, b"cas", b"C{cas}"), ms(k, b"no", b"C{oldcas}"),
        cmd(b"mg " + k + b" v"), ms(k, b"41"), cmd(b"ma " + k + b" v"),
        cmd(b"ma " + k + b" MD D2 v O3"), cmd(b"ma " + k + b" q") + cmd(b"mn"),
        cmd(b"mg " + k + b" v"), cmd(b"md " + k), cmd(b"ma " + k + b" N0 J7 v"),
        cmd(b"ma " + k + b" q N0") + cmd(b"mn"), cmd(b"mg " + k + b" v T100 t"),
        cmd(b"md " + k2 + b" q") + cmd(b"mn"), cmd(b"mg " + k2 + b" N30 v"),
        cmd(b"mg " + k2 + b" v"), ms(k2, b"filled", b"T0"), cmd(b"mg " + k2 + b" v"),
        cmd(b"mg " + k2 + b" T0 v"), cmd(b"ma " + k2 + b" v"),
        # too large: refused, and the old value unlinked (as memcached does)
        ms(k2, b"x" * 2097153), cmd(b"mg " + k2 + b" v"),
    ]


@pytest.mark.parametrize("phase", ["prepared", "moving"])
def test_meta_commands_on_changing_keys_answer_as_one_server(env, cluster, phase):
    """The meta protocol's counterpart of the test above: while the fleet
    is held in a phase, meta commands on keys whose owner changes get the
    answers one memcached gives (differential, against a direct memcached
    holding the same keys), and their effects survive the move."""
    from test_meta import normalise, run_battery
    mcs = env.servers(4)
    a = env.proxy(mcs[:3], rate=1)
    keys = ["k%d" % i for i in range(3000)]
    fill(a.port, 3000)
    time.sleep(0.3)
    with open(a.conf_path + ".new", "w") as f:
        f.write(env.config(mcs, a.port))
    after = locate(a.conf_path + ".new", keys)
    moving = [k for k in keys if after[k] == "mc4"][:8]
    assert len(moving) == 8
    direct, = cluster.memcached(1)
    dc = Client(("127.0.0.1", direct.port), default_noreply=False)
    dc.set_many({k: ("v-" + k).encode() for k in moving})
    steps = []
    for i in range(0, 8, 2):
        steps += meta_steps(moving[i].encode(), moving[i + 1].encode())
    time.sleep(1.2)     # the heartbeat is in Redis
    with FakeProxy(env.r) as fake:
        reload(a, env.config(mcs, a.port, rate=1))
        wait_phase(a.port, "prepared")
        if phase == "moving":
            fake.ack = "switched"
            wait_phase(a.port, "moving")
        got = run_battery(("127.0.0.1", a.port), steps)
        # all but the refused me commands ran by the migration's rules (on
        # another thread's connection the figures are a tick late at most)
        st = wait_until(lambda: (lambda s: s if int(s["migration:client_commands"]) >=
                                 len(steps) - 4 and int(s["meta_moving_refused"]) == 4
                                 else None)(proxy_stats(a.port)),
                        what="the commands counted")
        assert st["migration:phase"] == phase
        fake.ack = "switched"
        reload(a, env.config(mcs, a.port, rate=0))     # release the mover
        wait_migrated(a.port, 2)
    want = run_battery(("127.0.0.1", direct.port), steps)
    for i, (g, w) in enumerate(zip(got, want)):
        if steps[i].startswith(b"me "):
            # me: the proxy refuses it on a moving key (its reply is not
            # one the migration's connections read)
            assert g.startswith(b"SERVER_ERROR ringproxy"), (i, g)
            continue
        assert normalise(g) == normalise(w), (i, steps[i], g, w)
    # the effects survived the move: every key reads as on the direct server
    final = [cmd for k in moving for cmd in [b"mg " + k.encode() + b" v f\r\n"]]
    assert [normalise(x) for x in run_battery(("127.0.0.1", a.port), final)] == \
        [normalise(x) for x in run_battery(("127.0.0.1", direct.port), final)]
    held = {m.ident: m.keys() for m in mcs}
    for k in moving:
        assert all(k.encode() not in held[i] for i in (1, 2, 3))
    dc.close()


def grow_plan(env, proxy, mcs, n=3000):
    """n keys stored through proxy, and the resize to every server of mcs
    written beside its file (".new"): (keys, owner before, owner after)."""
    keys = ["k%d" % i for i in range(n)]
    fill(proxy.port, n)
    time.sleep(0.3)
    before = locate(proxy.conf_path, keys)
    with open(proxy.conf_path + ".new", "w") as f:
        f.write(env.config(mcs, proxy.port))
    return keys, before, locate(proxy.conf_path + ".new", keys)


TOMB_FLAGS = 0x52505442             # migrate_int.h: MIG_TOMB_FLAGS, _VALUE, _TTL
TOMB_VALUE = b"ringproxy:tombstone:v1"


def switched_delete(old, new, key):
    """What a delete through a switched proxy leaves (move.c, on_del_lookup):
    the real value on the old owner replaced by a tombstone, the key deleted
    on the new owner."""
    with socket.create_connection(("127.0.0.1", old.port)) as s:
        s.sendall(b"ms %s %d F%d T86400\r\n%s\r\n" % (key, len(TOMB_VALUE), TOMB_FLAGS,
                                                     TOMB_VALUE))
        assert s.recv(4096) == b"HD\r\n"
    with socket.create_connection(("127.0.0.1", new.port)) as s:
        s.sendall(b"md %s q\r\nmn\r\n" % key)
        assert s.recv(4096).endswith(b"MN\r\n")


def moved_away(old, new, key):
    """What the mover leaves once it moved a key: the value (and flags) on
    the new owner, the key deleted on the old one."""
    with socket.create_connection(("127.0.0.1", old.port)) as s:
        s.sendall(b"mg %s v f\r\n" % key)
        got = b""
        while not got.endswith(b"\r\n") or got.count(b"\r\n") < 2:
            got += s.recv(4096)
        head, value = got.split(b"\r\n")[:2]
        flags = head.split(b" f")[1]
        s.sendall(b"md %s\r\n" % key)
        assert s.recv(4096) == b"HD\r\n"
    with socket.create_connection(("127.0.0.1", new.port)) as s:
        s.sendall(b"ms %s %d F%s\r\n%s\r\n" % (key, len(value), flags, value))
        assert s.recv(4096) == b"HD\r\n"


@pytest.mark.parametrize("phase", ["prepared", "moving"])
def test_meta_commands_over_a_tombstone_answer_as_for_no_key(env, cluster, phase):
    """A tombstone on the old owner (a switched proxy's delete, while the
    fleet is held in a phase) is a deleted key for every meta command, as
    for the text ones: mg misses, mg N and ma N create the key without
    answering the tombstone's bytes, ms ME stores, ms MA N appends to
    nothing, each answered as one memcached answers for a key it does not
    hold; the created values read the same through both proxies and after
    the move."""
    from test_meta import cmd, ms, normalise, run_battery
    mcs = env.servers(4)
    a = env.proxy(mcs[:3], rate=1)
    b = env.proxy(mcs[:3], rate=1)
    keys, before, after = grow_plan(env, a, mcs)
    moving = [k.encode() for k in keys if after[k] == "mc4"][:5]
    assert len(moving) == 5
    k1, k2, k3, k4, k5 = moving
    steps = [cmd(b"mg " + k1 + b" v"), cmd(b"mg " + k1 + b" v q") + cmd(b"mn"),
             cmd(b"mg " + k1 + b" N30 v"), cmd(b"mg " + k2 + b" N30 v q") + cmd(b"mn"),
             cmd(b"ma " + k3 + b" N0 J5 v"), ms(k4, b"added", b"ME"),
             ms(k5, b"tail", b"MA N30")]
    final = [cmd(b"mg " + k + b" v f") for k in moving]
    direct, = cluster.memcached(1)      # holds none of them
    time.sleep(1.2)     # both heartbeats are in Redis
    with FakeProxy(env.r) as fake:
        reload(a, env.config(mcs, a.port, rate=1))
        reload(b, env.config(mcs, b.port, rate=1))
        wait_phase(a.port, "prepared")
        wait_phase(b.port, "prepared")
        if phase == "moving":
            fake.ack = "switched"
            wait_phase(a.port, "moving")
            wait_phase(b.port, "moving")
        for k in moving:
            switched_delete(mcs[int(before[k.decode()][2:]) - 1], mcs[3], k)
        got = run_battery(("127.0.0.1", a.port), steps)
        want = run_battery(("127.0.0.1", direct.port), steps)
        wrong = [(s, g, w) for s, g, w in zip(steps, got, want)
                 if TOMB_VALUE in g or normalise(g) != normalise(w)]
        assert not wrong
        want = [normalise(x) for x in run_battery(("127.0.0.1", direct.port), final)]
        for p in (a, b):
            assert [normalise(x) for x in run_battery(("127.0.0.1", p.port), final)] == want
        assert proxy_stats(a.port)["migration:phase"] == phase
        fake.ack = "switched"
        reload(a, env.config(mcs, a.port, rate=0))     # release the mover
        reload(b, env.config(mcs, b.port, rate=0))
        wait_migrated(a.port, 2)
        wait_migrated(b.port, 2)
    # the mover's copy is a new item: the vivified one's win state (Z) stays
    # behind on the old owner
    won = lambda answers: [re.sub(rb" Z(?=\r\n)", b"", x) for x in answers]
    for p in (a, b):
        assert won(normalise(x) for x in run_battery(("127.0.0.1", p.port), final)) == \
            won(want)
    held = {m.ident: m.keys() for m in mcs}
    exist = direct.keys()       # ms MA N does not create (memcached 1.6.18)
    for k in moving:
        assert (k in held[4]) == (k in exist) and all(k not in held[i] for i in (1, 2, 3))
    assert len(exist) == 4


@pytest.mark.parametrize("phase", ["prepared", "moving"])
def test_a_value_next_to_a_tombstone_is_no_key_for_any_command(env, cluster, phase):
    """A tombstone on the old owner and a value on the new one: a write in
    doubt (its connection lost when the new owner stopped) that landed after
    a switched proxy's delete. Reads miss, so no command may act on that
    value (move.c, tomb_next_to_value): the text commands that modify a
    value answer as for no key and leave it alone; add and the meta
    commands, whose answer depends on it, answer SERVER_ERROR rather than
    act; the mover settles the pair for the old owner, so the key is gone
    after the move."""
    from test_meta import cmd, ms, run_battery
    mcs = env.servers(4)
    # the mover settles the pair once it stood still for 2 timeouts + half
    # the liveness + 1 s (move.c, conflict_settled): short ones keep it brief
    quick = lambda rate: {"timeout": 500, "migration": {
        "rate": rate, "delete_source": True, "liveness": 2000}}
    a = env.proxy(mcs[:3], extra=quick(1))
    keys, before, after = grow_plan(env, a, mcs)
    k = next(x.encode() for x in keys if after[x] == "mc4")
    late = b"late-copy"
    text = [cmd(b"get " + k), cmd(b"gets " + k), cmd(b"gat 100 " + k),
            cmd(b"append %s 0 0 1\r\n+" % k), cmd(b"prepend %s 0 0 1\r\n-" % k),
            cmd(b"replace %s 0 0 1\r\nr" % k), cmd(b"cas %s 0 0 1 1\r\nc" % k),
            cmd(b"incr %s 1" % k), cmd(b"decr %s 1" % k), cmd(b"touch %s 100" % k),
            cmd(b"delete " + k)]
    text_want = [b"END\r\n"] * 3 + [b"NOT_STORED\r\n"] * 3 + [b"NOT_FOUND\r\n"] * 5
    refused = [cmd(b"add %s 0 0 1\r\na" % k), cmd(b"mg %s v" % k), cmd(b"mg %s N30 v" % k),
               ms(k, b"+", b"MA"), ms(k, b"x", b"ME"), cmd(b"ma %s" % k),
               cmd(b"md %s C1" % k), cmd(b"md %s" % k), cmd(b"md %s q" % k)]
    time.sleep(1.2)     # the heartbeat is in Redis
    with FakeProxy(env.r) as fake:
        reload(a, env.config(mcs, a.port, extra=quick(1)))
        wait_phase(a.port, "prepared")
        if phase == "moving":
            fake.ack = "switched"
            wait_phase(a.port, "moving")
        switched_delete(mcs[int(before[k.decode()][2:]) - 1], mcs[3], k)
        with socket.create_connection(("127.0.0.1", mcs[3].port)) as s:
            s.sendall(ms(k, late))
            assert s.recv(4096) == b"HD\r\n"
        got = run_battery(("127.0.0.1", a.port), text + refused)
        assert got[:len(text)] == text_want
        assert all(g.startswith(b"SERVER_ERROR") for g in got[len(text):]), got
        assert run_battery(("127.0.0.1", mcs[3].port), [cmd(b"mg %s v" % k)]) == \
            [b"VA %d\r\n%s\r\n" % (len(late), late)]       # untouched
        assert proxy_stats(a.port)["migration:phase"] == phase
        fake.ack = "switched"
        reload(a, env.config(mcs, a.port, extra=quick(0)))     # release the mover
        wait_migrated(a.port, 2)
    assert run_battery(("127.0.0.1", a.port), [cmd(b"get " + k)]) == [b"END\r\n"]
    assert all(k not in m.keys() for m in mcs)


class Relay(TcpRelay):
    """A byte relay in front of a memcached server that runs the test's
    action (once) just before it passes on a command line the test armed:
    something then happens on the server exactly between two of the proxy's
    commands, with no timing involved. `hooks` maps a line (a prefix of
    whole tokens) to its action; relays may share it."""

    def __init__(self, target_port, hooks):
        self.hooks = hooks
        super().__init__(target_port)

    def attach(self, client, server):
        threading.Thread(target=self.up, args=(client, server), daemon=True).start()
        threading.Thread(target=self.down, args=(server, client), daemon=True).start()

    @staticmethod
    def down(src, dst):
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                dst.sendall(chunk)
        except OSError:
            pass
        dst.close()

    def armed(self, line):
        for armed in list(self.hooks):
            if line == armed or line.startswith(armed + b" "):
                return self.hooks.pop(armed, None)
        return None

    def up(self, src, dst):
        buf = b""
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    action = self.armed(line)
                    if action is not None:
                        action()
                    dst.sendall(line + b"\r\n")
        except OSError:
            pass
        dst.close()


@pytest.mark.parametrize("phase", ["prepared", "moving"])
def test_mg_never_answers_a_tombstone_written_after_its_lookup(env, cluster, phase):
    """mg takes no condition (issue 12): between the proxy's lookup on the
    old owner, which finds the real value, and the client's own line there,
    a switched proxy's delete replaces the value by a tombstone (a relay
    writes it just before the line reaches the server). mg plain, quiet,
    without v and with N answer as one memcached answers for a deleted key,
    never the tombstone's bytes nor the return flags the proxy added. An mg
    with N whose value the mover took away in that moment answers the value
    from its new owner, never an item it created on the old one."""
    from test_meta import cmd, normalise, run_battery
    mcs = env.servers(4)
    hooks = {}
    relays = [Relay(m.port, hooks) for m in mcs[:3]]
    fronts = [SimpleNamespace(addr=r.addr, ident=m.ident) for r, m in zip(relays, mcs)]
    a = env.proxy(fronts, rate=1)
    keys = ["k%d" % i for i in range(3000)]
    fill(a.port, 3000)
    time.sleep(0.3)
    before = locate(a.conf_path, keys)
    with open(a.conf_path + ".new", "w") as f:
        f.write(env.config(fronts + [mcs[3]], a.port))
    after = locate(a.conf_path + ".new", keys)
    moving = [k.encode() for k in keys if after[k] == "mc4"][:5]
    assert len(moving) == 5
    k1, k2, k3, k4, k5 = moving
    lines = [b"mg " + k1 + b" v k O7", b"mg " + k2 + b" s v", b"mg " + k3 + b" N30 v",
             b"mg " + k4 + b" k", b"mg " + k5 + b" N30 v"]
    steps = [cmd(lines[0]), cmd(lines[1] + b" q") + cmd(b"mn"), cmd(lines[2]),
             cmd(lines[3]), cmd(lines[4])]
    # The line an mg N runs on O carries no N (move.c,
    # meta_line_without_vivify) but the flags the proxy judges it by.
    armed = [lines[0], lines[1], b"mg " + k3 + b" v c", lines[3], b"mg " + k5 + b" v c"]
    direct, = cluster.memcached(1)      # holds none of k1..k4
    # k5's value is not deleted but moved away (as the mover moves it):
    # one memcached holding it answers it.
    Client(("127.0.0.1", direct.port), default_noreply=False).set(k5, b"v-" + k5)
    time.sleep(1.2)     # the heartbeat is in Redis
    with FakeProxy(env.r) as fake:
        reload(a, env.config(fronts + [mcs[3]], a.port, rate=1))
        wait_phase(a.port, "prepared")
        if phase == "moving":
            fake.ack = "switched"
            wait_phase(a.port, "moving")
        for line, k in zip(armed, moving):
            old = mcs[int(before[k.decode()][2:]) - 1]
            if k == k5:
                hooks[line] = (lambda o=old, key=k: moved_away(o, mcs[3], key))
            else:
                hooks[line] = (lambda o=old, key=k: switched_delete(o, mcs[3], key))
        got = run_battery(("127.0.0.1", a.port), steps)
        assert not hooks        # each tombstone came between lookup and line
        assert proxy_stats(a.port)["migration:phase"] == phase
    want = run_battery(("127.0.0.1", direct.port), steps)
    assert not [g for g in got if TOMB_VALUE in g]
    assert [normalise(g) for g in got] == [normalise(w) for w in want]
    for r in relays:
        r.close()


class PausableRelay(TcpRelay):
    """A byte relay in front of Redis for one proxy: while paused, nothing
    passes either way (the proxy's commands and Redis's replies wait), as
    when a proxy is cut off from Redis for a while; resume() lets it all
    through in order."""

    def __init__(self, target_port):
        self.open = threading.Event()
        self.open.set()
        self.socks = []
        self.hold_on = None             # bytes: pause when a command has them
        self.held = threading.Event()
        super().__init__(target_port)

    def attach(self, client, server):
        self.socks += [client, server]
        for src, dst, up in ((client, server, True), (server, client, False)):
            threading.Thread(target=self.pump, args=(src, dst, up), daemon=True).start()

    def pump(self, src, dst, up):
        try:
            while True:
                chunk = src.recv(65536)
                if not chunk:
                    break
                if up and self.hold_on is not None and self.hold_on in chunk:
                    self.hold_on = None         # that command waits, paused
                    self.open.clear()
                    self.held.set()
                self.open.wait()
                dst.sendall(chunk)
        except OSError:
            pass
        dst.close()

    def pause(self):
        self.open.clear()

    def resume(self):
        self.open.set()

    def cut(self):
        """Redis goes away for the proxy: its connections close, and new
        ones are refused, until restore()."""
        self.sock.shutdown(socket.SHUT_RDWR)    # wakes the accept: the port is free
        self.sock.close()
        self.drop()

    def restore(self):
        """Redis is back, on the same port."""
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(128)
        threading.Thread(target=self._serve, daemon=True).start()

    def drop(self):
        """Close the connections relayed now."""
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.socks = []

    def close(self):
        super().close()
        self.open.set()
        self.drop()


def late_proxy_fleet(env, cluster, liveness=16000, timeout=None, end=None):
    """Two proxies over mc1..mc3 (each of those behind a Relay sharing
    .hooks, each proxy's Redis behind a PausableRelay), 3000 keys stored,
    and the resize to mc1..mc4 run to its end by the coordinator while the
    other proxy, the late one, is cut off from Redis: the late one is
    still switched, and no pass of the mover will look at the old owners
    again. liveness 16 s: the late proxy keeps serving for 8 s (then it
    fences) and stays in the fleet meanwhile. timeout: the pool's, in ms
    (None: the default). end(f, fake): run instead of that end, once the
    late proxy acknowledged `switched` (the fleet waits for `fake` until
    fake.ack says "switched"). Returns the set-up's parts (.late, .coord,
    .late_redis, .coord_redis, .conf, .fronts, ...)."""
    mcs = env.servers(4)
    f = SimpleNamespace(mcs=mcs, hooks={})
    f.relays = [Relay(m.port, f.hooks) for m in mcs[:3]]
    f.fronts = [SimpleNamespace(addr=r.addr, ident=m.ident)
                for r, m in zip(f.relays, mcs)] + [mcs[3]]
    f.redis_relays = [PausableRelay(env.redis.port) for _ in range(2)]
    extra = {"migration": {"rate": 0, "delete_source": True, "liveness": liveness}}
    if timeout is not None:
        extra["timeout"] = timeout
    f.conf = lambda port, servers, relay: pool_config(port, servers, relay.port, extra=extra)
    ports = [free_port(), free_port()]
    f.proxies = [cluster.proxy(f.conf(p, f.fronts[:3], r), port=p)
                 for p, r in zip(ports, f.redis_relays)]
    for p in f.proxies:
        wait_ready(p.port)
    f.keys, f.before, f.after = grow_plan(env, f.proxies[0], mcs)
    time.sleep(1.2)     # both heartbeats are in Redis
    with FakeProxy(env.r) as fake:
        for p, r in zip(f.proxies, f.redis_relays):
            reload(p, f.conf(p.port, f.fronts, r))
        for p in f.proxies:
            wait_phase(p.port, "prepared")
        fake.ack = "prepared"
        for p in f.proxies:
            wait_phase(p.port, "switched")
        lease = [int(proxy_stats(p.port)["migration:lease"]) == 1 for p in f.proxies]
        assert lease.count(True) == 1, lease
        coord = 0 if lease[0] else 1
        f.coord, f.late = f.proxies[coord], f.proxies[1 - coord]
        f.late_redis = f.redis_relays[1 - coord]
        f.coord_redis = f.redis_relays[coord]

        def late_acked():       # its acknowledgement of `switched` is in Redis
            beats = env.r.hgetall("rp:cache:proxies")
            return any(":%d:" % f.late.proc.pid in who.decode() and
                       beat.decode().split(" ")[2] == "switched"
                       for who, beat in beats.items())
        wait_until(late_acked, what="the late proxy's acknowledgement")
        if end is not None:
            end(f, fake)
            return f
        f.late_redis.pause()
        fake.ack = "switched"
        wait_migrated(f.coord.port, 2)
    assert proxy_stats(f.late.port)["migration:state"] != "idle"
    return f


def tomb_counts(st):
    return [int(st["migration:tombstones_" + x]) for x in ("written", "swept", "left")]


@pytest.mark.parametrize("how", ["in-time", "fenced", "unanswered"])
def test_a_tombstone_written_after_the_last_pass_is_removed_by_its_writer(env, cluster, how):
    """A delete through a proxy still switched after the mover's last look
    at the old owner (late_proxy_fleet) writes a tombstone no pass of the
    mover will find. Its writer removes it once it sees the new ring
    recorded, before it drops the migration (move.c, tomb_sweep). Before,
    the tombstone stayed for its day-long TTL, and a resize back to the old
    ring made that server the key's owner again: a plain get answered the
    tombstone's bytes as the key's value.
    `fenced`: the writer stays cut off past half the liveness, so it is
    fenced when Redis answers again, and stays so until it drops the
    migration: it removes the tombstone all the same (waiting for the fence
    to lift, it stayed fenced for good: make chaos, scenario l).
    `unanswered`: the tombstone's store gets no answer within the pool's
    timeout (the client is told SERVER_ERROR), then runs on the server: it
    is looked for and removed all the same."""
    f = late_proxy_fleet(env, cluster)
    k = next(x for x in f.keys if f.after[x] == "mc4")
    old = f.mcs[int(f.before[k][2:]) - 1]
    # The key, moved to mc4, is written again on its old owner around the
    # proxies; a delete through the late proxy (still switched) replaces it
    # by a tombstone there.
    Client(("127.0.0.1", old.port)).set(k, b"direct", noreply=False)
    if how == "unanswered":
        # the store reaches the server past the pool's timeout (2 s)
        f.hooks[b"ms " + k.encode()] = lambda: time.sleep(2.6)
        with socket.create_connection(("127.0.0.1", f.late.port)) as s:
            s.sendall(b"delete %s\r\n" % k.encode())
            assert s.recv(4096).startswith(b"SERVER_ERROR")
        wait_until(lambda: mc_value(old, k) == TOMB_VALUE, what="the tombstone landing late")
    else:
        assert Client(("127.0.0.1", f.late.port)).delete(k, noreply=False)
        assert mc_value(old, k) == TOMB_VALUE
    if how == "fenced":
        wait_until(lambda: int(proxy_stats(f.late.port)["migration:fenced"]) == 1,
                   timeout=15, what="the late proxy fenced")
    f.late_redis.resume()
    st = wait_migrated(f.late.port, 2)
    assert mc_value(old, k) is None
    assert tomb_counts(st) == [0 if how == "unanswered" else 1, 1, 0], st
    # The resize back: the old owner owns the key again. (The delete that
    # got no answer never reached mc4: the key reads its moved value.)
    want = ("v-" + k).encode() if how == "unanswered" else None
    for p, r in zip(f.proxies, f.redis_relays):
        reload(p, f.conf(p.port, f.fronts[:3], r))
    for p in f.proxies:
        wait_migrated(p.port, 3)
        assert Client(("127.0.0.1", p.port)).get(k) == want
    for r in f.relays + f.redis_relays:
        r.close()


BAD_TOMB_NOTES = [b"no-space-at-all", b"p bad\x01key mc1", b"p k0 no-such-server", b"p  mc1",
                  b"p k0 " + b"x" * 2000, b"p k%d mc1" % 10 ** 300, b"p k0"]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "redis-away", "refused", "garbage",
                                 "wrong-type"])
def test_a_tombstone_whose_writer_stopped_is_removed_by_the_fleet(env, cluster, how):
    """A delete through the late proxy, switched, after the coordinator's
    closing pass listed the old owners and before the new ring is recorded
    (the coordinator's Redis is held from its first listing), leaves a
    tombstone no pass will find; then its writer stops (SIGKILL; SIGTERM, as
    a binary upgrade does) before it could sweep it. The note it handed to
    the fleet (<prefix>:migration:tombs:<to>, move.c tomb_hand) is taken by
    the coordinator once the ring is recorded, and the tombstone removed.
    Before, the note lived in the writer's memory only: the tombstone stayed
    for its day-long TTL.
    `redis-away`: the writer's Redis is away when it writes the tombstone
    (its connections closed, new ones refused): the note is handed once
    Redis is back (tomb_hand_pending), and then the writer is SIGKILLed.
    `refused`: the writer is SIGKILLed, and Redis refuses the take for a
    while (an ACL without LTRIM): it is tried again until Redis allows it.
    `garbage`: the writer lives on, and entries that are no note of this
    migration sit in the list: skipped and counted as left, never sent.
    `wrong-type`: the list's key holds a string; the take is refused, and
    the migration ends all the same (the writer sweeps its own note)."""
    seen = SimpleNamespace()

    def end(f, fake):
        seen.k = next(x for x in f.keys if f.after[x] == "mc4")
        seen.old = f.mcs[int(f.before[seen.k][2:]) - 1]
        f.hooks[b"lru_crawler metadump"] = f.coord_redis.pause
        fake.ack = "switched"

        def listed():
            st = proxy_stats(f.coord.port)
            n = int(st.get("migration:closing_sources", 0))
            return n > 0 and int(st["migration:closing_sources_done"]) == n
        wait_until(listed, what="the closing pass over every source")
        assert not f.hooks and proxy_stats(f.coord.port)["migration:state"] != "idle"
        if how == "redis-away":
            f.late_redis.cut()
            wait_until(lambda: "lost the connection" in f.late.log(),
                       what="the late proxy without Redis")
        # Written around the proxies on the old owner, then deleted through
        # the late proxy: a tombstone replaces it there.
        Client(("127.0.0.1", seen.old.port)).set(seen.k, b"direct", noreply=False)
        assert Client(("127.0.0.1", f.late.port)).delete(seen.k, noreply=False)
        assert mc_value(seen.old, seen.k) == TOMB_VALUE
        if how == "redis-away":
            time.sleep(0.5)
            assert env.r.keys("rp:cache:migration:tombs:*") == []
            f.late_redis.restore()
        wait_until(lambda: [env.r.llen(x) for x in env.r.keys("rp:cache:migration:tombs:*")]
                   == [1], what="the note handed to Redis")
        notes, = env.r.keys("rp:cache:migration:tombs:*")
        entry, = env.r.lrange(notes, 0, -1)
        assert entry.endswith((" %s %s" % (seen.k, f.before[seen.k])).encode())
        assert (b":%d:" % f.late.proc.pid) in entry     # the writer's id
        assert 0 < env.r.pttl(notes) <= 86400 * 1000
        if how in ("SIGKILL", "redis-away", "refused"):
            f.late.kill()
        elif how == "SIGTERM":
            f.late.stop()
        elif how == "garbage":
            env.r.lpush(notes, *BAD_TOMB_NOTES)
        else:
            env.r.delete(notes)
            env.r.set(notes, b"not a list")
        if how == "refused":
            env.r.execute_command("ACL", "SETUSER", "default", "-ltrim")
        f.coord_redis.resume()
        if how == "refused":
            wait_until(lambda: "notes from Redis (NOPERM" in f.coord.log() or
                       "notes from Redis (ERR" in f.coord.log(), what="a refused take")
            assert proxy_stats(f.coord.port)["migration:state"] != "idle"
            env.r.execute_command("ACL", "SETUSER", "default", "+ltrim")
        seen.st = [wait_migrated(p.port, 2) for p in f.proxies if p.proc is not None]
        if how == "wrong-type":
            env.r.delete(notes)

    f = late_proxy_fleet(env, cluster, end=end)
    assert mc_value(seen.old, seen.k) is None
    counts = [sum(x) for x in zip(*(tomb_counts(st) for st in seen.st))]
    taken = sum(int(st["migration:tombstones_taken"]) for st in seen.st)
    handed = sum(int(st["migration:tombstones_handed"]) for st in seen.st)
    if how in ("SIGKILL", "SIGTERM", "redis-away", "refused"):
        assert counts == [0, 1, 0] and taken == 1 and handed == 0, seen.st
    elif how == "garbage":
        # the writer's own entry: taken by the coordinator, or skipped by
        # its writer, which has the note
        assert counts == [1, 1, len(BAD_TOMB_NOTES)] and taken <= 1 and handed == 1, seen.st
    else:
        assert counts == [1, 1, 0] and taken == 0 and handed == 1, seen.st
    assert env.r.keys("rp:cache:migration:tombs:*") == []
    for r in f.relays + f.redis_relays:
        r.close()


@pytest.mark.parametrize("when", ["taking", "sweeping"])
def test_a_proxy_stopped_after_taking_notes_sweeps_them_first(env, cluster, when):
    """The late proxy, told the new ring is recorded, takes the fleet's
    tombstone notes (one a stopped proxy left) and gets SIGTERM `taking`
    (its take in flight: Redis answers it after the signal) or `sweeping`
    (its look at the old owner in flight). The notes are out of the
    fleet's list, so it sweeps them before it exits (mig_left), though it
    left the fleet. Before, a proxy leaving sent no command at all: the
    sweep failed as if the server were down, and the tombstone stayed."""
    f = late_proxy_fleet(env, cluster)
    beat, = [b for w, b in env.r.hgetall("rp:cache:proxies").items()
             if (":%d:" % f.late.proc.pid) in w.decode()]
    notes = "rp:cache:migration:tombs:" + beat.decode().split(" ")[3]
    k = next(x for x in f.keys if f.after[x] == "mc4")
    old = f.mcs[int(f.before[k][2:]) - 1]
    switched_delete(old, f.mcs[3], k.encode())      # by a proxy since stopped
    env.r.rpush(notes, "gone-host:1:abcd %s %s" % (k, f.before[k]))
    assert mc_value(old, k) == TOMB_VALUE
    pid = f.late.proc.pid
    if when == "taking":
        f.late_redis.hold_on = b"LRANGE"
    else:
        f.hooks[b"mg " + k.encode()] = lambda: (os.kill(pid, signal.SIGTERM), time.sleep(0.3))
    f.late_redis.resume()
    if when == "taking":
        assert f.late_redis.held.wait(20), "no take"
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        f.late_redis.resume()
    f.late.proc.wait(timeout=15)
    assert f.late.stop() == 0 and not f.hooks
    assert env.r.llen(notes) == 0
    assert mc_value(old, k) is None
    for r in f.relays + f.redis_relays:
        r.close()


def test_tombstones_on_an_old_owner_that_does_not_answer_do_not_hold_the_end(env, cluster):
    """The old owner stalls (SIGSTOP) while the late proxy holds notes of
    70 tombstones on it, more than the 64 sweeps it runs at once: the first
    failed look drops the rest (move.c, tomb_left), so the migration ends
    after one timeout, every one of them counted as left, and the pool
    serves by the new ring."""
    f = late_proxy_fleet(env, cluster)
    name = f.before[next(x for x in f.keys if f.after[x] == "mc4")]
    old = f.mcs[int(name[2:]) - 1]
    keys = [x for x in f.keys if f.after[x] == "mc4" and f.before[x] == name][:70]
    assert len(keys) == 70
    direct = Client(("127.0.0.1", old.port))
    late = Client(("127.0.0.1", f.late.port))
    for k in keys:
        direct.set(k, b"direct", noreply=False)
        assert late.delete(k, noreply=False)
    with paused(old):
        f.late_redis.resume()
        st = wait_migrated(f.late.port, 2, timeout=20)
        assert tomb_counts(st) == [70, 0, 70], st
        other = next(x for x in f.keys if f.after[x] == "mc4")
        late.set(other, b"after", noreply=False)
        assert late.get(other) == b"after"
    dropped = [int(n) for n in re.findall(
        r"(\d+) tombstones? this proxy wrote may stay on server %s " % name, f.late.log())]
    assert dropped and max(dropped) == 70 - 64 + 1, dropped
    for r in f.relays + f.redis_relays:
        r.close()


@pytest.mark.parametrize("redis_emptied", [False, True], ids=["", "redis-emptied"])
def test_a_sweep_held_back_by_a_stale_sync_is_sent_after_the_next(env, cluster, redis_emptied):
    """The late proxy reads the new ring recorded and looks for its
    tombstones on the old owner; Redis stops answering it just then (a
    hook on the first look, in the old owner's relay, holds that look and
    those behind it until the proxy is fenced, past half the liveness).
    When the old owner answers the looks, the fence holds the removals
    back. They used to fail as if the server did not answer, which dropped
    every note on it: the tombstones stayed for their TTL. Now the notes
    go back on the list and the removals are sent after the next sync
    (move.c: mop_send's mop_held, tomb_left).
    `redis-emptied`: Redis comes back empty (the coordinator cut off), so
    the late proxy, still holding the migration for its sweeps, writes the
    first record: the new ring, which the data obeys (it wrote the old)."""
    f = late_proxy_fleet(env, cluster, timeout=12000)   # the looks outlive the hold
    name = f.before[next(x for x in f.keys if f.after[x] == "mc4")]
    old = f.mcs[int(name[2:]) - 1]
    keys = [x for x in f.keys if f.after[x] == "mc4" and f.before[x] == name][:5]
    direct = Client(("127.0.0.1", old.port))
    late = Client(("127.0.0.1", f.late.port))
    for k in keys:
        direct.set(k, b"direct", noreply=False)
        assert late.delete(k, noreply=False)
    held = threading.Event()

    def hold():
        f.late_redis.pause()
        wait_until(lambda: int(proxy_stats(f.late.port)["migration:fenced"]) == 1,
                   timeout=15, what="the late proxy fenced")
        held.set()
    gets = int(mc_stats(old)["cmd_get"])
    for k in keys:
        f.hooks[b"mg " + k.encode()] = hold
    f.late_redis.resume()
    assert held.wait(25), "no look, or no fence"
    f.hooks.clear()
    # Every look answered by memcached; the proxy reads the answers in its
    # next loop turn, well within 0.3 s, before Redis answers it again.
    # (Were it later, the removals would go out after a fresh sync, and the
    # test would pass without the fix: it cannot fail falsely.)
    wait_until(lambda: int(mc_stats(old)["cmd_get"]) >= gets + len(keys),
               what="the looks answered")
    time.sleep(0.3)
    assert int(proxy_stats(f.late.port)["migration:fenced"]) == 1
    coord_redis = f.redis_relays[1 - f.redis_relays.index(f.late_redis)]
    if redis_emptied:
        coord_redis.pause()
        env.r.flushall()
    f.late_redis.resume()
    st = wait_migrated(f.late.port, 2, timeout=30)
    assert tomb_counts(st) == [len(keys), len(keys), 0], st
    assert [mc_value(old, k) for k in keys] == [None] * len(keys)
    if redis_emptied:
        assert b"mc4" in env.r.hget("rp:cache:ring", "servers")
        assert env.r.hget("rp:cache:ring", "epoch") == b"2"
        coord_redis.resume()
    for r in f.relays + f.redis_relays:
        r.close()


class FakeBeside(FakeProxy):
    """A FakeProxy whose heartbeat copies the proxy of pid `pid` (another
    proxy's stale heartbeat may still be in Redis)."""

    def __init__(self, r, pid):
        self.pid = pid
        super().__init__(r)

    def beat(self):
        model = next(v.decode() for k, v in self.r.hgetall(self.key).items()
                     if ":%d:" % self.pid in k.decode() and not k.startswith(b"sweeper:"))
        _, want, _, to = model.split(" ")
        secs, usecs = self.r.time()
        self.r.hset(self.key, "fake:1", "%d %s %s %s" % (secs * 1000 + usecs // 1000,
                                                          want, self.ack, to))


@pytest.mark.parametrize("back", [False, True], ids=["onward", "back"])
def test_a_proxy_cut_off_across_two_resizes_follows_the_third(env, cluster, back):
    """The late proxy is cut off from Redis while switched in A -> B and
    stays cut off past the liveness: the fleet ends A -> B, runs B -> C
    without it, and opens C -> D. When Redis answers again, the records say
    ring C (epoch 3) and a migration C -> D. It used to keep A -> B (never
    recorded again, so never ended) and, no longer fenced, route by ring B
    where the data obeys C. It now drops A -> B and follows C -> D
    (migrate.c, mig_obsolete): a set through it lands on the key's owner
    under C, which prepared proxies write. `back`: C is A again (the resize
    undone), which a fingerprint does not tell from the start of A -> B;
    the epoch does."""
    f = late_proxy_fleet(env, cluster, liveness=3000)
    A, B = f.fronts[:3], f.fronts
    C = [f.fronts[0], f.fronts[1], f.fronts[3]]        # mc3 leaves
    D = A
    if back:
        C, D = A, C
    wait_until(lambda: int(proxy_stats(f.coord.port)["migration:live_proxies"]) == 1,
               what="the late proxy left out of the fleet")
    reload(f.coord, f.conf(f.coord.port, C, f.redis_relays[f.proxies.index(f.coord)]))
    wait_migrated(f.coord.port, 3)
    with FakeBeside(env.r, f.coord.proc.pid):           # holds C -> D in prepared
        reload(f.coord, f.conf(f.coord.port, D, f.redis_relays[f.proxies.index(f.coord)]))
        wait_phase(f.coord.port, "prepared")
        f.late_redis.resume()

        def following():
            st = proxy_stats(f.late.port)
            return (int(st["migration:epoch"]) == 3 and st["migration:phase"] == "prepared"
                    and int(st["migration:fenced"]) == 0)
        wait_until(following, timeout=15, what="the late proxy following C -> D")
        # a key whose owner under C differs from its owner under B
        for name, servers in (("b", B), ("c", C)):
            with open(f.late.conf_path + "." + name, "w") as fh:
                fh.write(f.conf(f.late.port, servers, f.late_redis))
        under_b = locate(f.late.conf_path + ".b", f.keys)
        under_c = locate(f.late.conf_path + ".c", f.keys)
        k = next(x for x in f.keys if under_b[x] != under_c[x])
        late = Client(("127.0.0.1", f.late.port))
        late.set(k, b"through-late", noreply=False)
        owner = f.mcs[int(under_c[k][2:]) - 1]
        assert mc_value(owner, k) == b"through-late"
        assert late.get(k) == b"through-late"
        assert Client(("127.0.0.1", f.coord.port)).get(k) == b"through-late"
    for r in f.relays + f.redis_relays:
        r.close()

