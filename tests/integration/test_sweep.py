"""The index sweeper (docs/ARCHITECTURE.md, "The sweeper"): deletes,
evictions and expiries leave index entries behind; one pass of the sweeper,
by `ringproxy index sweep` or in the background, brings the index down to
what the backends hold, never removes the entry of a key that is stored
(also while clients store keys during the pass), moves members found in the
wrong v-node set, removes members that are not memcached keys, and removes
nothing while a migration runs."""
import random
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis
from pymemcache.client.base import Client

from harness import (RINGPROXY, admin_get, free_port, pool_yaml, proxy_stats, run_cli,
                     set_card, set_members, stats_until, vnode_of, wait_until)

PREFIX = "rp:cache"
VALUE = b"v" * 1000
CHURN = 30000           # keys of 1 KB through 3 memcached of 4 MB: ~1/3 stay


def config(port, mcs, redis_port, sweep_rate=0, migration_rate=0, sweep_interval=0):
    servers = [(m.addr, 1, m.ident) for m in mcs]
    return pool_yaml("cache", port, servers, hash="md5", timeout=2000,
                     index={"redis": "127.0.0.1:%d" % redis_port,
                            "sweep_rate": sweep_rate, "sweep_interval": sweep_interval},
                     migration={"rate": migration_rate})


@pytest.fixture
def env(cluster):
    class Env:
        def __init__(self):
            self.redis = cluster.redis()
            self.r = redis.Redis(port=self.redis.port)
            self.mcs = []

        def servers(self, n, memory_mb=4):
            new = cluster.memcached(n, memory_mb=memory_mb)
            for m in new:
                self.mcs.append(m)
                m.ident = "mc%d" % len(self.mcs)
            return new

        def proxy(self, mcs, **kw):
            port, aport = free_port(), free_port()
            p = cluster.proxy(config(port, mcs, self.redis.port, **kw), port=port,
                              admin_port=aport)
            wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
                       what="the proxy to serve")
            # the first ring record's rebuild lists the backends while the
            # test writes: its adds land where the key belongs, beside a
            # stray the writer filed by a directory older than a split (a
            # twin, docs/ARCHITECTURE.md L1), and the counts would hold it
            rebuild_done(self.r)
            return p

    return Env()


def rebuild_done(r):
    """Until the index rebuild that the first ring record asks for is over
    (src/adopt.c): it adds the entries of keys it lists, which would redo
    what a test undid, or hide what a sweep lost."""
    wait_until(lambda: (r.hget(PREFIX + ":index", "rebuild") or b"").startswith(b"done"),
               timeout=30, what="the index rebuild to end")


def write(port, keys, value=VALUE):
    c = Client(("127.0.0.1", port), timeout=10)
    try:
        for i in range(0, len(keys), 500):
            assert c.set_many({k: value for k in keys[i:i + 500]}, noreply=False) == []
    finally:
        c.close()


def index_settled(port):
    """Until the proxy's index writes are all answered."""
    stats_until(port, lambda st: st["index:queued"] == "0" and st["index:inflight"] == "0",
                what="index writes to drain")


def index_sets(r):
    return [s for s in r.scan_iter(match=PREFIX + ":v:*", count=1000)]


def index_total(r):
    return sum(set_card(r, s) for s in index_sets(r))


def members(r):
    """member -> [(set, score)]"""
    out = {}
    for s in index_sets(r):
        for m, score in set_members(r, s):
            out.setdefault(m, []).append((vnode_of(s), int(score)))
    return out


def mc_stat(m, name):
    with socket.create_connection(("127.0.0.1", m.port)) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            buf += s.recv(65536)
    for line in buf.decode().split("\r\n"):
        parts = line.split(" ")
        if len(parts) == 3 and parts[1] == name:
            return int(parts[2])
    raise KeyError(name)


def items_held(mcs):
    return sum(mc_stat(m, "curr_items") for m in mcs)


def owners(conf_path, keys):
    """key (bytes) -> (its v-node set, its ring hash), from `ringproxy locate`."""
    out = {}
    keys = sorted(keys)
    for i in range(0, len(keys), 5000):
        res = subprocess.run([RINGPROXY, "locate", "-c", conf_path, "--"] + keys[i:i + 5000],
                             check=True, capture_output=True)
        for line in res.stdout.split(b"\n")[1:]:
            if line:
                _, key, h, point, server, _ = line.split(b" ")
                out[key] = ("%s:v:%s:%d" % (PREFIX, server.decode(), int(point)), int(h))
    return out


def assert_stored_keys_indexed(conf_path, r, mcs, held=None):
    """Every key a backend holds (listed with metadump, unless given) is in
    the v-node set that owns it, with its ring hash as score (what a resize
    needs to move it). metadump skips an item it cannot lock at that
    instant (one a running sweeper reads): give `held` to check all."""
    if held is None:
        held = set()
        for m in mcs:
            held |= m.keys()
    where = owners(conf_path, held)
    entries = members(r)
    missing = [k for k in sorted(held) if where[k] not in entries.get(k, [])]
    assert missing == [], "%d stored keys not indexed, e.g. %r" % (len(missing), missing[:5])
    return len(held)


def assert_bounded(r, mcs, slack=0):
    total, held = index_total(r), items_held(mcs)
    print("index entries %d, items held %d (%.3fx)" % (total, held, total / max(held, 1)))
    assert total <= 1.02 * held + slack, (total, held)


def unchanged_for(what, secs=1.0):
    """Sample what() for secs: it must not change (nothing happens meanwhile)."""
    first, end = what(), time.monotonic() + secs
    while time.monotonic() < end:
        assert what() == first
        time.sleep(0.05)
    return first


def sweep_counts(out):
    """The numbers of the command's summary."""
    nums = lambda s: int(s.replace(",", ""))
    m = re.search(r"([\d,]+) entries looked at", out)
    g = re.search(r"removed ([\d,]+): gone from their backend ([\d,]+), in the wrong set "
                  r"or with the wrong score ([\d,]+), not a memcached key ([\d,]+)", out)
    pb = re.search(r"put back ([\d,]+) .*; kept ([\d,]+) ", out)
    assert m and g and pb, out
    return dict(checked=nums(m.group(1)), removed=nums(g.group(1)), gone=nums(g.group(2)),
                wrong_set=nums(g.group(3)), invalid=nums(g.group(4)),
                restored=nums(pb.group(1)), kept=nums(pb.group(2)))


# --- one pass --------------------------------------------------------------------------


def test_one_pass_bounds_the_index_by_what_the_backends_hold(env):
    mcs = env.servers(3)
    p = env.proxy(mcs)
    keys = ["churn:%d" % i for i in range(CHURN)]
    write(p.port, keys)
    index_settled(p.port)
    assert index_total(env.r) == CHURN          # the index never forgot
    held = items_held(mcs)
    assert held < CHURN / 2, "memcached was meant to evict most keys: %d held" % held
    res = run_cli("index", "sweep", "-c", p.conf_path)
    print(res.stdout, res.stderr)
    assert res.returncode == 0, res.stderr
    n = sweep_counts(res.stdout)
    assert n["checked"] == CHURN and n["wrong_set"] == 0 and n["invalid"] == 0
    assert n["gone"] == CHURN - held and n["kept"] == 0
    assert "index entries: %s before, %s after" % (format(CHURN, ","), format(held, ",")) \
        in res.stdout
    assert_bounded(env.r, mcs)
    assert assert_stored_keys_indexed(p.conf_path, env.r, mcs) == held
    # a second pass finds nothing more to remove
    res = run_cli("index", "sweep", "-c", p.conf_path, "--rate", 50000)
    assert res.returncode == 0, res.stderr
    assert sweep_counts(res.stdout)["removed"] == 0


def test_the_background_sweeper_bounds_the_index_by_itself(env):
    mcs = env.servers(3)
    p = env.proxy(mcs, sweep_rate=50000)
    write(p.port, ["churn:%d" % i for i in range(CHURN)])
    index_settled(p.port)
    passes = int(proxy_stats(p.port)["sweep:passes"])
    # two more passes: one of them began after the last write
    st = wait_until(lambda: (lambda s: int(s["sweep:passes"]) >= passes + 2 and s)(
        proxy_stats(p.port)), timeout=60, interval=0.2, what="two sweep passes")
    print({k: v for k, v in st.items() if k.startswith("sweep:")})
    assert st["sweep:state"] == "sweeping"
    assert int(st["sweep:removed_gone"]) >= CHURN - items_held(mcs)
    assert_bounded(env.r, mcs)
    assert_stored_keys_indexed(p.conf_path, env.r, mcs)
    # seen in /metrics, /migration, `ringproxy status`, and its lease in Redis
    metrics = admin_get(p.admin_port, "/metrics")[2]
    assert 'ringproxy_sweep_state{pool="cache",state="sweeping"} 1' in metrics
    assert re.search(r'ringproxy_sweep_removed_gone_total\{pool="cache"\} [1-9]', metrics)
    status = run_cli("status", "-c", p.conf_path, "--admin-port", p.admin_port)
    assert "  index sweep: sweeping, pass " in status.stdout, status.stdout
    assert env.r.get(PREFIX + ":index:sweep:lock") is not None
    pos = env.r.hgetall(PREFIX + ":index:sweep")
    assert int(pos[b"pass"]) >= 2 and pos[b"holder"] == env.r.get(PREFIX + ":index:sweep:lock")
    # SIGTERM gives the lease and the announcement back at once
    p.stop()
    assert env.r.get(PREFIX + ":index:sweep:lock") is None
    assert not [f for f in env.r.hkeys(PREFIX + ":proxies") if f.startswith(b"sweeper:")]


# --- safety: keys stored during the pass ------------------------------------------------


@pytest.mark.parametrize("how", ["command", "background"])
def test_keys_stored_again_during_a_sweep_stay_indexed(env, how):
    """Two thirds of the keys are deleted (their entries stay), then a
    writer stores each deleted key again, once, in random order, while the
    sweeper removes the entries of the keys it finds gone. Nothing is
    evicted and nothing is stored twice, so an entry lost to a store landing
    between the sweeper's look and its removal would stay lost: every key
    stored at the end must be in its owning set. The background sweeper runs
    in the proxy that serves the writer, alone on its prefix, so its
    re-store filter is on.

    Without the second look, or (in the background) without the index
    forgetting the keys removed, stored keys are found unindexed."""
    mcs = env.servers(3, memory_mb=64)
    p = env.proxy(mcs, sweep_rate=0 if how == "command" else 20000)
    keys = ["churn:%d" % i for i in range(CHURN)]
    write(p.port, keys)
    c = Client(("127.0.0.1", p.port), timeout=10)
    gone = [k for i, k in enumerate(keys) if i % 3]
    for i in range(0, len(gone), 500):
        assert c.delete_many(gone[i:i + 500], noreply=False)
    c.close()
    index_settled(p.port)
    rebuild_done(env.r)
    random.Random(3).shuffle(gone)
    stored = [0]
    scripts = env.r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    def sweeping():
        # the command counts the entries first (one index script per
        # v-node: 480), then lists pages (one script each)
        if how == "command":
            return env.r.info("commandstats").get("cmdstat_evalsha",
                                                  {}).get("calls", 0) > scripts + 480
        return proxy_stats(p.port)["sweep:state"] == "sweeping"

    def writer():
        # about 8,000 keys a second: the pass's length (its rate / the entries)
        w = Client(("127.0.0.1", p.port), timeout=10)
        wait_until(sweeping, timeout=30, interval=0.005, what="the sweep to start")
        start = time.monotonic()
        for i in range(0, len(gone), 40):
            assert w.set_many({k: VALUE for k in gone[i:i + 40]}, noreply=False) == []
            stored[0] += len(gone[i:i + 40])
            ahead = start + stored[0] / 8000.0 - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        if how == "command":
            res = run_cli("index", "sweep", "-c", p.conf_path, "--rate", 15000)
            assert res.returncode == 0, res.stderr
            n = sweep_counts(res.stdout)
    finally:
        t.join()
    if how == "background":
        # the pass under way when the writer ended is over: nothing it
        # removed waits to be looked at again (the next pass finds every
        # stored key there, and removes none of them)
        done = int(proxy_stats(p.port)["sweep:passes"])
        wait_until(lambda: int(proxy_stats(p.port)["sweep:passes"]) > done,
                   timeout=60, interval=0.05, what="the pass under way to end")
        st = proxy_stats(p.port)
        n = dict(gone=int(st["sweep:removed_gone"]), restored=int(st["sweep:restored"]))
    print("stored %d again; removed %d, put back %d" % (stored[0], n["gone"], n["restored"]))
    assert stored[0] == len(gone) and n["gone"] > 0
    index_settled(p.port)
    c = Client(("127.0.0.1", p.port), timeout=10)
    for i in range(0, CHURN, 500):         # nothing was evicted: all are there
        assert len(c.get_many(keys[i:i + 500])) == len(keys[i:i + 500])
    c.close()
    assert_stored_keys_indexed(p.conf_path, env.r, mcs, {k.encode() for k in keys})


# --- placement and hostile members ------------------------------------------------------


def test_members_in_the_wrong_set_move_and_members_that_are_not_keys_go(env):
    mcs = env.servers(3, memory_mb=64)
    p = env.proxy(mcs)
    keys = ["place:%d" % i for i in range(300)]
    write(p.port, keys, b"x")
    index_settled(p.port)
    rebuild_done(env.r)
    where = owners(p.conf_path, [k.encode() for k in keys])
    sets = sorted({vset for vset, _ in where.values()})
    k1, k2, k3 = (k.encode() for k in keys[:3])
    other = lambda k: next(s for s in sets if s.split(":")[3] != where[k][0].split(":")[3])
    # k1 only in another server's set; k2 with a wrong score; k3 in both sets
    env.r.zrem(where[k1][0], k1)
    env.r.zadd(other(k1), {k1: where[k1][1]})
    env.r.zadd(where[k2][0], {k2: where[k2][1] + 1})
    env.r.zadd(other(k3), {k3: where[k3][1]})
    bad = [b"x\r\nflush_all", b"a b", b"", b"k" * 251, b"ctl\x01x", b"x\nflush_all"]
    for vset in sets[:2]:
        env.r.zadd(vset, {b: 1 for b in bad})
    check = run_cli("index", "check", "-c", p.conf_path, "--sample", 100000)
    assert check.returncode == 1        # it sees the mess
    res = run_cli("index", "sweep", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    n = sweep_counts(res.stdout)
    assert (n["wrong_set"], n["invalid"], n["gone"]) == (3, 2 * len(bad), 0), res.stdout
    for k in (k1, k2, k3):
        assert members(env.r)[k] == [where[k]], k
    assert not set(bad) & set(members(env.r))
    assert len(members(env.r)) == len(keys)
    for m in mcs:
        assert mc_stat(m, "cmd_flush") == 0
    check = run_cli("index", "check", "-c", p.conf_path, "--sample", 100000)
    assert check.returncode == 0, check.stdout
    assert "misplaced: 0, wrong score: 0" in check.stdout


def test_a_backend_that_cannot_be_asked_keeps_its_entries(env):
    """A server down during the pass: its entries are kept and counted, the
    others are swept, and the command still completes its pass."""
    mcs = env.servers(3, memory_mb=64)
    p = env.proxy(mcs)
    keys = ["down:%d" % i for i in range(1500)]
    write(p.port, keys, b"x")
    c = Client(("127.0.0.1", p.port), timeout=10)
    assert c.delete_many(keys[:1000], noreply=False)
    c.close()
    index_settled(p.port)
    where = owners(p.conf_path, [k.encode() for k in keys])
    on_mc3 = {k for k, (vset, _) in where.items() if ":v:mc3:" in vset}
    assert on_mc3
    mcs[2].kill()
    res = run_cli("index", "sweep", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    n = sweep_counts(res.stdout)
    gone_elsewhere = sum(1 for k in keys[:1000] if k.encode() not in on_mc3)
    assert (n["kept"], n["gone"]) == (len(on_mc3), gone_elsewhere), res.stdout
    assert set(members(env.r)) == on_mc3 | {k.encode() for k in keys[1000:]}


# --- migrations -------------------------------------------------------------------------


def test_the_sweeper_pauses_while_a_migration_runs(env):
    mcs = env.servers(3, memory_mb=64)
    p = env.proxy(mcs, sweep_rate=2000, migration_rate=100)
    keys = ["mig:%d" % i for i in range(1200)]
    write(p.port, keys, b"x")
    wait_until(lambda: int(proxy_stats(p.port)["sweep:checked"]) > 0, timeout=20,
               what="the sweeper to run")
    new = env.servers(1, memory_mb=64)
    p.write_config(config(p.port, mcs + new, env.redis.port, sweep_rate=2000,
                          migration_rate=100))
    p.signal(signal.SIGHUP)
    wait_until(lambda: int(proxy_stats(p.port)["migration:keys_moved"]) > 0, timeout=20,
               what="keys to move")
    st = proxy_stats(p.port)
    assert st["sweep:state"] == "paused", st["sweep:state"]
    assert env.r.get(PREFIX + ":index:sweep:lock") is None
    # while keys move, nothing is looked at, and the command refuses
    checked = st["sweep:checked"]
    res = run_cli("index", "sweep", "-c", p.conf_path)
    assert res.returncode == 1 and "a migration runs" in res.stderr, res.stderr
    st = proxy_stats(p.port)
    assert st["migration:state"] == "moving", "the migration ended too soon to tell"
    assert st["sweep:checked"] == checked
    # and it goes on once the resize has ended
    wait_until(lambda: proxy_stats(p.port)["migration:state"] == "idle", timeout=60,
               interval=0.2, what="the migration to end")
    wait_until(lambda: int(proxy_stats(p.port)["sweep:checked"]) > int(checked),
               timeout=20, what="the sweeper to resume")
    assert proxy_stats(p.port)["sweep:state"] == "sweeping"


def test_another_proxy_resumes_where_the_lease_holder_stopped(env, cluster):
    """One proxy of the fleet sweeps; the other stands by. When the holder
    stops (SIGTERM gives the lease back), the other takes the lease and goes
    on from the position the holder kept in <prefix>:index:sweep."""
    mcs = env.servers(3)
    a = env.proxy(mcs, sweep_rate=8000)
    write(a.port, ["churn:%d" % i for i in range(10000)])
    wait_until(lambda: proxy_stats(a.port)["sweep:state"] == "sweeping", timeout=30,
               what="the first proxy to sweep")
    port = free_port()
    # b starts no second pass for a minute: its `checked` after the first
    # pass is that pass's alone, however late it is read
    b = cluster.proxy(config(port, mcs, env.redis.port, sweep_rate=8000,
                             sweep_interval=60000), port=port)
    wait_until(lambda: proxy_stats(port).get("sweep:state") == "standby", timeout=20,
               what="the second proxy to stand by")
    st = wait_until(lambda: (lambda s: int(s["sweep:sets_done"]) >= 60 and s)(
        proxy_stats(a.port)), timeout=30, interval=0.02, what="a fifth of a pass")
    assert st["sweep:state"] == "sweeping"
    a.stop()
    wait_until(lambda: proxy_stats(port)["sweep:state"] == "sweeping", timeout=20,
               what="the second proxy to take over")
    m = re.search(r"resuming pass (\d+) at v-node set (\d+) of 480", b.log())
    # where the first one saved its position: sets_done counts the sets it
    # walked, the saved point trails it by the batches then in flight (55
    # once against 60), so half of them is the bound; starting over is 0
    assert m and int(m.group(2)) >= 30, b.log()[-2000:]
    pos = env.r.hgetall(PREFIX + ":index:sweep")
    assert pos[b"holder"] == env.r.get(PREFIX + ":index:sweep:lock")
    wait_until(lambda: int(proxy_stats(port)["sweep:passes"]) >= 1, timeout=30,
               interval=0.1, what="the pass to end")
    assert int(proxy_stats(port)["sweep:checked"]) < 10000     # it did not start over
    assert_bounded(env.r, mcs)


def test_the_sweeper_waits_for_an_index_rebuild(env):
    """<prefix>:index field `rebuild` is the rebuild's contract with the
    sweeper: while it says pending (as the first ring record leaves it,
    waited out before the sweeper first runs) or running, the background
    sweeper gives up its lease and looks at nothing; once it says done, it
    goes on."""
    mcs = env.servers(3, memory_mb=64)
    p = env.proxy(mcs, sweep_rate=5000)
    write(p.port, ["rb:%d" % i for i in range(1000)], b"x")
    wait_until(lambda: int(proxy_stats(p.port)["sweep:checked"]) > 0, timeout=20,
               what="the sweeper to run")
    for value in ("running other-proxy:123:abcd",):
        env.r.hset(PREFIX + ":index", "rebuild", value)
        wait_until(lambda: proxy_stats(p.port)["sweep:state"] == "paused", timeout=10,
                   what="the sweeper to pause for a rebuild %s" % value)
        assert env.r.get(PREFIX + ":index:sweep:lock") is None
        note = admin_get(p.admin_port, "/migration")[2]
        assert '"sweep_note":"an index rebuild runs"' in note, note
        checked = unchanged_for(lambda: proxy_stats(p.port)["sweep:checked"], 0.5)
    env.r.hset(PREFIX + ":index", "rebuild", "done 1700000000000 2000")
    wait_until(lambda: int(proxy_stats(p.port)["sweep:checked"]) > int(checked), timeout=20,
               what="the sweeper to go on")
