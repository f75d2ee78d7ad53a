"""Hostile Redis records: Redis holds data, not authority. A ring record
gives server identities and weights, never where to connect (each identity
is mapped to the address in the proxy's own file: src/migrate.c,
ring_localize), and an index member that is not a memcached key is never put
in a command line (src/move.c, member_is_key)."""
import hashlib
import json
import socket

import pytest
import redis
from pymemcache.client.base import Client

from harness import (FakeBackend, admin_get, free_port, key_per_server,
                     wait_until)
from test_migration import (fill, assert_all_hit, mc_stats, pool_config,
                            proxy_stats, wait_migrated, wait_ready)

PREFIX = "rp:cache"


@pytest.fixture
def env(cluster):
    class Env:
        def __init__(self):
            self.redis = cluster.redis()
            self.r = redis.Redis(port=self.redis.port, decode_responses=True)
            self.mcs = cluster.memcached(2)
            for i, m in enumerate(self.mcs):
                m.ident = i + 1

        def proxy(self, mcs=None, **kw):
            port, aport = free_port(), free_port()
            text = pool_config(port, mcs or self.mcs, self.redis.port, **kw)
            p = cluster.proxy(text, port=port, admin_port=aport)
            wait_ready(port)
            return p

    return Env()


def record(r):
    """The ring record and its servers (decoded)."""
    rec = wait_until(lambda: r.hgetall(PREFIX + ":ring"), what="the ring record")
    return rec, json.loads(rec["servers"])


def write_servers(r, rec, servers, key=PREFIX + ":ring"):
    fields = dict(rec)
    fields["servers"] = json.dumps(servers)
    r.delete(key)
    r.hset(key, mapping=fields)


def healthz(p):
    return admin_get(p.admin_port, "/healthz")


def fake_beat(r, want):
    """A live proxy's heartbeat that proposes ring `want`: while it beats, the
    fleet does not change ring, so the proxy keeps serving the record."""
    secs, usecs = r.time()
    r.hset(PREFIX + ":proxies", "fake:1", "%d %s stable -" % (secs * 1000 + usecs // 1000,
                                                            want))


def test_a_ring_record_naming_another_address_is_served_at_the_files_address(env):
    p = env.proxy()
    keys = fill(p.port, 200)
    attacker = FakeBackend()
    try:
        rec, servers = record(env.r)
        assert [s["identity"] for s in servers] == ["mc1", "mc2"]
        servers[1]["addr"] = attacker.addr      # mc2, somewhere else
        rec["epoch"] = str(int(rec["epoch"]) + 1)
        # Another live proxy proposes that record: the fleet keeps it.
        fake_beat(env.r, fingerprint(rec, servers))
        write_servers(env.r, rec, servers)
        wait_until(lambda: int(proxy_stats(p.port)["migration:epoch"]) == int(rec["epoch"]),
                   what="the proxy to follow the record")
        fake_beat(env.r, fingerprint(rec, servers))
        # Its ring's shape is served, at the file's addresses: every key hits.
        assert_all_hit(p.port, keys)
        c = Client(("127.0.0.1", p.port))
        for k in key_per_server(p.conf_path).values():
            c.set(k, b"fresh", noreply=False)
            assert c.get(k) == b"fresh"
        c.close()
        with pytest.raises(socket.timeout):
            attacker.accept(timeout=2.0)
        assert healthz(p)[0] == 200
        st = proxy_stats(p.port)
        assert st["backend:mc2:addr"] == env.mcs[1].addr
    finally:
        attacker.close()


def test_a_ring_record_naming_an_unknown_server_is_refused(env):
    """A server the file does not list: by default the proxy does not connect
    to the address Redis records for it (whoever can write Redis would choose
    where traffic and a migration's copies go). It fences the pool, says
    which server and how to fix it, and never connects there."""
    p = env.proxy()
    fill(p.port, 50)
    extra = FakeBackend()
    try:
        rec, good = record(env.r)
        more = [dict(good[0]), {"identity": "mc9", "addr": extra.addr, "weight": 1}]
        write_servers(env.r, rec, more)
        wait_until(lambda: "server mc9 is not in this config file; list it" in p.log(),
                   what="the refusal naming mc9")
        wait_until(lambda: proxy_stats(p.port)["migration:state"] == "fenced",
                   what="the pool fenced")
        code, _, body = healthz(p)
        assert code != 200 and "mc9" in body, (code, body)
        c = Client(("127.0.0.1", p.port))
        with pytest.raises(Exception) as e:
            c.get(b"any-key")
        assert "fenced" in str(e.value) or "SERVER_ERROR" in str(e.value)
        c.close()
        with pytest.raises(socket.timeout):
            extra.accept(timeout=2.0)
        # The record restored, the pool serves again.
        write_servers(env.r, rec, good)
        wait_until(lambda: proxy_stats(p.port)["migration:state"] == "idle",
                   what="serving again")
    finally:
        extra.close()
        write_servers(env.r, rec, good)


def test_an_unknown_server_is_followed_when_the_file_says_so(env):
    """migration: {follow_unknown_servers: true}: the records are the
    authority for servers the file does not list (a proxy started with an
    older file after the fleet grew); the proxy uses the recorded address
    and says so; servers the file lists keep the file's addresses."""
    p = env.proxy(extra={"migration": {"rate": 0, "follow_unknown_servers": True}})
    fill(p.port, 50)
    extra = FakeBackend()
    try:
        rec, good = record(env.r)
        more = [dict(good[0]), {"identity": "mc9", "addr": extra.addr, "weight": 1}]
        write_servers(env.r, rec, more)
        wait_until(lambda: "server mc9 is not in this config file" in p.log(),
                   what="the warning about mc9")
        assert "using the address Redis records for it, %s" % extra.addr in p.log()
        st = proxy_stats(p.port)
        assert st["migration:state"] != "fenced", st
    finally:
        extra.close()
        write_servers(env.r, rec, good)


def fingerprint(rec, servers):
    """A ring's fingerprint as src/ringrec.c computes it: md5 of the record's
    fields after the epoch, one a line."""
    body = "".join("%s\n%s\n" % (f, rec[f]) for f in ("compat", "hash", "hash_tag",
                                                       "points"))
    body += "servers\n%s\n" % json.dumps(servers, separators=(",", ":"))
    return hashlib.md5(body.encode()).hexdigest()


def proxy_stats_fp(p):
    """The recorded ring's fingerprint as the proxy reports it (/migration)."""
    import json as _json
    body = admin_get(p.admin_port, "/migration")[2]
    return _json.loads(body)["pools"][0]["from"]


def test_index_members_that_are_not_keys_are_never_sent(env, cluster):
    # The sweeper, off here, would remove them first (test_sweep.py).
    no_sweep = {"index": {"redis": "127.0.0.1:%d" % env.redis.port, "sweep_rate": 0}}
    p = env.proxy(mcs=env.mcs[:1] + env.mcs[1:2], extra=no_sweep)
    keys = fill(p.port, 300)
    wait_until(lambda: len(env.r.keys(PREFIX + ":v:*")) > 0, what="index sets")
    bad = ["x\r\nflush_all", "a b", "", "k" * 251, "ctl\x01x", "x\nflush_all"]
    sets = env.r.keys(PREFIX + ":v:*")
    for vset in sets:
        member, score = env.r.zrange(vset, 0, 0, withscores=True)[0]
        env.r.zadd(vset, {b: score for b in bad})
    # grow 2 -> 3: many arcs move, each listed with the bad members in it
    new = cluster.memcached(1)[0]
    new.ident = 3
    from test_migration import reload
    reload(p, pool_config(p.port, env.mcs + [new], env.redis.port, extra=no_sweep))
    st = wait_migrated(p.port, 2)
    assert int(st["migration:bad_index_members"]) > 0
    for m in env.mcs + [new]:
        assert mc_stats(m)["cmd_flush"] == "0"
    assert_all_hit(p.port, keys)
    assert p.log().count("not a memcached key") == 1
