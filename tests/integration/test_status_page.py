"""The admin port's status page (docs/ARCHITECTURE.md, "Observability";
src/status_page.html), loaded in headless Chromium against real servers: the
figures it draws during a live migration are /migration's and /ring's, what
a resize waits for is shown, server data is shown as text and never run, the
page needs nothing from outside, and it says it needs JavaScript when that
is off. Screenshots go to build/status-page/ (kept for the notes)."""
import base64
import hashlib
import html.parser
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import zlib

import pytest
from pymemcache.client.base import Client

from harness import ROOT, admin_get, admin_json, free_port, pool_yaml, wait_port, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = os.path.join(ROOT, "build", "status-page")
WINDOW = (1280, 900)
SETTLE = 60.0

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (scripts/install-deps.sh installs "
    "the Debian package chromium)")


# --- Chromium ------------------------------------------------------------------


def chromium(tmp_path, *args):
    """Run headless Chromium with its own profile; its stdout. The virtual
    time budget lets the page's timers (its refreshes) run before the DOM or
    the screenshot is taken, without waiting for them in real time."""
    argv = [CHROMIUM, "--headless", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--disable-sync", "--disable-background-networking",
            "--disable-component-update", "--disable-default-apps", "--mute-audio",
            "--user-data-dir=%s" % (tmp_path / "chromium-profile"),
            "--virtual-time-budget=3500"]
    if os.geteuid() == 0:
        argv.append("--no-sandbox")     # Chromium refuses to sandbox as root
    res = subprocess.run(argv + list(args), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def dump_dom(tmp_path, url, *args):
    return chromium(tmp_path, "--dump-dom", *args, url)


def screenshot(tmp_path, url, name):
    path = os.path.join(SHOTS, name)
    os.makedirs(SHOTS, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    chromium(tmp_path, "--screenshot=%s" % path, "--window-size=%d,%d" % WINDOW,
             "--hide-scrollbars", "--force-device-scale-factor=1", url)
    return path


# --- reading the page ------------------------------------------------------------


class Page(html.parser.HTMLParser):
    """The figures of a dumped DOM: per pool (data-pool) its fields
    (data-field -> (data-value, text)) and its servers' (data-server), plus
    top-level elements by id and every tag and text seen."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "wbr"}

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.pools, self.ids, self.tags, self.texts = {}, {}, [], []
        self.stack = []         # (tag, attrs, pool, server, text parts or None)
        self.raw = text
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        pool = self.stack[-1][2] if self.stack else None
        server = self.stack[-1][3] if self.stack else None
        if "data-pool" in a:
            pool = a["data-pool"]
            self.pools.setdefault(pool, {"fields": {}, "servers": {}})
        if "data-server" in a and pool is not None:
            server = a["data-server"]
            self.pools[pool]["servers"].setdefault(server, {})
        capture = [] if ("data-field" in a or "id" in a) else None
        if tag not in self.VOID:
            self.stack.append((tag, a, pool, server, capture))

    def handle_endtag(self, tag):
        while self.stack:
            t, a, pool, server, capture = self.stack.pop()
            if capture is not None:
                text = "".join(capture).strip()
                if "id" in a:
                    self.ids[a["id"]] = (a, text)
                if "data-field" in a and pool is not None:
                    where = (self.pools[pool]["servers"][server] if server is not None
                             else self.pools[pool]["fields"])
                    where[a["data-field"]] = (a.get("data-value"), text)
            if t == tag:
                break

    def handle_data(self, data):
        self.texts.append(data)
        for entry in self.stack:
            if entry[4] is not None:
                entry[4].append(data)

    def field(self, pool, name):
        return self.pools[pool]["fields"][name]

    def number(self, pool, name):
        value = self.field(pool, name)[0]
        assert value not in (None, ""), "%s of %s is unknown on the page" % (name, pool)
        return float(value)


def load(tmp_path, aport, *args):
    return Page(dump_dom(tmp_path, "http://127.0.0.1:%d/" % aport, *args))


# --- PNG ------------------------------------------------------------------------


def png_pixels(path):
    """(width, height, rows of (r, g, b) tuples) of an 8-bit, non-interlaced
    RGB or RGBA PNG, decoded here (zlib and the five filters), so the test
    looks at the pixels without an image library."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, head = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    width, height, depth, color, _, _, interlace = head
    assert depth == 8 and color in (2, 6) and interlace == 0, head
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prior = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prior[i], prior[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prior = line
    return width, height, rows


def color_of(page_html, name):
    """A CSS custom property's #rrggbb value in the page, as (r, g, b)."""
    m = re.search(r"--%s:\s*#([0-9a-f]{6})" % name, page_html)
    return tuple(bytes.fromhex(m.group(1)))


# --- servers --------------------------------------------------------------------


def indexed_pool(port, mcs, redis_port, rate, names=None):
    servers = [(m.addr, 1, (names or {}).get(i, "mc%d" % (i + 1))) for i, m in enumerate(mcs)]
    return pool_yaml("cache", port, servers, hash="md5", timeout=2000,
                     index={"redis": "127.0.0.1:%d" % redis_port},
                     migration={"rate": rate})


def start(cluster, text, port):
    aport = free_port()
    p = cluster.proxy(text, port=port, admin_port=aport)
    wait_port(aport, proc=p.proc)
    return p


def migration_of(aport, pool="cache"):
    return next(x for x in admin_json(aport, "/migration")["pools"] if x["name"] == pool)


def fill(port, n):
    c = Client(("127.0.0.1", port))
    for i in range(0, n, 500):
        assert c.set_many({"key-%d" % j: b"v" for j in range(i, min(n, i + 500))},
                          noreply=False) == []
    c.close()


class Traffic:
    """A client reading keys in a loop, so the page has rates to show."""

    def __init__(self, port, n):
        self.port, self.n, self.stop = port, n, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        c = Client(("127.0.0.1", self.port), timeout=10)
        i = 0
        while not self.stop.is_set():
            c.get_many(["key-%d" % ((i + j) % self.n) for j in range(20)])
            i += 20
        c.close()

    def end(self):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def reload(proxy, text):
    proxy.write_config(text)
    proxy.signal(signal.SIGHUP)


# --- the tests ------------------------------------------------------------------


def test_page_is_self_contained_and_runs_only_its_own_script(cluster, tmp_path):
    mcs = cluster.memcached(1)
    port = free_port()
    p = start(cluster, pool_yaml("cache", port, [(mcs[0].addr, 1, "mc1")]), port)
    for path in ("/", "/status"):
        code, headers, body = admin_get(p.admin_port, path)
        assert code == 200 and headers["content-type"] == "text/html; charset=utf-8"
        assert headers["x-content-type-options"] == "nosniff"
        csp = headers["content-security-policy"]
        # The policy names the SHA-256 of the page's own script and style,
        # and allows nothing inline besides, nothing from elsewhere.
        for tag, directive in (("script", "script-src"), ("style", "style-src")):
            blocks = re.findall(r"<%s>(.*?)</%s>" % (tag, tag), body, re.S)
            assert len(blocks) == 1, tag
            digest = base64.b64encode(hashlib.sha256(blocks[0].encode()).digest()).decode()
            assert "%s 'sha256-%s';" % (directive, digest) in csp, csp
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert "unsafe" not in csp and "http" not in csp, csp
    # Nothing the page loads or links to is elsewhere: every src and href is
    # this origin's or data:.
    for _, attrs in Page(body).tags:
        for a in ("src", "href", "action"):
            if a in attrs:
                assert attrs[a].startswith("/") and not attrs[a].startswith("//") \
                    or attrs[a].startswith("data:"), attrs
    assert not re.search(r"https?://|@import|url\(", body)
    assert admin_get(p.admin_port, "/status.json")[1]["x-content-type-options"] == "nosniff"

    # In Chromium the script runs (under that policy) and draws the pool ...
    page = load(tmp_path, p.admin_port)
    assert int(page.ids["pools"][0]["data-refreshes"]) >= 2
    assert page.ids["updated"][0]["data-state"] == "live"
    assert page.field("cache", "pool.serving")[0] == "serving"
    assert page.pools["cache"]["servers"]["mc1"]["server.state"][0] == "up"
    assert page.field("cache", "pool.requests_per_sec")[0] != ""   # two samples: a rate
    assert "no Redis index" in "".join(page.texts)
    assert "hidden" in page.ids["error"][0]           # no failed read to report
    # ... and without JavaScript it says it needs it and where the JSON views
    # are. (Chromium neither dumps nor shoots a page with scripts off, so the
    # served document is read as such a browser shows it: <noscript> as
    # markup, the pools' container empty.)
    off = Page(body)
    assert off.pools == {} and off.ids["pools"][1] == ""
    assert "This page needs JavaScript" in " ".join(off.ids["nojs"][1].split())
    assert any(t == "a" and a.get("href") == "/status.json" for t, a in off.tags)


def test_page_shows_server_data_as_text(cluster, tmp_path):
    """Pool and server names come from the config file: markup in them is
    shown as text, never parsed or run."""
    mcs = cluster.memcached(2)
    port = free_port()
    pool = '<b id="pwn-pool">p</b>'
    server = "<img/src=x/onerror=document.title='pwned'>"
    text = ("'%s':\n  listen: 127.0.0.1:%d\n  servers:\n"
            "    - %s:1 %s\n    - %s:1 mc2\n" % (pool, port, mcs[0].addr, server, mcs[1].addr))
    p = start(cluster, text, port)
    names = [x["name"] for x in admin_json(p.admin_port, "/status.json")["pools"]]
    assert names == [pool]

    page = load(tmp_path, p.admin_port)
    assert set(page.pools) == {pool}
    assert page.field(pool, "pool.name") == (pool, pool)
    assert set(page.pools[pool]["servers"]) == {server, "mc2"}
    assert page.pools[pool]["servers"][server]["server.identity"][1] == server
    assert not any(t == "img" for t, _ in page.tags)
    assert not any(a.get("id") == "pwn-pool" for _, a in page.tags)
    assert "<title>ringproxy status</title>" in page.raw and "pwned</title>" not in page.raw


def test_page_during_a_migration_shows_what_migration_says(cluster, tmp_path):
    """3 -> 4 memcached with the mover held to 25 keys/s: the page, loaded
    while keys move, shows the phase /migration shows, progress between
    /migration's before and after the load, the ETA and each server's state
    and share as /ring gives them; a screenshot is kept."""
    redis = cluster.redis()
    mcs = cluster.memcached(4)
    port = free_port()
    p = start(cluster, indexed_pool(port, mcs[:3], redis.port, 25), port)
    wait_until(lambda: migration_of(p.admin_port)["state"] == "idle", what="idle")
    fill(port, 4000)
    reload(p, indexed_pool(port, mcs, redis.port, 25))
    wait_until(lambda: (lambda m: m["phase"] == "moving" and m["arcs_done"] >= 1)(
        migration_of(p.admin_port)), timeout=SETTLE, what="an arc moved")

    traffic = Traffic(port, 4000)
    before = migration_of(p.admin_port)
    page = load(tmp_path, p.admin_port)
    after = migration_of(p.admin_port)
    ring = admin_json(p.admin_port, "/ring")["pools"][0]
    assert before["phase"] == after["phase"] == "moving", \
        "the migration left `moving` while the page loaded: slow the mover down"

    f = page.pools["cache"]["fields"]
    assert f["mig.state"][0] == after["state"] == "moving"
    assert f["mig.phase"][0] == after["phase"]
    assert f["mig.to"][0] == after["to"] and f["mig.from"][0] == after["from"]
    assert f["mig.epoch"][0] == str(after["epoch"])
    assert page.number("cache", "mig.arcs_total") == after["arcs_total"]
    for name in ("arcs_done", "keys_moved"):
        shown = page.number("cache", "mig." + name)
        assert before[name] <= shown <= after[name], (name, before[name], shown, after[name])
    done, total = page.number("cache", "mig.arcs_done"), page.number("cache", "mig.arcs_total")
    assert abs(page.number("cache", "mig.progress") - done / total) < 1e-9
    assert re.match(r"^\d+\.\d % of arcs moved \(\d+ / \d+\)$", f["mig.progress"][1])
    assert page.number("cache", "mig.eta_sec") > 0           # an arc is done: known
    assert re.match(r"^\d+ (s|min \d\d s)$", f["mig.eta_sec"][1]), f["mig.eta_sec"]
    assert f["mig.keys_per_sec"][0] != "" and f["mig.keys_per_sec"][1] != "n/a"
    assert f["mig.waits"][1] == "waits for nothing: the keys are moving"
    assert f["pool.migrating"][0] == "resizing"
    assert f["index.health"][0] == after["index_health"] == "ok"
    assert f["pool.requests_per_sec"][0] != ""      # the clients' rate, from two samples

    servers = page.pools["cache"]["servers"]
    assert list(servers) == [s["identity"] for s in ring["servers"]] == \
        ["mc1", "mc2", "mc3", "mc4"]
    for s in ring["servers"]:
        shown = servers[s["identity"]]
        assert shown["server.state"][0] == s["state"] == "up"
        assert abs(float(shown["server.share"][0]) - s["share"]) < 1e-9
        assert shown["server.addr"][0] == s["addr"]
    assert abs(sum(float(s["server.share"][0]) for s in servers.values()) - 1) < 1e-6

    # The screenshot, while the keys still move: a PNG of the window's size,
    # not blank, with the progress bar drawn in its colour.
    shot = screenshot(tmp_path, "http://127.0.0.1:%d/" % p.admin_port, "migration.png")
    assert migration_of(p.admin_port)["phase"] == "moving"
    width, height, rows = png_pixels(shot)
    assert (width, height) == WINDOW
    colors = {px for row in rows[::4] for px in row[::4]}
    assert len(colors) > 20, "a blank or nearly blank screenshot"
    bar = color_of(admin_get(p.admin_port, "/")[2], "progress")
    assert sum(row.count(bar) for row in rows) > 100, "no progress bar in the screenshot"
    traffic.end()

    # Released, the migration ends and the page says so.
    reload(p, indexed_pool(port, mcs, redis.port, 0))
    wait_until(lambda: (lambda m: m["state"] == "idle" and m["epoch"] == 2)(
        migration_of(p.admin_port)), timeout=SETTLE, what="the migration to end")
    page = load(tmp_path, p.admin_port)
    assert page.field("cache", "mig.state")[0] == "idle"
    assert page.field("cache", "mig.epoch")[0] == "2"
    assert page.field("cache", "mig.waits")[1] == "no resize under way"
    assert "mig.progress" not in page.pools["cache"]["fields"]


def test_page_shows_which_proxies_a_resize_waits_for(cluster, tmp_path):
    """Two proxies share a Redis; only one loads the 4-server file: the
    resize is proposed and waits for the other, which the page names as
    /migration does."""
    redis = cluster.redis()
    mcs = cluster.memcached(4)
    port_a, port_b = free_port(), free_port()
    a = start(cluster, indexed_pool(port_a, mcs[:3], redis.port, 0), port_a)
    b = start(cluster, indexed_pool(port_b, mcs[:3], redis.port, 0), port_b)
    for x in (a, b):
        wait_until(lambda: migration_of(x.admin_port)["state"] == "idle", what="idle")
    reload(a, indexed_pool(port_a, mcs, redis.port, 0))
    mig = wait_until(lambda: (lambda m: m if m["state"] == "proposed" and m["waiting_for"]
                              else None)(migration_of(a.admin_port)),
                     what="the change to be proposed, waiting for b")

    page = load(tmp_path, a.admin_port)
    assert migration_of(a.admin_port)["waiting_for"] == mig["waiting_for"]
    f = page.pools["cache"]["fields"]
    assert f["mig.state"][0] == "proposed"
    assert f["mig.waiting_for"][0] == mig["waiting_for"]
    assert f["mig.waiting_for"][1] == ("waiting for these live proxies to load the same "
                                       "ring: " + mig["waiting_for"])
    assert f["mig.live_proxies"][0] == "2"
    # /healthz says the change waits: the page's health shows it, degraded.
    code, _, health = admin_get(a.admin_port, "/healthz")
    assert code == 200 and "waits for" in health
    assert page.ids["health"][0]["data-state"] == "degraded"
    shot = screenshot(tmp_path, "http://127.0.0.1:%d/" % a.admin_port, "waiting.png")
    assert png_pixels(shot)[:2] == WINDOW


def test_page_shows_the_index_health(cluster, tmp_path):
    """Redis gone: the page's index health and its reason are /migration's."""
    redis = cluster.redis()
    mcs = cluster.memcached(1)
    port = free_port()
    p = start(cluster, indexed_pool(port, mcs, redis.port, 0), port)
    wait_until(lambda: migration_of(p.admin_port)["state"] == "idle", what="idle")
    redis.kill()
    mig = wait_until(lambda: (lambda m: m if m["index_health"] != "ok" else None)(
        migration_of(p.admin_port)), what="the index to be unhealthy")
    page = load(tmp_path, p.admin_port)
    assert page.field("cache", "index.health")[0] == mig["index_health"] == \
        migration_of(p.admin_port)["index_health"]
    assert page.field("cache", "index.error")[0] == (mig["index_error"] or "")


def test_page_names_the_server_that_blocks_the_migration(cluster, tmp_path):
    """A source frozen (SIGSTOP) during a 3 -> 4 resize: its keys cannot be
    listed by the closing pass, the migration holds, and the page names the
    server as /migration's blocked_by does."""
    redis = cluster.redis()
    mcs = cluster.memcached(4)
    port = free_port()
    p = start(cluster, indexed_pool(port, mcs[:3], redis.port, 0), port)
    wait_until(lambda: migration_of(p.admin_port)["state"] == "idle", what="idle")
    mcs[0].proc.send_signal(signal.SIGSTOP)
    try:
        reload(p, indexed_pool(port, mcs, redis.port, 0))
        mig = wait_until(lambda: (lambda m: m if "mc1" in (m["blocked_by"] or "") else None)(
            migration_of(p.admin_port)), timeout=SETTLE, what="/migration to name mc1")
        page = load(tmp_path, p.admin_port)
        now = migration_of(p.admin_port)
        f = page.pools["cache"]["fields"]
        assert f["mig.state"][0] == now["state"] == "moving"
        assert f["mig.blocked_by"][0] == now["blocked_by"] == mig["blocked_by"]
        assert f["mig.blocked_by"][1] == "blocked: " + mig["blocked_by"]
        assert "mig.waits" not in f
        assert f["mig.eta_sec"] == ("", "n/a (blocked)")
        assert page.ids["health"][0]["data-state"] == "degraded"
        shot = screenshot(tmp_path, "http://127.0.0.1:%d/" % p.admin_port, "blocked.png")
        assert png_pixels(shot)[:2] == WINDOW
    finally:
        mcs[0].proc.send_signal(signal.SIGCONT)
