"""Rebuilding the index from the backends (docs/ARCHITECTURE.md, "Rebuild and
adoption"): `ringproxy index rebuild` and a proxy's background adoption index
every key the memcached servers hold (lru_crawler metadump) in the v-node set
that owns it, so that keys written before ringproxy (through twemproxy) or
before Redis lost its data move on the next resize like any other."""
import signal
import socket
import time

import pytest
import redis
from pymemcache.client.base import Client

from harness import Memcached, Nutcracker, free_port, locate, pool_yaml, run_cli
from harness import index_entries as index_entries_at
from harness import home_lines_lag, set_members

KEYS = 20000
PREFIX = "rp:cache"
SETTLE = 60.0


def servers_of(mcs):
    return [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]


def proxy_config(port, mcs, redis_port, rebuild_rate=0):
    """ringproxy's file for the pool twemproxy served: the same servers,
    names and hash, plus the index."""
    return pool_yaml("cache", port, servers_of(mcs), hash="md5", distribution="ketama",
                     timeout=2000,
                     index={"redis": "127.0.0.1:%d" % redis_port,
                            "rebuild_rate": rebuild_rate},
                     migration={"rate": 0})


def values(keys):
    return {k: ("v-" + k).encode() for k in keys}


def write_through_nutcracker(cluster, mcs, n=KEYS):
    """Keys stored by twemproxy (md5, ketama): no index knows them."""
    if not Nutcracker.installed():
        pytest.skip("nutcracker (twemproxy) is not installed: "
                    "scripts/install-deps.sh --bench installs it")
    port = free_port()
    nut = Nutcracker(cluster.workdir, pool_yaml("cache", port, servers_of(mcs),
                                                hash="md5", distribution="ketama"), port)
    cluster.started.append(nut)
    nut.start()
    keys = ["tw:%d" % i for i in range(n)]
    c = Client(("127.0.0.1", nut.port), timeout=10)
    for i in range(0, n, 500):
        assert c.set_many(values(keys[i:i + 500]), noreply=False) == []
    c.close()
    nut.kill()
    return keys


def mc_items(m):
    with socket.create_connection(("127.0.0.1", m.port)) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            buf += s.recv(65536)
    for line in buf.decode().split("\r\n"):
        if line.startswith("STAT curr_items "):
            return int(line.split()[2])
    raise AssertionError("no curr_items in stats")


def index_entries(r):
    """Members of every v-node set: {member: number of sets holding it}."""
    out = {}
    for name in r.scan_iter(match=PREFIX + ":v:*", count=1000):
        for m, _ in set_members(r, name):
            out[m] = out.get(m, 0) + 1
    return out


def proxy_stats(port):
    c = Client(("127.0.0.1", port), timeout=10)
    try:
        return {k.decode(): (v.decode() if isinstance(v, bytes) else v)
                for k, v in c.stats().items()}
    finally:
        c.close()


def wait_stat(port, pred, what, timeout=SETTLE):
    deadline = time.monotonic() + timeout
    st = {}
    while time.monotonic() < deadline:
        try:
            time.sleep(home_lines_lag())
            st = proxy_stats(port)
            if pred(st):
                return st
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("%s: never happened; stats %s" % (
        what, {k: v for k, v in st.items() if "rebuild" in k or "migration:state" in k}))


def grow_to_4(cluster, proxy, mcs, redis_port, rebuild_rate=0):
    """SIGHUP with a fourth server; returns the stats once the fleet serves it."""
    new = cluster.memcached(1, memory_mb=16)[0]
    proxy.write_config(proxy_config(proxy.port, mcs + [new], redis_port, rebuild_rate))
    proxy.signal(signal.SIGHUP)
    st = wait_stat(proxy.port, lambda s: s.get("migration:state") == "idle" and
                   int(s.get("migration:epoch", 0)) >= 2, "migration to 4 servers")
    return new, st


def assert_no_miss(port, keys):
    c = Client(("127.0.0.1", port), timeout=10)
    got = {}
    for i in range(0, len(keys), 500):
        got.update(c.get_many(keys[i:i + 500]))
    c.close()
    missing = [k for k in keys if got.get(k) != ("v-" + k).encode()]
    assert missing == [], "%d of %d keys miss after the resize, e.g. %s" % (
        len(missing), len(keys), missing[:5])


@pytest.fixture
def warm(cluster):
    """3 memcached holding KEYS keys twemproxy wrote, and an empty Redis."""
    mcs = cluster.memcached(3, memory_mb=16)
    keys = write_through_nutcracker(cluster, mcs)
    return mcs, cluster.redis(), keys


def test_rebuild_by_hand_then_a_resize_moves_every_key_twemproxy_wrote(cluster, warm):
    mcs, rs, keys = warm
    port = free_port()
    proxy = cluster.proxy(proxy_config(port, mcs, rs.port), port=port, start=False)

    res = run_cli("index", "rebuild", "-c", proxy.conf_path)
    assert res.returncode == 0, res.stderr
    assert "no ring record yet: recorded this file's ring" in res.stdout
    assert "%d keys indexed (%d were missing), 0 misplaced" % (KEYS, KEYS) in res.stdout
    r = redis.Redis(port=rs.port)
    assert r.hget(PREFIX + ":index", "rebuild").decode().split()[::2] == ["done", str(KEYS)]

    proxy.start()
    st = wait_stat(port, lambda s: s.get("index:rebuild_state") not in (None, "none"),
                   "the proxy read the rebuild's state")
    assert st["index:rebuild_state"] == "done"     # nothing left to adopt
    new, st = grow_to_4(cluster, proxy, mcs, rs.port)
    moved = int(st["migration:keys_moved"])
    assert moved > 0 and int(st["migration:keys_failed"]) == 0
    on_new = new.keys()
    assert moved == sum(1 for k in keys if k.encode() in on_new)
    assert_no_miss(port, keys)


def test_a_proxy_on_an_empty_index_adopts_warm_backends_by_itself(cluster, warm):
    mcs, rs, keys = warm
    port = free_port()
    proxy = cluster.proxy(proxy_config(port, mcs, rs.port), port=port)
    st = wait_stat(port, lambda s: s.get("index:rebuild_state") == "done",
                   "background rebuild")
    assert int(st["index:rebuild_keys"]) == KEYS
    assert int(st["index:rebuild_runs"]) == 1
    assert "this proxy rebuilds it" in proxy.log()
    entries = index_entries(redis.Redis(port=rs.port))
    assert len(entries) == KEYS and set(entries.values()) == {1}

    new, st = grow_to_4(cluster, proxy, mcs, rs.port)
    assert int(st["migration:keys_moved"]) > 0
    assert_no_miss(port, keys)


def test_rebuilding_twice_indexes_exactly_the_keys_held(cluster, warm):
    mcs, rs, keys = warm
    conf = proxy_config(free_port(), mcs, rs.port)
    path = cluster.workdir + "/rebuild.yml"
    with open(path, "w") as f:
        f.write(conf)

    first = run_cli("index", "rebuild", "-c", path)
    second = run_cli("index", "rebuild", "-c", path)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "(0 were missing)" in second.stdout
    r = redis.Redis(port=rs.port)
    held = sum(mc_items(m) for m in mcs)
    assert held == KEYS
    cards = sum(r.zcard(n) for n in r.scan_iter(match=PREFIX + ":v:*", count=1000))
    assert cards == held
    # Each key in the set of the v-node `locate` names, scored by its hash.
    where = {}
    for i in range(0, len(keys), 2000):
        out = run_cli("locate", "-c", path, "--", *keys[i:i + 2000], check=True).stdout
        for line in out.splitlines()[1:]:
            pool, key, h, point, server, addr = line.split(" ")
            where[key] = (int(h), "%s:v:%s:%s" % (PREFIX, server, point))
    entries = index_entries_at(r, PREFIX)
    for k in keys[:500]:
        h, vnode = where[k]
        assert entries[k.encode()] == [(vnode, h)]

    check = run_cli("index", "check", "-c", path)
    assert check.returncode == 0, check.stderr
    assert ("%d keys held, %d in the index, 0 missing from it (100.00%% complete)"
            % (KEYS, KEYS)) in check.stdout


class NoCrawlerMemcached(Memcached):
    """A memcached whose LRU crawler is off: it refuses lru_crawler metadump."""

    def argv(self):
        return super().argv() + ["-o", "no_lru_crawler"]


def test_a_backend_that_refuses_metadump_fails_the_rebuild_naming_it(cluster):
    mcs = cluster.memcached(2, memory_mb=16)
    bad = NoCrawlerMemcached(cluster.workdir, memory_mb=16).start()
    cluster.started.append(bad)
    mcs.append(bad)
    rs = cluster.redis()
    port = free_port()
    proxy = cluster.proxy(proxy_config(port, mcs, rs.port), port=port, start=False)

    res = run_cli("index", "rebuild", "-c", proxy.conf_path)
    assert res.returncode != 0
    assert ("memcached at %s (mc3) refused lru_crawler metadump" % bad.addr) in res.stderr
    assert "needs memcached >= 1.4.31 with the LRU crawler enabled" in res.stderr
    assert redis.Redis(port=rs.port).hget(PREFIX + ":index", "rebuild") == b"pending"

    check = run_cli("index", "check", "-c", proxy.conf_path)
    assert check.returncode != 0 and bad.addr in check.stderr

    # The background rebuild fails the same way, says so, and keeps serving.
    proxy.start()
    wait_stat(port, lambda s: int(s.get("index:rebuild_failures", 0)) >= 1,
              "a failed background rebuild", timeout=20)
    assert "refused lru_crawler metadump" in proxy.log()
    c = Client(("127.0.0.1", port), timeout=10)
    assert c.set("still-served", b"v", noreply=False)
    assert c.get("still-served") == b"v"
    c.close()
    r = redis.Redis(port=rs.port)
    deadline = time.monotonic() + 10
    while r.hget(PREFIX + ":index", "rebuild") != b"pending":     # the lease goes back
        assert time.monotonic() < deadline, r.hget(PREFIX + ":index", "rebuild")
        time.sleep(0.05)


def test_keys_on_a_server_that_does_not_own_them_are_reported_not_indexed(cluster):
    mcs = cluster.memcached(3, memory_mb=16)
    rs = cluster.redis()
    path = cluster.workdir + "/rebuild.yml"
    with open(path, "w") as f:
        f.write(proxy_config(free_port(), mcs, rs.port))
    keys = ["own:%d" % i for i in range(300)] + ["stray"]
    where = locate(path, keys)
    by_name = {"mc%d" % (i + 1): m for i, m in enumerate(mcs)}
    for k in keys[:-1]:
        with socket.create_connection(("127.0.0.1", by_name[where[k]].port)) as s:
            s.sendall(b"set %s 0 0 1\r\nv\r\n" % k.encode())
            assert s.recv(100) == b"STORED\r\n"
    wrong = next(n for n in by_name if n != where["stray"])
    with socket.create_connection(("127.0.0.1", by_name[wrong].port)) as s:
        s.sendall(b"set stray 0 0 1\r\nv\r\n")
        assert s.recv(100) == b"STORED\r\n"

    res = run_cli("index", "rebuild", "-c", path)
    assert res.returncode == 0, res.stderr
    assert "300 keys indexed (300 were missing), 1 misplaced" in res.stdout
    assert ("misplaced: 1 keys on %s belong to other servers (e.g. 'stray', owned by %s)"
            % (wrong, where["stray"])) in res.stdout
    assert b"stray" not in index_entries(redis.Redis(port=rs.port))
    check = run_cli("index", "check", "-c", path)
    assert "301 keys held, 300 in the index, 0 missing" in check.stdout
    assert "1 on a server that does not own them" in check.stdout


def test_redis_emptied_mid_life_is_adopted_again_and_a_resize_misses_nothing(cluster):
    mcs = cluster.memcached(3, memory_mb=16)
    rs = cluster.redis()
    port = free_port()
    proxy = cluster.proxy(proxy_config(port, mcs, rs.port), port=port)
    wait_stat(port, lambda s: s.get("index:rebuild_state") == "done", "first adoption")
    keys = ["pr:%d" % i for i in range(KEYS)]
    c = Client(("127.0.0.1", port), timeout=10)
    for i in range(0, KEYS, 500):
        assert c.set_many(values(keys[i:i + 500]), noreply=False) == []
    c.close()
    st = wait_stat(port, lambda s: int(s["index:queued"]) == 0 and
                   int(s["index:inflight"]) == 0, "the proxy's index writes landed")
    runs = int(st["index:rebuild_runs"])
    r = redis.Redis(port=rs.port)

    r.flushall()        # the index, the ring record and the rebuild mark: gone
    st = wait_stat(port, lambda s: int(s["index:rebuild_runs"]) > runs and
                   s["index:rebuild_state"] == "done", "adoption after FLUSHALL")
    assert int(st["index:rebuild_keys"]) == KEYS
    assert int(st["index:rebuild_added"]) == KEYS
    assert r.exists(PREFIX + ":ring")
    assert len(index_entries(r)) == KEYS

    new, st = grow_to_4(cluster, proxy, mcs, rs.port)
    assert int(st["migration:keys_moved"]) > 0
    assert_no_miss(port, keys)


def test_one_proxy_of_a_fleet_rebuilds_and_the_others_see_it_done(cluster, warm):
    mcs, rs, keys = warm
    ports = [free_port(), free_port()]
    proxies = [cluster.proxy(proxy_config(p, mcs, rs.port), port=p) for p in ports]
    stats = [wait_stat(p, lambda s: s.get("index:rebuild_state") == "done",
                       "rebuild seen as done") for p in ports]
    assert sorted(int(s["index:rebuild_runs"]) for s in stats) == [0, 1]
    assert sum("this proxy rebuilds it" in p.log() for p in proxies) == 1
    assert len(index_entries(redis.Redis(port=rs.port))) == KEYS


def test_a_resize_proposed_during_adoption_stops_it_and_it_resumes_after(cluster, warm):
    mcs, rs, keys = warm
    port = free_port()
    proxy = cluster.proxy(proxy_config(port, mcs, rs.port, rebuild_rate=4000), port=port)
    wait_stat(port, lambda s: s.get("index:rebuild_state") == "running" and
              int(s["index:rebuild_keys"]) > 0, "a slow rebuild under way")
    r = redis.Redis(port=rs.port)
    assert r.hget(PREFIX + ":index", "rebuild").startswith(b"running ")

    new, st = grow_to_4(cluster, proxy, mcs, rs.port, rebuild_rate=4000)
    assert int(st["index:rebuild_stops"]) == 1
    assert "index rebuild stopped: " in proxy.log()
    # Idle again: the rebuild starts over, by the new ring, and ends.
    st = wait_stat(port, lambda s: s["index:rebuild_state"] == "done",
                   "the rebuild resumed after the migration")
    assert int(st["index:rebuild_runs"]) == 1
    assert r.get(PREFIX + ":index:rebuild:lock") is None


def test_sigterm_gives_the_rebuild_lease_back_for_another_proxy(cluster, warm):
    mcs, rs, keys = warm
    port = free_port()
    proxy = cluster.proxy(proxy_config(port, mcs, rs.port, rebuild_rate=4000), port=port)
    wait_stat(port, lambda s: s.get("index:rebuild_state") == "running", "a slow rebuild")
    r = redis.Redis(port=rs.port)
    assert r.get(PREFIX + ":index:rebuild:lock") is not None

    assert proxy.stop() == 0
    assert r.get(PREFIX + ":index:rebuild:lock") is None
    assert r.hget(PREFIX + ":index", "rebuild") == b"pending"
