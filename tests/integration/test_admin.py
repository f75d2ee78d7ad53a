"""The HTTP admin port (docs/ARCHITECTURE.md, "Observability"): /metrics in Prometheus' text format,
/healthz, /ring and /migration as JSON, and `ringproxy status`, which reads
/migration or, when no proxy answers, the pool's Redis index."""
import os
import re
import signal
import socket

import pytest
from pymemcache.client.base import Client

from harness import (Wire, admin_get, admin_json, check_sanitizers, free_port, pool_yaml,
                     run_cli, wait_port, wait_until)

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)')
SETTLE = 60.0


def parse_metrics(text):
    """Parse Prometheus text format 0.0.4 strictly.

    Returns {family: {"help", "type", "samples": {labels: value}}} where labels
    is a frozenset of (name, value). Fails on any line that is not a HELP, a
    TYPE or a sample of the family they just declared (so every metric has
    HELP and TYPE, and a family's samples are together), and on a series
    that appears twice."""
    families, current = {}, None
    assert text.endswith("\n"), text[-200:]
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, help_text = line[len("# HELP "):].split(" ", 1)
            assert name not in families, "family %s declared twice" % name
            assert help_text.strip(), line
            families[name] = {"help": help_text, "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE "):].split(" ")
            assert name == current and families[name]["type"] is None, line
            assert kind in ("counter", "gauge"), line
            families[name]["type"] = kind
        else:
            m = SAMPLE.match(line)
            assert m, "not a sample line: %r" % line
            name, labels_text, value = m.groups()
            assert name == current and families[name]["type"], \
                "sample without HELP and TYPE just before it: %r" % line
            labels, pos = {}, 0
            while labels_text and pos < len(labels_text):
                lm = LABEL.match(labels_text, pos)
                assert lm, "bad labels: %r" % line
                labels[lm.group(1)] = re.sub(
                    r'\\(.)', lambda e: "\n" if e.group(1) == "n" else e.group(1),
                    lm.group(2))
                pos = lm.end()
            key = frozenset(labels.items())
            samples = families[name]["samples"]
            assert key not in samples, "series twice: %r" % line
            samples[key] = float(value)
            if families[name]["type"] == "counter":
                assert name.endswith("_total") and samples[key] >= 0, line
    return families


def metrics(port):
    status, headers, body = admin_get(port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    return parse_metrics(body)


def value(families, name, **labels):
    return families[name]["samples"][frozenset(labels.items())]


def start_proxy(cluster, mcs, names=None, redis=None, admin=True, **settings):
    """One pool "cache" over mcs, with the admin port on a free port."""
    port = free_port()
    aport = free_port() if admin else 0
    servers = [(m.addr, 1, (names or ["mc%d" % (i + 1) for i in range(len(mcs))])[i])
               for i, m in enumerate(mcs)]
    if redis is not None:
        settings["index"] = {"redis": redis.addr}
    p = cluster.proxy(pool_yaml("cache", port, servers, **settings), port=port,
                      admin_port=aport)
    if aport:
        wait_port(aport, proc=p.proc)
    return p


def migration_of(p, pool="cache"):
    pools = admin_json(p.admin_port, "/migration")["pools"]
    return next(x for x in pools if x["name"] == pool)


def status(conf_path, *extra):
    res = run_cli("status", "-c", conf_path, *extra)
    check_sanitizers(res.stderr)
    return res


# --- /metrics ------------------------------------------------------------------


def test_metrics_parse_as_prometheus_text_and_count_traffic(cluster):
    mcs = cluster.memcached(2)
    p = start_proxy(cluster, mcs)
    before = metrics(p.admin_port)
    for family in ("ringproxy_uptime_seconds", "ringproxy_reloads_total",
                   "ringproxy_reload_failures_total", "ringproxy_pool_cmd_get_total",
                   "ringproxy_pool_curr_connections", "ringproxy_backend_requests_total",
                   "ringproxy_backend_inflight", "ringproxy_backend_state"):
        assert family in before, family
    assert before["ringproxy_pool_cmd_get_total"]["type"] == "counter"
    assert before["ringproxy_pool_curr_connections"]["type"] == "gauge"
    # one state gauge per backend and state, 1 for the current one
    assert value(before, "ringproxy_backend_state", pool="cache", server="mc1",
                 addr=mcs[0].addr, state="up") == 1
    assert value(before, "ringproxy_backend_state", pool="cache", server="mc1",
                 addr=mcs[0].addr, state="down") == 0
    gets = value(before, "ringproxy_pool_cmd_get_total", pool="cache")

    c = Client(("127.0.0.1", p.port))
    c.set("k1", "v")
    for i in range(10):
        c.get("k1")
        c.get("absent-%d" % i)
    c.close()

    after = metrics(p.admin_port)
    assert value(after, "ringproxy_pool_cmd_get_total", pool="cache") == gets + 20
    assert value(after, "ringproxy_pool_get_hits_total", pool="cache") >= 10
    assert value(after, "ringproxy_pool_get_misses_total", pool="cache") >= 10
    assert value(after, "ringproxy_pool_cmd_set_total", pool="cache") >= 1
    sent = sum(after["ringproxy_backend_requests_total"]["samples"].values())
    assert sent >= 21
    assert value(after, "ringproxy_uptime_seconds") >= 0
    # no index: no index or migration families
    assert not any(f.startswith("ringproxy_index_") for f in after)


def test_metrics_escape_label_values(cluster):
    mcs = cluster.memcached(1)
    weird = 'mc"one"\\\u00fc{x}'
    port, aport = free_port(), free_port()
    text = ("cache:\n  listen: 127.0.0.1:%d\n  hash: md5\n  servers:\n"
            "    - {addr: %s, weight: 1, name: \"mc\\\"one\\\"\\\\\u00fc{x}\"}\n"
            % (port, mcs[0].addr))
    p = cluster.proxy(text, port=port, admin_port=aport)
    wait_port(aport, proc=p.proc)
    fam = metrics(aport)
    assert value(fam, "ringproxy_backend_requests_total", pool="cache", server=weird,
                 addr=mcs[0].addr) == 0
    ring = admin_json(aport, "/ring")["pools"][0]
    assert [s["identity"] for s in ring["servers"]] == [weird]


def test_reloads_are_counted(cluster):
    mcs = cluster.memcached(1)
    p = start_proxy(cluster, mcs)
    good = open(p.conf_path).read()
    p.write_config(good + "  bogus_key: 1\n")
    p.signal(signal.SIGHUP)
    wait_until(lambda: value(metrics(p.admin_port),
                             "ringproxy_reload_failures_total") == 1,
               what="a failed reload to be counted")
    p.write_config(good)
    p.signal(signal.SIGHUP)
    wait_until(lambda: value(metrics(p.admin_port), "ringproxy_reloads_total") == 1,
               what="a reload to be counted")
    assert value(metrics(p.admin_port), "ringproxy_reload_failures_total") == 1


# --- /healthz ------------------------------------------------------------------


def test_healthz_ok_when_every_pool_serves(cluster):
    p = start_proxy(cluster, cluster.memcached(2))
    status_code, headers, body = admin_get(p.admin_port, "/healthz")
    assert (status_code, body) == (200, "ok\n")


def test_healthz_503_says_why(cluster):
    mc = cluster.memcached(1)[0]
    p = start_proxy(cluster, [mc])
    mc.kill()
    c = Client(("127.0.0.1", p.port))
    with pytest.raises(Exception):
        c.get("k")          # fails: the only backend is gone
    c.close()
    code, _, body = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(
        admin_get(p.admin_port, "/healthz")), what="/healthz to say 503")
    assert "pool cache: no backend is up" in body


def test_healthz_503_until_redis_says_which_ring(cluster):
    """Redis that nobody listens on: the pool does not serve its file's ring
    (the data may obey another), it stays fenced; with fencing turned off
    (liveness: 0) it serves the file's ring after 3 s."""
    dead = free_port()
    mc = cluster.memcached(1)[0]
    for liveness, settled in ((10000, 503), (0, 200)):
        port, aport = free_port(), free_port()
        text = pool_yaml("cache", port, [(mc.addr, 1, "mc1")],
                         index={"redis": "127.0.0.1:%d" % dead},
                         migration={"liveness": liveness})
        p = cluster.proxy(text, port=port, admin_port=aport)
        wait_port(aport, proc=p.proc)
        code, _, body = admin_get(aport, "/healthz")
        assert code == 503 and "pool cache: not serving yet" in body, (code, body)
        wait_until(lambda: "not serving yet" not in admin_get(aport, "/healthz")[2],
                   what="the 3 s wait for Redis to end")
        code, _, body = admin_get(aport, "/healthz")
        assert code == settled, (code, body)
        if settled == 503:
            assert "pool cache: fenced" in body, body
            with Wire(port) as w:
                assert w.call(b"get k\r\n").startswith(b"SERVER_ERROR ringproxy fenced")


# --- /ring ---------------------------------------------------------------------


def test_ring_lists_servers_with_shares(cluster):
    mcs = cluster.memcached(3)
    p = start_proxy(cluster, mcs)
    pools = admin_json(p.admin_port, "/ring")["pools"]
    assert [x["name"] for x in pools] == ["cache"]
    ring = pools[0]
    assert ring["compat"] == "libmemcached" and ring["hash"] == "fnv1a_64"
    assert [s["identity"] for s in ring["servers"]] == ["mc1", "mc2", "mc3"]
    assert [s["addr"] for s in ring["servers"]] == [m.addr for m in mcs]
    assert all(s["weight"] == 1 and s["state"] == "up" for s in ring["servers"])
    assert sum(s["points"] for s in ring["servers"]) == ring["points"]
    assert abs(sum(s["share"] for s in ring["servers"]) - 1.0) < 1e-6
    assert "point_list" not in ring

    # the same numbers as `ringproxy ring`
    out = run_cli("ring", "-c", p.conf_path, check=True).stdout
    for s in ring["servers"]:
        line = next(l for l in out.splitlines() if l.split()[:1] == [s["identity"]])
        assert int(line.split()[3]) == s["points"]
        assert abs(float(line.split()[4].rstrip("%")) - 100 * s["share"]) < 0.001

    full = admin_json(p.admin_port, "/ring?points=1")["pools"][0]
    points = full["point_list"]
    assert len(points) == ring["points"]
    assert [pt["value"] for pt in points] == sorted(pt["value"] for pt in points)
    for s in ring["servers"]:
        assert sum(pt["server"] == s["identity"] for pt in points) == s["points"]


# --- /migration and the index ----------------------------------------------------


def test_migration_idle_with_an_index(cluster):
    redis = cluster.redis()
    p = start_proxy(cluster, cluster.memcached(2), redis=redis, hash="md5")
    mig = wait_until(lambda: (lambda m: m if m["state"] == "idle" else None)(
        migration_of(p)), what="the pool to be idle")
    assert mig["indexed"] is True and mig["epoch"] == 1
    assert mig["to"] is None and re.fullmatch(r"[0-9a-f]{32}", mig["from"])
    assert mig["arcs_total"] == 0 and mig["eta_sec"] is None

    fam = metrics(p.admin_port)
    assert value(fam, "ringproxy_migration_state", pool="cache", state="idle") == 1
    assert value(fam, "ringproxy_migration_state", pool="cache", state="moving") == 0
    assert value(fam, "ringproxy_migration_epoch", pool="cache") == 1
    assert value(fam, "ringproxy_index_state", pool="cache", state="ready") == 1
    c = Client(("127.0.0.1", p.port))
    c.set("k1", "v")
    c.close()
    wait_until(lambda: value(metrics(p.admin_port), "ringproxy_index_adds_total",
                             pool="cache") >= 1, what="the index write to be counted")


def test_migration_of_a_pool_without_index_is_none(cluster):
    p = start_proxy(cluster, cluster.memcached(1))
    mig = migration_of(p)
    assert mig == {"name": "cache", "indexed": False, "state": "none", "epoch": None}


def test_migration_progress_while_keys_move(cluster):
    redis = cluster.redis()
    mcs = cluster.memcached(2)
    p = start_proxy(cluster, mcs[:1], redis=redis, hash="md5",
                    migration={"rate": 100})
    wait_until(lambda: migration_of(p)["state"] == "idle", what="idle")
    c = Client(("127.0.0.1", p.port), default_noreply=False)    # stored before the resize
    for i in range(1000):
        c.set("key-%d" % i, "v")
    c.close()
    p.write_config(pool_yaml("cache", p.port, [(m.addr, 1, "mc%d" % (i + 1))
                                               for i, m in enumerate(mcs)],
                             hash="md5", index={"redis": redis.addr},
                             migration={"rate": 100}))
    p.signal(signal.SIGHUP)
    mig = wait_until(lambda: (lambda m: m if m["arcs_total"] > 0 else None)(
        migration_of(p)), what="the migration to start")
    assert mig["state"] in ("prepared", "switched", "moving")
    assert mig["to"] and mig["to"] != mig["from"] and mig["epoch"] == 1
    assert 0 < mig["moved_fraction"] < 1
    assert 0 <= mig["arcs_done"] <= mig["arcs_total"]

    res = status(p.conf_path, "--admin-port", p.admin_port)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^cache: (prepared|switched|moving), epoch 1", res.stdout, re.M), res.stdout
    bar = r"^  \[[#.]{20}\] +\d+\.\d%% +arcs \d+/%d +keys moved [\d,]+ +stale \d+"
    assert re.search(bar % mig["arcs_total"], res.stdout, re.M), res.stdout

    mig = wait_until(lambda: (lambda m: m if m["arcs_done"] > 0 else None)(
        migration_of(p)), timeout=SETTLE, what="an arc to finish")
    if mig["state"] == "moving":
        assert mig["lease"] is True
        assert mig["eta_sec"] is None or mig["eta_sec"] >= 0
    mig = wait_until(lambda: (lambda m: m if m["state"] == "idle" else None)(
        migration_of(p)), timeout=SETTLE, what="the migration to end")
    assert mig["epoch"] == 2 and mig["keys_moved"] > 0 and mig["keys_failed"] == 0
    fam = metrics(p.admin_port)
    assert value(fam, "ringproxy_migration_epoch", pool="cache") == 2
    assert value(fam, "ringproxy_migration_keys_moved_total", pool="cache") == mig["keys_moved"]


def test_status_from_redis_shows_a_running_migration(cluster):
    redis = cluster.redis()
    mcs = cluster.memcached(2)
    p = start_proxy(cluster, mcs[:1], redis=redis, hash="md5",
                    migration={"rate": 100})
    wait_until(lambda: migration_of(p)["state"] == "idle", what="idle")
    c = Client(("127.0.0.1", p.port), default_noreply=False)    # stored before the resize
    for i in range(1000):
        c.set("key-%d" % i, "v")
    c.close()
    p.write_config(pool_yaml("cache", p.port, [(m.addr, 1, "mc%d" % (i + 1))
                                               for i, m in enumerate(mcs)],
                             hash="md5", index={"redis": redis.addr},
                             migration={"rate": 100}))
    p.signal(signal.SIGHUP)
    wait_until(lambda: migration_of(p)["state"] == "moving", what="moving")
    closed = free_port()
    res = wait_until(lambda: (lambda r: r if "moving" in r.stdout else None)(
        status(p.conf_path, "--admin-port", closed)), timeout=5, what="status from Redis to say moving")
    assert re.search(r"^  \[[#.]{20}\] +\d+\.\d% +arcs \d+/\d+", res.stdout, re.M), res.stdout


# --- HTTP errors ---------------------------------------------------------------


def test_unknown_path_is_404_and_other_methods_405(cluster):
    p = start_proxy(cluster, cluster.memcached(1))
    for path in ("/index.html", "/nope", "/metrics/", "/ring/x", "/status.json/"):
        assert admin_get(p.admin_port, path)[0] == 404, path
    for method in ("POST", "PUT", "DELETE"):
        for path in ("/metrics", "/healthz", "/ring", "/migration", "/", "/status.json"):
            code, headers, _ = admin_get(p.admin_port, path, method=method)
            assert code == 405 and headers.get("allow") == "GET", (method, path, code)
    assert admin_get(p.admin_port, "/healthz")[0] == 200    # still serving


def test_admin_port_taken_is_a_startup_error(cluster):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        port = free_port()
        mc = cluster.memcached(1)[0]
        p = cluster.proxy(pool_yaml("cache", port, [(mc.addr, 1, "mc1")]), port=port,
                          admin_port=taken, start=False)
        with pytest.raises(RuntimeError):
            p.start()
        assert p.proc.wait(10) == 1
        assert "admin port: cannot listen on 127.0.0.1:%d" % taken in p.log()


# --- ringproxy status ---------------------------------------------------------------


def test_status_via_admin_port(cluster):
    redis = cluster.redis()
    p = start_proxy(cluster, cluster.memcached(2), redis=redis, hash="md5")
    wait_until(lambda: migration_of(p)["state"] == "idle", what="idle")
    res = status(p.conf_path, "-P", p.admin_port, "-A", "127.0.0.1")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:2] == [
        "ringproxy status (admin port 127.0.0.1:%d)" % p.admin_port,
        "cache: idle, epoch 1"]
    assert len(lines) == 3 and lines[2].startswith("  index sweep: "), lines
    res = status(p.conf_path, "--admin-port", p.admin_port, "--pool", "nope")
    assert res.returncode == 1 and "no pool named 'nope'" in res.stderr


def test_status_via_redis_when_the_admin_port_is_closed(cluster):
    redis = cluster.redis()
    p = start_proxy(cluster, cluster.memcached(2), redis=redis, hash="md5", admin=False)
    wait_until(lambda: redis.port and _ring_recorded(redis), what="the ring record")
    # The first record marks the index for a rebuild; status shows one under way.
    wait_until(lambda: _rebuild_done(redis), what="the index rebuild")
    closed = free_port()
    res = status(p.conf_path, "--admin-port", closed, "--pool", "cache")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("ringproxy status (Redis; admin port 127.0.0.1:%d: "
                               % closed), lines
    assert lines[1:] == ["cache: idle, epoch 1"]


def test_status_fails_when_nothing_answers(cluster):
    conf = os.path.join(cluster.workdir, "nothing.yml")
    with open(conf, "w") as f:
        f.write(pool_yaml("cache", free_port(), [("127.0.0.1:%d" % free_port(), 1, "mc1")],
                          index={"redis": "127.0.0.1:%d" % free_port()}))
    res = status(conf, "--admin-port", free_port())
    assert res.returncode == 1
    assert "cache: unknown: cannot connect to Redis" in res.stdout
    assert "nothing to read" in res.stderr


def _rebuild_done(redis_server):
    import redis as redis_py
    r = redis_py.Redis(port=redis_server.port)
    try:
        return (r.hget("rp:cache:index", "rebuild") or b"").startswith(b"done ")
    finally:
        r.close()


def _ring_recorded(redis_server):
    import redis as redis_py
    r = redis_py.Redis(port=redis_server.port)
    try:
        return r.hget("rp:cache:ring", "epoch") == b"1"
    finally:
        r.close()
