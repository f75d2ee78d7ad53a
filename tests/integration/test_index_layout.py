"""The compact index layout (docs/ARCHITECTURE.md, "The index"): every set
stays a listpack at Redis's defaults, a v-node's sub-sets split as they
fill and always hold exactly the scores their directory gives them, and an
index written in layout 1 is converted in place while clients write and a
resize follows, losing no key."""
import random
import subprocess
import threading
import time

import redis
from pymemcache.client.base import Client

from harness import (RINGPROXY, free_port, fresh_stats, is_long_list, pool_yaml, proxy_stats,
                     run_cli, set_members, stats_until, vnode_of, wait_until)
from test_migration import (assert_all_hit, assert_placement, env, fill,  # noqa: F401
                            reload, wait_migrated)

PREFIX = "rp:cache"
ENTRIES = 128       # Redis's default zset-max-listpack-entries
LONG = "L" * 110 + ":"      # a prefix past zset-max-listpack-value (64)


def no_sweeper(env):
    """The proxy's background sweeper off: `index sweep` would resume its
    pass where it stood (src/sweep.c, start_pass) and leave the v-nodes it
    walked during the fill, before their last strays, to the next pass."""
    return {"extra": {"index": {"redis": "127.0.0.1:%d" % env.redis.port,
                                "sweep_rate": 0}}}


def wait_index_idle(port):
    """The writer drained and the adoption rebuild (it may split sets while
    the test reads them, one by one) is over. Every test here starts on a
    fresh prefix, whose first ring record asks for that rebuild: "done" it
    must be, not merely not pending or running (the state is "none" until
    the proxy's first poll of it; seen once under load)."""
    stats_until(port, lambda st: st["index:queued"] == "0" and
                st["index:inflight"] == "0" and
                st.get("index:rebuild_state") == "done",
                timeout=60, what="index writes to drain and the rebuild to end")


def directory(r, base):
    """The lows of a v-node's sub-sets, ascending."""
    rest = base[len(PREFIX) + 3:]
    return sorted(int(x) for x in r.zrange("%s:vd:%s" % (PREFIX, rest), 0, -1))


def layout2_sets(r):
    """{v-node: [sub-set and long-key list names]} and the long-key lists."""
    subs, longs = {}, []
    for name in r.scan_iter(match=PREFIX + ":v:*", count=1000):
        name = name.decode()
        if is_long_list(name):
            longs.append(name)
        if vnode_of(name) != name:
            subs.setdefault(vnode_of(name), []).append(name)
    return subs, longs


def assert_layout_2_invariants(r, strays_ok=True):
    """Every index set holding keys is a sub-set or a long-key list (no
    layout 1 set is left), every sub-set is a listpack and every list
    within the entries threshold, its low is in its v-node's directory,
    and it holds scores from its low up (I-L2, src/layout.h). Scores at or past the next low
    are strays, filed by a writer that had not learnt a split yet; after a
    sweep (strays_ok False) there are none."""
    subs, longs = layout2_sets(r)
    bases = [n for n in r.scan_iter(match=PREFIX + ":v:*", count=1000)
             if vnode_of(n) == n.decode()]
    assert bases == [], "layout 1 sets left: %r" % bases[:3]
    total, seen = 0, set()
    for base, names in subs.items():
        lows = directory(r, base)
        assert lows[0] == 0
        for name in names:
            low = int(name.rsplit(":", 1)[1][1:])
            assert low in lows, name
            nxt = next((x for x in lows if x > low), 1 << 32)
            entries = set_members(r, name)
            if not is_long_list(name):
                assert r.object("encoding", name) == b"listpack", name
            assert 0 < len(entries) <= ENTRIES, (name, len(entries))
            card = len(entries)
            for m, score in entries:
                assert low <= score, (name, score, low)
                assert strays_ok or score < nxt, (name, score, low, nxt)
                seen.add(m)
            total += card
    # a stray may have a twin where its score belongs (the index script
    # filed the key again): readers see one, a sweep leaves one
    assert strays_ok or total == len(seen)
    return len(seen), subs, longs


def test_sets_split_as_they_fill_and_every_one_stays_a_listpack(env):
    """60,000 keys over 3 servers (about 125 a v-node: every v-node splits at
    least once on average) and some longer than the value threshold."""
    mcs = env.servers(3)
    p = env.proxy(mcs, **no_sweeper(env))
    r = env.r
    short = fill(p.port, 60000, prefix="split:")
    # 20,000 of 120 bytes: about 40 a v-node, so lists split with their sub-sets
    long_keys = fill(p.port, 20000, prefix=LONG)
    keys = short + long_keys
    wait_index_idle(p.port)
    assert r.hget(PREFIX + ":ring", "layout") == b"2"

    total, subs, longs = assert_layout_2_invariants(r)
    assert total == len(keys)
    nsub = sum(len(v) for v in subs.values())
    assert nsub > len(subs), "no split: %d sub-sets for %d v-nodes" % (nsub, len(subs))
    assert max(len(v) for v in subs.values()) >= 3
    # long keys in their sub-range's list, short keys never in one
    in_long = set()
    for name in longs:
        in_long |= {m.decode() for m, _ in set_members(r, name)}
    assert in_long == set(long_keys)
    assert len(longs) > len(subs), "no list split: %d lists" % len(longs)

    # a sweep files every stray where its score belongs
    res = run_cli("index", "sweep", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    total, _, longs = assert_layout_2_invariants(r, strays_ok=False)
    assert total == len(keys)

    # `index stats` reports the layout, the share of compact sets and bytes per key
    out = subprocess.run([RINGPROXY, "index", "stats", "-c", p.conf_path], check=True,
                         capture_output=True, text=True).stdout
    assert "%d indexed keys" % len(keys) in out, out
    assert "layout 2" in out, out
    assert "zset-max-listpack-entries 128, zset-max-listpack-value 64" in out, out
    line = [l for l in out.splitlines() if l.strip().startswith("sets:")][0]
    assert " 0 skiplist" in line, out
    assert "long-key lists: %d, %d keys" % (len(longs), len(long_keys)) in out, out

    # a resize moves exactly the keys whose owner changed (read from the
    # sub-sets and the lists), and the new sets keep the invariants
    new = env.servers(1)
    reload(p, env.config(mcs + new, p.port, **no_sweeper(env)))
    wait_migrated(p.port, 2)
    assert_all_hit(p.port, keys)
    assert_placement(p, mcs + new, short[:5000] + long_keys)
    assert assert_layout_2_invariants(r)[0] == len(keys)


def test_a_long_key_gone_from_its_server_is_swept_from_its_list(env):
    """The sweeper reads the long-key lists as it reads the sub-sets: keys
    deleted behind the proxy's back (on the server itself), long and short,
    leave the index; the others stay where they are."""
    mcs = env.servers(3)
    p = env.proxy(mcs, **no_sweeper(env))
    r = env.r
    short = fill(p.port, 3000, prefix="sw:")
    long_keys = fill(p.port, 3000, prefix=LONG)
    wait_index_idle(p.port)
    gone = long_keys[::10] + short[::10]
    for m in mcs:
        c = Client(("127.0.0.1", m.port))
        for k in gone:
            c.delete(k, noreply=False)
        c.close()
    before = assert_layout_2_invariants(r)[0]
    assert before == len(short) + len(long_keys)
    res = run_cli("index", "sweep", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    left = {m.decode() for ms in (set_members(r, n) for n in layout2_sets(r)[1])
            for m, _ in ms}
    assert left == set(long_keys) - set(gone)
    assert assert_layout_2_invariants(r, strays_ok=False)[0] == before - len(gone)


def test_layout_1_is_converted_in_place_under_load_and_a_resize_loses_nothing(env):
    """An index written in layout 1 (a ring record without the field, as an
    older build writes it), converted by `index rebuild` while a client
    keeps writing, then a resize: every key is where the new ring puts it,
    and the index ends in layout 2 alone."""
    mcs = env.servers(3)
    p = env.proxy(mcs, **no_sweeper(env))
    r = env.r
    r.hdel(PREFIX + ":ring", "layout")
    old_keys = fill(p.port, 20000, prefix="old:") + fill(p.port, 2000, prefix=LONG)
    wait_index_idle(p.port)
    bases = list(r.scan_iter(match=PREFIX + ":v:*", count=1000))
    assert bases and all(vnode_of(b) == b.decode() for b in bases)
    assert sum(r.zcard(b) for b in bases) == len(old_keys)

    written, stop = [], threading.Event()

    def writer():
        c = Client(("127.0.0.1", p.port))
        i = 0
        while not stop.is_set():
            chunk = {"live:%d" % j: ("v-live:%d" % j).encode() for j in range(i, i + 100)}
            assert c.set_many(chunk, noreply=False) == []
            written.extend(chunk)
            i += 100
            # about 2,000 a second: the rebuild lists what the servers hold,
            # and a writer faster than that would keep it listing
            stop.wait(0.05)
        c.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_until(lambda: len(written) > 2000, what="the writer to write")
        res = run_cli("index", "rebuild", "-c", p.conf_path)
        assert res.returncode == 0, res.stderr
        assert "converted" in res.stdout, res.stdout
        assert r.hget(PREFIX + ":ring", "layout") == b"2"
        # the resize begins while the writer still writes
        new = env.servers(1)
        reload(p, env.config(mcs + new, p.port, **no_sweeper(env)))
        wait_until(lambda: proxy_stats(p.port)["migration:state"] != "idle",
                   what="the resize to begin")
    finally:
        stop.set()
        t.join()
    wait_migrated(p.port, 2)
    wait_index_idle(p.port)
    keys = old_keys + written
    assert_all_hit(p.port, keys)
    sample = random.Random(5).sample(keys, 6000)
    assert_placement(p, mcs + new, sample)
    total = assert_layout_2_invariants(r)[0]
    assert total == len(keys)


def test_a_resize_over_an_index_half_converted_misses_nothing(env):
    """Layout 2 recorded over entries still in layout 1 (an index converted
    only in part): new writes go to layout 2, a resize reads both, moves
    every key whose owner changed, and a sweep pass then moves what is left
    in layout 1 into layout 2."""
    mcs = env.servers(3)
    p = env.proxy(mcs, **no_sweeper(env))
    r = env.r
    r.hdel(PREFIX + ":ring", "layout")
    keys = fill(p.port, 8000, prefix="half:")
    wait_index_idle(p.port)
    r.hset(PREFIX + ":ring", "layout", "2")
    more = fill(p.port, 4000, prefix="half2:")
    wait_index_idle(p.port)
    new = env.servers(1)
    reload(p, env.config(mcs + new, p.port, **no_sweeper(env)))
    st = wait_migrated(p.port, 2)
    assert int(st["migration:keys_failed"]) == 0
    assert_all_hit(p.port, keys + more)
    assert_placement(p, mcs + new, keys + more)
    res = run_cli("index", "sweep", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    # before: twins counted twice (a writer's stale directory, L2 in
    # docs/ARCHITECTURE.md), which the pass drops
    n = len(keys) + len(more)
    assert "index entries: " in res.stdout, res.stdout
    assert " before, {:,} after".format(n) in res.stdout, res.stdout
    assert assert_layout_2_invariants(r)[0] == n


def test_keys_filed_by_a_stale_directory_are_moved_by_a_resize(env):
    """I-L2 (src/layout.h): a writer that has not learnt a split yet files a
    key in a sub-set below the one covering its score, maybe while the
    covering one holds it too. Such strays, made here by hand as such a
    writer would, are read by the mover: a resize moves every key whose
    owner changed, and a sweep then files what is left where it belongs."""
    mcs = env.servers(3)
    p = env.proxy(mcs, **no_sweeper(env))
    r = env.r
    keys = fill(p.port, 30000, prefix="stale:")
    wait_index_idle(p.port)
    subs, _ = layout2_sets(r)
    strays = twins = 0
    for base, names in subs.items():
        lows = directory(r, base)
        if len(lows) < 2:
            continue
        first, top = "%s:s%d" % (base, lows[0]), "%s:s%d" % (base, lows[-1])
        # no more than the first sub-set holds within the threshold: past
        # it, it would be a skiplist that only the v-node's next write
        # splits (L3), and nothing writes here any more
        room = min(10, ENTRIES - r.zcard(first))
        for i, (m, score) in enumerate(r.zrange(top, 0, room - 1, withscores=True)
                                       if room > 0 else []):
            r.zadd(first, {m: score})
            if i % 2:
                r.zrem(top, m)
                strays += 1
            else:
                twins += 1
    assert strays > 100 and twins > 100
    new = env.servers(1)
    reload(p, env.config(mcs + new, p.port, **no_sweeper(env)))
    st = wait_migrated(p.port, 2)
    assert int(st["migration:keys_failed"]) == 0
    assert_all_hit(p.port, keys)
    assert_placement(p, mcs + new, keys)
    res = run_cli("index", "sweep", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    assert assert_layout_2_invariants(r, strays_ok=False)[0] == len(keys)


def commands_settle(port):
    """The writer drained, and sends nothing more while no client writes:
    its count of commands holds still for a second."""
    wait_index_idle(port)
    before = int(fresh_stats(port)["index:commands"])
    time.sleep(1.0)
    after = int(proxy_stats(port)["index:commands"])
    assert after - before <= 2, "the writer sent %d commands with no client writing" % (
        after - before)


def test_a_hash_tags_keys_past_the_threshold_do_not_spin_the_writer(cluster):
    """Keys of one hash tag share one score: their sub-range cannot split
    (there is no score to cut at). The writer asks once, learns the split was
    refused, and asks again only after a quarter of the threshold more
    writes; asked on every answer, it and Redis spun without end with no
    client writing. Every key stays indexed."""
    mcs = cluster.memcached(1)
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    port = free_port()
    cluster.proxy(pool_yaml("cache", port, [(mcs[0].addr, 1, "mc1")], hash="md5",
                            hash_tag="{}", index={"redis": "127.0.0.1:%d" % rs.port,
                                                  "sweep_rate": 0}), port=port)
    # the first ring record's rebuild (src/adopt.c) must not be what the
    # writer is found sending once the clients are quiet
    wait_until(lambda: (r.hget(PREFIX + ":index", "rebuild") or b"").startswith(b"done"),
               timeout=30, what="the index rebuild to end")
    c = Client(("127.0.0.1", port))
    keys = ["{tag}k%d" % i for i in range(3 * ENTRIES)]
    for i in range(0, len(keys), 64):
        assert c.set_many({k: b"v" for k in keys[i:i + 64]}, noreply=False) == []
    c.close()
    # With -T 2 a key stored on the other thread reaches the writer's queue
    # a turn later: until then index:queued does not count it.
    wait_until(lambda: int(proxy_stats(port)["index:adds"]) >= len(keys),
               what="every key to reach the writer")
    commands_settle(port)
    members = set()
    for name in r.scan_iter(match=PREFIX + ":v:*", count=1000):
        members |= {m.decode() for m, _ in set_members(r, name)}
    assert members >= set(keys)


def test_a_redis_restarted_empty_gets_no_key_filed_under_a_lost_directory(cluster):
    """Redis restarts without its data while the proxy writes: the
    directories the writer cached name sub-ranges the new Redis does not
    have. Keys written after the restart must land where readers look (every
    sub-set's low in its directory, I-L2), and a split asked for a low Redis
    lacks must not loop: the answer (the whole directory) replaces the
    cached one."""
    mcs = cluster.memcached(1)
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    port = free_port()
    cluster.proxy(pool_yaml("cache", port, [(mcs[0].addr, 1, "mc1")], hash="md5",
                            index={"redis": "127.0.0.1:%d" % rs.port, "sweep_rate": 0}),
                  port=port)
    fill(port, 30000, prefix="before:")         # ~190 keys a v-node: all split
    rs.kill()
    rs.start()
    wait_until(lambda: proxy_stats(port)["index:state"] == "ready", timeout=15,
               what="the writer to reconnect")
    after = fill(port, 30000, prefix="after:")
    # the emptied index is rebuilt from the backend (src/adopt.c): its
    # splits move entries between sets while a SCAN would read them
    wait_until(lambda: (r.hget(PREFIX + ":index", "rebuild") or b"").startswith(b"done"),
               timeout=60, what="the rebuild of the lost index to end")
    commands_settle(port)
    assert_layout_2_invariants(r)
    members = set()
    for name in r.scan_iter(match=PREFIX + ":v:*", count=1000):
        members |= {m.decode() for m, _ in set_members(r, name)}
    missing = set(after) - members
    assert not missing, "%d keys stored after the restart not indexed" % len(missing)
