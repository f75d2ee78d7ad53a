"""Index health (docs/ARCHITECTURE.md, "Observability"): when the index Redis
refuses the proxy (a wrong password, maxmemory reached), the refusal is
classified and counted (`stats`, /metrics), named by /healthz and `status`,
logged once per change and once at recovery; nothing claims a write Redis
refused; operator commands fail with Redis' reason instead of reporting an
empty index. And `ringproxy diff` warns when a pool without an index will
lose the keys that change owner."""
import re

import pytest
import redis
from pymemcache.client.base import Client

from harness import (DEAD_PORT, admin_get, admin_json, free_port, pool_yaml, proxy_stats,
                     run_cli, wait_port, wait_until)
from test_admin import metrics, value

PREFIX = "rp:cache"
SETTLE = 40.0


def start(cluster, mcs, redis_server, **index):
    """One indexed pool "cache" with its admin port; index: extra settings."""
    port, aport = free_port(), free_port()
    servers = [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]
    text = pool_yaml("cache", port, servers, hash="md5",
                     index=dict({"redis": redis_server.addr}, **index))
    p = cluster.proxy(text, port=port, admin_port=aport)
    wait_port(aport, proc=p.proc)
    return p


def healthz(p):
    return admin_get(p.admin_port, "/healthz")


def healthz_saying(p, text, store=None, timeout=SETTLE):
    """Poll /healthz until its body holds text; store(): a write to make
    meanwhile (index writes are what Redis refuses or takes)."""
    last = [None]

    def probe():
        if store is not None:
            store()
        last[0] = healthz(p)
        return last[0] if text in last[0][2] else None
    try:
        return wait_until(probe, timeout=timeout, interval=0.2,
                          what="/healthz to say %r" % text)
    except AssertionError as e:
        raise AssertionError("%s; it said %r" % (e, last[0][:3:2]))


def lines_with(log, needle):
    return [l for l in log.splitlines() if needle in l]


def storer(port):
    """A function that stores a new key through the proxy, ignoring errors
    (a fenced pool refuses it)."""
    c = Client(("127.0.0.1", port), connect_timeout=5, timeout=5)
    n = [0]

    def store():
        n[0] += 1
        try:
            c.set("health-%d" % n[0], b"v", noreply=False)
        except Exception:
            c.close()
    return store


# --- a wrong password ----------------------------------------------------------------


def test_a_wrong_password_is_named_by_healthz_metrics_log_and_commands(cluster):
    rs = cluster.redis()
    r = redis.Redis(port=rs.port, password=None)
    r.config_set("requirepass", "right")
    r = redis.Redis(port=rs.port, password="right")
    p = start(cluster, cluster.memcached(1), rs, password="wrong")

    code, _, body = healthz_saying(p, "auth_failed")
    assert code == 503, body
    assert "pool cache" in body and "WRONGPASS" in body, body

    # Refusals are counted by class, again and again (each retry)...
    fam = wait_until(lambda: (lambda f: f if value(f, "ringproxy_index_errors_auth_total",
                                                   pool="cache") >= 6 else None)(
        metrics(p.admin_port)), timeout=SETTLE, what="repeated AUTH refusals")
    assert value(fam, "ringproxy_index_health", pool="cache", state="auth_failed") == 1
    assert value(fam, "ringproxy_index_health", pool="cache", state="ok") == 0
    assert value(fam, "ringproxy_index_errors_oom_total", pool="cache") == 0
    assert value(fam, "ringproxy_index_last_error_time", pool="cache") > 0
    st = proxy_stats(p.port)
    assert st["index:health"] == "auth_failed", st
    assert st["index:health_reason"].startswith("WRONGPASS"), st
    assert int(st["index:errors_auth"]) >= 6
    assert admin_json(p.admin_port, "/migration")["pools"][0]["index_health"] == "auth_failed"

    # ... but logged once, and nothing claims a record Redis never took.
    log = p.log()
    assert len(lines_with(log, "index auth_failed")) == 1, log[-3000:]
    assert "WRONGPASS" in lines_with(log, "index auth_failed")[0]
    assert "recorded ring" not in log
    assert "lost the index" not in log
    assert not r.exists(PREFIX + ":ring")

    # Operator commands fail with Redis' reason, never report an empty index.
    for argv in (("index", "stats"), ("index", "check")):
        res = run_cli(*argv, "-c", p.conf_path)
        assert res.returncode != 0, (argv, res.stdout, res.stderr)
        assert "refused AUTH: WRONGPASS" in res.stderr and "auth_failed" in res.stderr, \
            (argv, res.stderr)
        assert "indexed keys" not in res.stdout and "none yet" not in res.stdout, res.stdout
    res = run_cli("status", "-c", p.conf_path, "--admin-port", free_port())
    assert res.returncode != 0
    assert "cache: unknown: Redis %s refused AUTH: WRONGPASS" % rs.addr in res.stdout, \
        res.stdout
    res = run_cli("status", "-c", p.conf_path, "--admin-port", p.admin_port)
    assert re.search(r"^  index auth_failed: WRONGPASS", res.stdout, re.M), res.stdout

    # The operator gives Redis the password the file has: it recovers, once.
    r.config_set("requirepass", "wrong")
    code, _, body = healthz_saying(p, "ok\n", store=storer(p.port))
    assert (code, body) == (200, "ok\n")
    log = wait_until(lambda: (lambda l: l if "index healthy again" in l else None)(p.log()),
                     what="the recovery in the log")
    assert len(lines_with(log, "index healthy again")) == 1
    assert "(was auth_failed" in lines_with(log, "index healthy again")[0]
    assert len(lines_with(log, "recorded ring")) == 1
    assert r.hget(PREFIX + ":ring", "epoch") == b"1"
    assert proxy_stats(p.port)["index:health"] == "ok"
    res = run_cli("index", "stats", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    assert "epoch 1, matches this config" in res.stdout


def test_the_right_password_and_a_database_number_are_used(cluster):
    rs = cluster.redis()
    redis.Redis(port=rs.port).config_set("requirepass", "right")
    r = redis.Redis(port=rs.port, password="right", db=3)
    p = start(cluster, cluster.memcached(2), rs, password="right", db=3)
    store = storer(p.port)
    healthz_saying(p, "ok\n", store=store)
    c = Client(("127.0.0.1", p.port))
    c.set("indexed-key", b"v", noreply=False)
    c.close()
    wait_until(lambda: any(r.zscore(k, "indexed-key") is not None
                           for k in r.scan_iter(match=PREFIX + ":v:*")),
               what="the key in db 3's index")
    assert r.hget(PREFIX + ":ring", "epoch") == b"1"
    st = proxy_stats(p.port)
    assert (st["index:state"], st["index:health"]) == ("ready", "ok"), st
    assert int(st["index:errors_auth"]) == 0
    assert "index auth_failed" not in p.log()
    res = run_cli("index", "stats", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    assert re.search(r"total: \d+ v-nodes .* [1-9]\d* indexed keys", res.stdout), res.stdout


def test_a_password_redis_does_not_need_is_only_a_warning(cluster):
    rs = cluster.redis()
    p = start(cluster, cluster.memcached(1), rs, password="unneeded")
    healthz_saying(p, "ok\n", store=storer(p.port))
    assert "index.password is not needed" in p.log()
    assert proxy_stats(p.port)["index:health"] == "ok"
    res = run_cli("index", "stats", "-c", p.conf_path)
    assert res.returncode == 0, res.stderr
    assert "index.password is not needed" in res.stderr


# --- maxmemory -----------------------------------------------------------------------


def test_writes_refused_at_maxmemory_degrade_healthz_until_redis_has_room(cluster):
    rs = cluster.redis()
    r = redis.Redis(port=rs.port)
    p = start(cluster, cluster.memcached(1), rs)
    store = storer(p.port)
    healthz_saying(p, "ok\n", store=store)

    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", r.info("memory")["used_memory"] + 256 * 1024)
    with pytest.raises(redis.exceptions.ResponseError, match="^OOM"):
        for i in range(100000):
            r.set("fill:%d" % i, b"x" * 1024)

    code, _, body = healthz_saying(p, "refused_oom", store=store)
    assert "pool cache" in body and "OOM command not allowed" in body, body
    fam = metrics(p.admin_port)
    assert value(fam, "ringproxy_index_errors_oom_total", pool="cache") > 0
    assert value(fam, "ringproxy_index_health", pool="cache", state="refused_oom") == 1
    assert value(fam, "ringproxy_index_errors_auth_total", pool="cache") == 0
    assert proxy_stats(p.port)["index:health"] == "refused_oom"
    for _ in range(20):
        store()         # more refusals: still one line
    assert len(lines_with(p.log(), "index refused_oom")) == 1, p.log()[-3000:]

    r.config_set("maxmemory", 0)
    code, _, body = healthz_saying(p, "ok\n", store=store)
    assert (code, body) == (200, "ok\n")
    log = wait_until(lambda: (lambda l: l if "index healthy again" in l else None)(p.log()),
                     what="the recovery in the log")
    assert "(was refused_oom" in lines_with(log, "index healthy again")[0]
    fam = metrics(p.admin_port)
    assert value(fam, "ringproxy_index_health", pool="cache", state="ok") == 1


# --- ringproxy diff ------------------------------------------------------------------


def test_diff_warns_that_a_pool_without_an_index_loses_the_keys_that_move(tmp_path):
    port = free_port()
    two = [("127.0.0.1:%d" % (DEAD_PORT + i), 1, "mc%d" % (i + 1)) for i in range(2)]
    three = two + [("127.0.0.1:%d" % (DEAD_PORT + 2), 1, "mc3")]
    index = {"index": {"redis": "127.0.0.1:6379"}}

    def files(old_index, new_index):
        old, new = tmp_path / "old.yml", tmp_path / "new.yml"
        old.write_text(pool_yaml("cache", port, two, **(index if old_index else {})))
        new.write_text(pool_yaml("cache", port, three, **(index if new_index else {})))
        res = run_cli("diff", old, new)
        assert res.returncode == 0, res.stderr
        moved = re.search(r"^pool cache: 2 -> 3 servers, (\d+\.\d+)% of keys move",
                          res.stdout, re.M)
        assert moved, res.stdout
        return res.stdout, moved.group(1)

    out, moved = files(False, False)
    assert ("  warning: pool cache has no index: the %s%% of keys that change owner "
            "will miss after this change, until written again" % moved) in out.splitlines()
    out, moved = files(True, False)
    assert "warning: pool cache has no index in the new file: the %s%%" % moved in out
    out, moved = files(False, True)
    assert "warning: pool cache has no index in the old file: the %s%%" % moved in out
    out, _ = files(True, True)
    assert "warning" not in out
