"""Attacks on the index's background machinery (docs/ARCHITECTURE.md, "The
index"): hostile or corrupted records in Redis, hostile backends while a
listing runs, and commands against servers that are down. Each test is a
bug found by an adversarial review; the proxy must neither get stuck nor
fail open."""
import signal
import subprocess

import pytest
import redis
from pymemcache.client.base import Client

from harness import (RINGPROXY, free_port, pool_yaml, proxy_stats, run_cli,
                     wait_until)

PREFIX = "rp:cache"


def config(port, mcs, redis_port, **index):
    servers = [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]
    ix = {"redis": "127.0.0.1:%d" % redis_port}
    ix.update(index)
    return pool_yaml("cache", port, servers, hash="md5", timeout=1000, index=ix)


def test_a_sweep_position_with_a_cursor_redis_refuses_does_not_stop_the_sweeper(cluster):
    """<prefix>:index:sweep is read by whichever proxy takes the sweep lease.
    A cursor of digits that Redis cannot parse (past 2^64) is refused by
    every ZSCAN: resumed from, it would pause the sweeper of every proxy of
    the fleet forever. It must be treated as no position: the pass starts
    over and ends."""
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    mcs = cluster.memcached(2)
    r.hset(PREFIX + ":index:sweep", mapping={
        "point": "0", "cursor": "99999999999999999999", "pass": "3", "epoch": "1",
        "checked": "0", "removed": "0", "holder": "gone", "updated": "0"})
    port = free_port()
    p = cluster.proxy(config(port, mcs, rs.port, sweep_rate=100000), port=port)
    c = Client(("127.0.0.1", port))
    for i in range(200):
        c.set("k%d" % i, b"v")
    wait_until(lambda: int(proxy_stats(port).get("sweep:passes", 0)) >= 1, timeout=30,
               what="a sweep pass to end")
    assert b"invalid cursor" not in p.log().encode(), p.log()[-2000:]


def index_members(r):
    n = 0
    for name in r.scan_iter(match=PREFIX + ":v:*", count=1000):
        n += r.zcard(name)
    return n


def test_redis_emptied_mid_rebuild_is_not_recorded_as_rebuilt(cluster):
    """FLUSHALL while the background rebuild runs: the entries it added are
    gone, the proxy records the ring again and marks the index pending, and
    the rebuild's lease lapsed with the rest. The holder must not take the
    lease again as if nothing happened and go on to write `done` over an
    index that lacks every key listed before the flush: it starts over."""
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    mcs = cluster.memcached(1)
    c = Client(("127.0.0.1", mcs[0].port))
    keys = ["warm:%d" % i for i in range(12000)]
    for i in range(0, len(keys), 500):
        c.set_many({k: b"x" for k in keys[i:i + 500]})
    port = free_port()
    cluster.proxy(config(port, mcs, rs.port, rebuild_rate=2000, sweep_rate=0), port=port)
    wait_until(lambda: int(proxy_stats(port).get("index:rebuild_keys", 0)) > 3000,
               timeout=30, what="the rebuild to index some keys")
    r.flushall()
    wait_until(lambda: (r.hget(PREFIX + ":index", "rebuild") or b"").startswith(b"done"),
               timeout=40, what="the rebuild to end")
    assert index_members(r) == len(keys)


def index_stale_entries(r, conf_path, keys):
    """Index entries, in their right sets, of keys no backend holds."""
    p = r.pipeline()
    for i in range(0, len(keys), 2000):
        out = run_cli("locate", "-c", conf_path, "--", *keys[i:i + 2000], check=True).stdout
        for line in out.splitlines()[1:]:
            _, key, h, point, server, _ = line.split()
            p.zadd("%s:v:%s:%s" % (PREFIX, server, point), {key: int(h)})
    p.execute()


def test_index_sweep_ends_when_redis_stops_answering(cluster, tmp_path):
    """`ringproxy index sweep` drops a Redis connection silent for
    index.reply_timeout (2 s here) and connects again. A Redis that accepts
    connections but answers nothing (frozen) must end the command with an
    error, not have it reconnect forever."""
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    mcs = cluster.memcached(1)
    conf = tmp_path / "sweep.yml"
    conf.write_text(config(free_port(), mcs, rs.port, sweep_rate=0, reply_timeout=2000))
    assert run_cli("index", "rebuild", "-c", conf).returncode == 0
    index_stale_entries(r, conf, ["gone:%d" % i for i in range(6000)])
    proc = subprocess.Popen([RINGPROXY, "index", "sweep", "-c", str(conf),
                             "--rate", "1000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: index_members(r) < 6000, timeout=20,
                   what="the sweep to remove entries")
        rs.proc.send_signal(signal.SIGSTOP)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("index sweep still runs 30 s after Redis froze")
        assert proc.returncode == 1, (out, err)
        assert "Redis" in err, err
    finally:
        rs.proc.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_index_rebuild_does_not_record_done_when_redis_lost_its_data(cluster, tmp_path):
    """`ringproxy index rebuild` writes `rebuild done` at its end. If Redis
    lost its data meanwhile (FLUSHALL here; a restart without persistence
    drops the connection and fails the command anyway), the entries added
    before are gone: recording `done` would keep every proxy from adopting
    the rebuild the emptied index needs. Either every key is indexed, or the
    command fails and says why."""
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    mcs = cluster.memcached(1)
    c = Client(("127.0.0.1", mcs[0].port))
    keys = ["cli:%d" % i for i in range(60000)]
    for i in range(0, len(keys), 1000):
        c.set_many({k: b"x" for k in keys[i:i + 1000]})
    conf = tmp_path / "rebuild.yml"
    conf.write_text(config(free_port(), mcs, rs.port, sweep_rate=0))
    proc = subprocess.Popen([RINGPROXY, "index", "rebuild", "-c", str(conf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: r.dbsize() > 40 or proc.poll() is not None, timeout=20,
                   interval=0.005, what="the rebuild to add entries")
        r.flushall()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode == 0:
        assert index_members(r) == len(keys), (out, err)
    else:
        assert "lost its data" in err, err
        assert not (r.hget(PREFIX + ":index", "rebuild") or b"").startswith(b"done")


def test_lease_locks_set_by_hand_without_an_expiry_do_not_stop_the_fleet(cluster):
    """A rebuild or sweep lock with no TTL (set by hand, or left by a bug)
    is not a lease: held for good, it would keep every proxy waiting. Such a
    lock is removed, and the rebuild and the sweeper run."""
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    mcs = cluster.memcached(2)
    r.set(PREFIX + ":index:rebuild:lock", "someone")
    r.set(PREFIX + ":index:sweep:lock", "someone")
    port = free_port()
    cluster.proxy(config(port, mcs, rs.port, sweep_rate=100000, sweep_interval=0),
                  port=port)
    wait_until(lambda: (r.hget(PREFIX + ":index", "rebuild") or b"").startswith(b"done"),
               timeout=30, what="the adoption rebuild despite the stuck lock")
    wait_until(lambda: int(proxy_stats(port).get("sweep:passes", 0)) >= 1, timeout=30,
               what="a sweep pass despite the stuck lock")
