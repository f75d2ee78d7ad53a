"""Regression tests for races between proxies of a fleet during a resize
(docs/ARCHITECTURE.md, "Resizing a fleet").

Each test reproduces an interleaving that an adversarial review showed to
lose an acknowledged write or to make reads go backwards on the binary
before f375b3a, and asserts the correct outcome: it fails on that binary
(its docstring says how) and passes on the fixed one.

Where a proxy's steps are played by hand against memcached, they are the
meta commands src/move.c sends (quoted in each test); the other side is a
real ringproxy, and where its steps have to be interleaved with the hand
played ones, a relay between it and one memcached holds its commands at a
given point (HoldingRelay), so the interleaving is exact, not timed.
"""
import os
import platform
import re
import signal
import socket
import threading
import time

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from harness import TcpRelay, Wire, free_port, locate, mc_value, pool_yaml
from test_migration import (env, pool_config, proxy_stats, reload,  # noqa: F401
                            wait_migrated, wait_ready)


# --- helpers --------------------------------------------------------------------


def raw(m, line, port=None):
    """One meta command straight to a memcached: its reply (a VA reply with
    its data line)."""
    with socket.create_connection(("127.0.0.1", port or m.port), timeout=5) as s:
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\r\n") or (buf.startswith(b"VA") and buf.count(b"\r\n") < 2):
            chunk = s.recv(65536)
            assert chunk, "memcached closed the connection: %r" % buf
            buf += chunk
        return buf


def cas_of(reply):
    """The c<cas> flag of an "HD"/"VA" meta reply."""
    for tok in reply.split(b"\r\n")[0].split()[1:]:
        if tok.startswith(b"c"):
            return int(tok[1:])
    raise AssertionError("no CAS in %r" % reply)


def changing_key(conf_a, conf_b, prefix, want_new=None):
    keys = ["%s-%d" % (prefix, i) for i in range(2000)]
    a, b = locate(conf_a, keys), locate(conf_b, keys)
    for k in keys:
        if a[k] != b[k] and (want_new is None or b[k] == want_new):
            return k, a[k], b[k]
    raise AssertionError("no changing key")


def heartbeats(r):
    return {k.decode(): v.decode() for k, v in r.hgetall("rp:cache:proxies").items()}


class FakeProxy:
    """A live heartbeat that proposes ring `fp` and acknowledges `ack`:
    holds the fleet at a phase (as a slow proxy would)."""

    def __init__(self, r, fp, ack="stable", to="-"):
        self.r, self.fp, self.ack, self.to = r, fp, ack, to
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.beat()
        self.t.start()

    def beat(self):
        sec, usec = self.r.time()
        self.r.hset("rp:cache:proxies", "fake:1:0000",
                    "%d %s %s %s" % (sec * 1000 + usec // 1000, self.fp, self.ack, self.to))

    def run(self):
        while not self.stop.wait(0.3):
            self.beat()

    def leave(self):
        self.stop.set()
        self.t.join()
        self.r.hdel("rp:cache:proxies", "fake:1:0000")


class HoldingRelay(TcpRelay):
    """A TCP relay in front of one memcached. hold(key) makes it stop
    forwarding a connection's bytes toward memcached at the first
    "md <key>" command it sees on it (what came before goes through);
    release() sends what it held. Replies always flow."""

    def __init__(self, target_port):
        self.cv = threading.Condition()
        self.pattern = None
        self.held = []          # (server socket, bytes)
        self.holding = False
        self.socks = []
        super().__init__(target_port)

    def attach(self, c, s):
        for x in (c, s):
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socks += [c, s]
        threading.Thread(target=self.up, args=(c, s), daemon=True).start()
        threading.Thread(target=self.down, args=(s, c), daemon=True).start()

    def up(self, c, s):
        mine = False        # this connection is the one held
        while True:
            try:
                data = c.recv(65536)
            except OSError:
                data = b""
            if not data:
                s.close()
                return
            with self.cv:
                if mine and self.holding:
                    self.held.append((s, data))
                    continue
                mine = False
                m = self.pattern.search(data) if self.pattern and not self.holding else None
                if m is not None:
                    i = m.start() + (1 if data[m.start():m.start() + 1] == b"\n" else 0)
                    s.sendall(data[:i])
                    self.held.append((s, data[i:]))
                    self.holding = mine = True
                    self.pattern = None
                    self.cv.notify_all()
                    continue
            s.sendall(data)

    @staticmethod
    def down(s, c):
        while True:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                c.close()
                return
            try:
                c.sendall(data)
            except OSError:
                return

    def hold(self, key):
        with self.cv:
            self.pattern = re.compile(rb"(^|\n)md " + re.escape(key.encode()) + rb"[ \r]")

    def wait_held(self, timeout=5):
        with self.cv:
            return self.cv.wait_for(lambda: self.holding, timeout)

    def release(self):
        with self.cv:
            for s, data in self.held:
                s.sendall(data)
            self.held = []
            self.holding = False
            self.pattern = None

    def close(self):
        super().close()
        for x in self.socks:
            try:
                x.close()
            except OSError:
                pass


EPOLL_SYSCALLS = {
    "x86_64": {"232", "281", "441"},     # epoll_wait, epoll_pwait, epoll_pwait2
    "aarch64": {"22", "441"},            # epoll_pwait, epoll_pwait2
}


def freeze_outside_epoll_wait(proc, attempts=200):
    """SIGSTOP proc while it is not blocked in epoll_wait: there, SIGCONT
    makes epoll_wait fail with EINTR and libevent runs its overdue timers
    (the tick that raises the fence) before any I/O; outside it (as a VM
    pause finds a busy proxy), the I/O that arrived meanwhile is handled
    first. Retries (SIGCONT, SIGSTOP) until /proc says so. Returns the
    number of tries."""
    pid = proc.pid
    epoll = EPOLL_SYSCALLS.get(platform.machine())
    for i in range(1, attempts + 1):
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 2
        while True:
            with open("/proc/%d/stat" % pid) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if state == "T":
                break
            assert time.monotonic() < deadline, "SIGSTOP did not stop %d" % pid
            time.sleep(0.001)
        if epoll is None:
            return i        # unknown architecture: take the freeze as it comes
        with open("/proc/%d/syscall" % pid) as f:
            nr = f.read().split()[0]
        if nr not in epoll:
            return i
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.002 * (i % 7))
    raise AssertionError("the proxy was always found in epoll_wait")


# --- 1: a frozen proxy ------------------------------------------------------------


def test_frozen_proxy_does_not_finish_its_set_after_the_fleet_moved_on(env, cluster):
    """A proxy frozen (SIGSTOP, a VM pause) in the middle of a set on a
    changing key, whose backend's answer arrives while it is frozen, must not
    act on it once it resumes after the fleet excluded it and moved on: the
    fence is checked by the clock (mig_fenced) on every send and reply, not
    only by the flag the tick sets, since the first loop turn after the
    freeze may handle I/O before the tick. Asserted: the frozen set is
    answered SERVER_ERROR ringproxy fenced (not STORED), and a write
    acknowledged by the fleet meanwhile (v4) is still read afterwards.

    Old binary: the reply was handled before the tick, the set's next step
    ("md N") deleted v4 and the set answered STORED. That needs the freeze
    to find the proxy outside epoll_wait, which the test ensures by reading
    /proc/<pid>/syscall while the proxy is stopped and re-freezing until
    it is (freeze_outside_epoll_wait), so the bad interleaving is played on
    every run rather than in about half of them."""
    a = env.servers(2)
    b = a + env.servers(1)
    mig = {"rate": 0, "liveness": 3000}
    ports = [free_port() for _ in range(3)]
    texts_a = [pool_config(p, a, env.redis.port, extra={"migration": mig, "timeout": 60000})
               for p in ports]
    texts_b = [pool_config(p, b, env.redis.port, extra={"migration": mig, "timeout": 60000})
               for p in ports]
    px = [cluster.proxy(t, port=p) for t, p in zip(texts_a, ports)]
    for p in ports:
        wait_ready(p)
    with open(px[0].conf_path + ".b", "w") as f:
        f.write(texts_b[0])
    k, o_name, n_name = changing_key(px[0].conf_path, px[0].conf_path + ".b", "fz")
    O = [m for m in b if "mc%d" % m.ident == o_name][0]
    N = [m for m in b if "mc%d" % m.ident == n_name][0]
    c1 = Client(("127.0.0.1", ports[0]))
    c2 = Client(("127.0.0.1", ports[1]))
    assert c1.set(k, b"v1", noreply=False)

    # Hold the fleet at `prepared` with a fake slow proxy proposing B.
    reload(px[0], texts_b[0])
    r = env.r
    deadline = time.monotonic() + 10
    fp_b = None
    while fp_b is None:
        cnt = {}
        for v in heartbeats(r).values():
            cnt[v.split()[1]] = cnt.get(v.split()[1], 0) + 1
        if len(cnt) == 2:
            fp_b = [fp for fp, n in cnt.items() if n == 1][0]
        else:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    fake = FakeProxy(r, fp_b)
    reload(px[1], texts_b[1])
    reload(px[2], texts_b[2])
    deadline = time.monotonic() + 10
    while proxy_stats(ports[2]).get("migration:state") != "prepared":
        assert time.monotonic() < deadline, proxy_stats(ports[2])
        time.sleep(0.05)
    time.sleep(0.5)
    assert r.hget("rp:cache:migration", "phase") == b"prepared"

    # P3 (prepared) sets k: "mg N c" is answered, "ms O" waits (O stopped).
    O.proc.send_signal(signal.SIGSTOP)
    w3 = Wire(ports[2], timeout=60)
    w3.send(("set %s 0 0 2\r\nv3\r\n" % k).encode())
    time.sleep(0.3)
    # Keep P3 busy, and freeze it outside epoll_wait.
    busy = threading.Event()
    hammer_errors = []

    def hammer():
        try:
            w = Wire(ports[2], timeout=60)
            payload = b"get unrelated-key\r\n" * 200
            while not busy.is_set():
                w.send(payload)
                for _ in range(200):
                    w.read_reply()
        except Exception as e:      # ends when the freeze's test is done
            if not busy.is_set():
                hammer_errors.append(repr(e))
    # Eight connections: with -T N the kernel spreads them over the threads,
    # and those on the home thread (whose loop runs the set's next step)
    # keep it busy as well as the commands the others hand it.
    hs = [threading.Thread(target=hammer, daemon=True) for _ in range(8)]
    for h in hs:
        h.start()
    time.sleep(0.3)
    try:
        tries = freeze_outside_epoll_wait(px[2].proc)
    except AssertionError as e:
        raise AssertionError("%s; the load's connections ended with %s" %
                             (e, hammer_errors or "nothing")) from e
    finally:
        busy.set()
        O.proc.send_signal(signal.SIGCONT)     # O stores v3, answers into P3's socket
    print("P3 frozen outside epoll_wait after %d tries" % tries)
    time.sleep(0.3)
    fake.leave()

    # The fleet excludes P3 after liveness and finishes the migration.
    wait_migrated(ports[0], 2, timeout=40)
    wait_migrated(ports[1], 2, timeout=40)
    assert c2.set(k, b"v4", noreply=False)     # acknowledged, on N (plain path)
    assert c2.get(k) == b"v4"

    px[2].proc.send_signal(signal.SIGCONT)
    reply = w3.read_line()
    print("P3 answered the frozen set:", reply)
    time.sleep(0.5)
    got = c2.get(k), c1.get(k)
    print("after resume: gets ->", got, "; N holds", mc_value(N, k), "; O holds", mc_value(O, k))
    w3.close()
    assert got == (b"v4", b"v4"), "the acknowledged v4 was lost: %r" % (got,)
    assert mc_value(N, k) == b"v4" and mc_value(O, k) is None
    assert reply.startswith(b"SERVER_ERROR") and b"fenced" in reply, reply


# --- 2: a proxy that never reached Redis --------------------------------------------


def unfenced_get(c, k, timeout=10):
    """get through a proxy that may still be fenced (Redis just came back)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return c.get(k)
        except MemcacheServerError as e:
            assert "fenced" in str(e), e
            assert time.monotonic() < deadline, "still fenced with Redis up"
            time.sleep(0.1)


def test_unsynced_proxy_is_fenced_until_its_first_sync(env, cluster):
    """A proxy that cannot reach Redis at start does not know which ring the
    data obeys: it must not serve its file's ring (B) while the data obeys
    the recorded one (A). Asserted: for 6 s after its start with Redis hung
    every set through it fails (SERVER_ERROR ringproxy fenced once it
    listens), nothing lands on the server only ring B names; once Redis
    answers it serves by the recorded ring, and the resize to B that follows
    keeps the last acknowledged write, one copy, on its new owner.

    Old binary: after MIG_READY_TIMEOUT_MS (3 s) it served ring B unfenced
    until liveness/2 (5 s): the set was acknowledged and stored on mc3, read
    back as v1 once the proxy learnt the record (v2 lost), and the orphan on
    mc3 beat the later acknowledged v5 at the next resize."""
    a = env.servers(2)
    b = a + env.servers(1)
    p1 = env.proxy(a)
    port2 = free_port()
    text_b = env.config(b, port2)
    with open(p1.conf_path + ".b", "w") as f:
        f.write(text_b)
    k, o_name, n_name = changing_key(p1.conf_path, p1.conf_path + ".b", "rd")
    O = [m for m in b if "mc%d" % m.ident == o_name][0]
    N = [m for m in b if "mc%d" % m.ident == n_name][0]
    c1 = Client(("127.0.0.1", p1.port))
    assert c1.set(k, b"v1", noreply=False)
    time.sleep(0.3)

    env.redis.proc.send_signal(signal.SIGSTOP)     # Redis unreachable (hung)
    refused = []
    try:
        t0 = time.monotonic()
        cluster.proxy(text_b, port=port2)           # started with the new file
        c2 = Client(("127.0.0.1", port2), connect_timeout=1, timeout=5)
        while time.monotonic() - t0 < 6.0:
            try:
                ok = c2.set(k, b"v2", noreply=False)
            except MemcacheServerError as e:
                refused.append(str(e))
                assert "fenced" in str(e), e
            except OSError:
                pass                                # not listening yet
            else:
                raise AssertionError("P2 acknowledged set v2 (%r) after %.1fs, before "
                                     "it ever reached Redis" % (ok, time.monotonic() - t0))
            time.sleep(0.2)
    finally:
        env.redis.proc.send_signal(signal.SIGCONT)
    print("P2 refused %d sets while Redis hung, e.g. %s" % (len(refused), refused[:1]))
    assert refused, "P2 never answered while Redis hung"
    assert mc_value(N, k) is None                   # nothing written by ring B

    # Both proxies lost Redis (P1 is fenced too, past liveness/2): wait
    # until each serves again.
    wait_ready(port2)
    got1, got2 = unfenced_get(c1, k), unfenced_get(c2, k)
    print("after Redis answers: P1 get ->", got1, " P2 get ->", got2)
    assert (got1, got2) == (b"v1", b"v1")
    # P2 now routes by the recorded ring A (P1 proposes A: no migration).
    assert c2.set(k, b"v2", noreply=False)
    assert c1.get(k) == b"v2" and mc_value(O, k) == b"v2" and mc_value(N, k) is None

    assert c1.set(k, b"v5", noreply=False)
    reload(p1, env.config(b, p1.port))
    wait_migrated(p1.port, 2, timeout=40)
    wait_migrated(port2, 2, timeout=40)
    got = c1.get(k), c2.get(k)
    print("after the resize to B: gets ->", got, "(last acknowledged write: v5)")
    assert got == (b"v5", b"v5")
    assert mc_value(N, k) == b"v5" and mc_value(O, k) is None


# --- 3: the index filter ------------------------------------------------------------


def indexed_members(r):
    out = set()
    for z in r.scan_iter("rp:cache:v:*"):
        if r.type(z) == b"zset":
            out.update(m.decode() for m in r.zrange(z, 0, -1))
    return out


def test_delete_through_a_newcomer_then_set_leaves_the_key_indexed(env, cluster):
    """Right after a second proxy joins, the first may still filter re-stores
    of keys it believes indexed (it thinks it is alone until its next sync).
    Deletes must therefore not remove index entries: a delete through the
    newcomer followed by a set through the first leaves the key indexed, and
    the next resize moves it. Asserted: every such key is indexed, and reads
    v2 (its last acknowledged write) after the resize.

    Old binary: the delete's ZREM removed the entry, the first proxy's
    filtered set added none back; the resize did not move those keys and
    they missed afterwards."""
    a = env.servers(2)
    b = a + env.servers(1)
    p1 = env.proxy(a)
    with open(p1.conf_path + ".b", "w") as f:
        f.write(env.config(b, p1.port))
    c1 = Client(("127.0.0.1", p1.port))
    cand = ["flt-%d" % i for i in range(3000)]
    wa, wb = locate(p1.conf_path, cand), locate(p1.conf_path + ".b", cand)
    keys = [k for k in cand if wa[k] != wb[k]][:200]
    time.sleep(2.5)                 # P1's syncs say it is alone: filter on
    for k in keys:
        assert c1.set(k, b"v1", noreply=False)
    time.sleep(0.5)
    assert set(keys) <= indexed_members(env.r)         # control
    port2 = free_port()
    p2 = cluster.proxy(env.config(a, port2), port=port2)
    c2 = Client(("127.0.0.1", port2))
    # As soon as P2 serves: delete through P2, store again through P1.
    deadline = time.monotonic() + 10
    while True:
        try:
            c2.delete(keys[0], noreply=False)
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    for k in keys:
        c2.delete(k, noreply=False)
        assert c1.set(k, b"v2", noreply=False)      # acknowledged
    time.sleep(1.5)
    members = indexed_members(env.r)
    stranded = [k for k in keys if k not in members]
    print("stored but not indexed: %d of %d" % (len(stranded), len(keys)))
    assert stranded == []
    reload(p1, env.config(b, p1.port))
    reload(p2, env.config(b, port2))
    wait_migrated(p1.port, 2, timeout=40)
    wait_migrated(port2, 2, timeout=40)
    got = c1.get_many(keys)
    lost = [k for k in keys if got.get(k) != b"v2"]
    print("after the resize, %d acknowledged keys miss, e.g. %s" % (len(lost), lost[:3]))
    assert lost == []


# --- 4: prepared and switched writers --------------------------------------------------


def hold_at_switched(env, cluster, nkeys, prefix, liveness=3000, timeout=1000):
    """One real proxy P1 serving a 2 -> 3 server resize, held at `switched`
    by a fake proxy acknowledging `prepared` (so a prepared proxy may still
    be writing), its servers behind HoldingRelays. Returns (p1, client,
    fake, relays by name, memcacheds by name, changing keys with their
    (old, new) owner names)."""
    a = env.servers(2)
    b = a + env.servers(1)
    relays = {"mc%d" % m.ident: HoldingRelay(m.port) for m in b}
    by = {"mc%d" % m.ident: m for m in b}

    def conf(mcs, port):
        servers = [(relays["mc%d" % m.ident].addr, 1, "mc%d" % m.ident) for m in mcs]
        return pool_yaml("cache", port, servers, hash="md5", timeout=timeout,
                         index={"redis": "127.0.0.1:%d" % env.redis.port},
                         migration={"rate": 0, "liveness": liveness})
    port = free_port()
    p1 = cluster.proxy(conf(a, port), port=port)
    wait_ready(port)
    with open(p1.conf_path + ".b", "w") as f:
        f.write(conf(b, port))
    cand = ["%s-%d" % (prefix, i) for i in range(3000)]
    wa, wb = locate(p1.conf_path, cand), locate(p1.conf_path + ".b", cand)
    ks = [k for k in cand if wa[k] != wb[k]][:nkeys]
    c1 = Client(("127.0.0.1", port))
    for k in ks:
        assert c1.set(k, b"v1", noreply=False)
    r = env.r
    fp_a = list(heartbeats(r).values())[0].split()[1]
    reload(p1, conf(b, port))
    deadline = time.monotonic() + 10
    while True:
        hb = list(heartbeats(r).values())
        if hb[0].split()[1] != fp_a:
            fp_b = hb[0].split()[1]
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    fake = FakeProxy(r, fp_b)       # proposes B too: the migration opens
    while r.hget("rp:cache:migration", "to") is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    fake.ack, fake.to = "prepared", r.hget("rp:cache:migration", "to").decode()
    while proxy_stats(port).get("migration:state") != "switched":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert r.hget("rp:cache:migration", "phase") == b"switched"   # held here
    return p1, c1, fake, relays, by, [(k, wa[k], wb[k]) for k in ks]


def finish_and_watch(p1, c1, fake, key, want, timeout=40):
    """Let the migration run to its end; every read of key meanwhile must
    give `want` (no write happens: reads must not change)."""
    fake.leave()
    deadline = time.monotonic() + timeout
    reads = set()
    while True:
        reads.add(c1.get(key))
        st = proxy_stats(p1.port)
        if st.get("migration:state") == "idle" and int(st.get("migration:epoch", 0)) >= 2:
            break
        assert time.monotonic() < deadline, "migration did not finish: %s" % st
        time.sleep(0.1)
    reads.add(c1.get(key))
    assert reads == {want}, "reads changed with no write: %r (want %r)" % (reads, want)
    return st


def test_prepared_and_switched_sets_interleave(env, cluster):
    """set (prepared, played by hand as move.c sends it: "mg N c", "ms O",
    then "md N C<cas seen>" if N held a value) || set (switched, a real
    proxy: "mg O c", "ms N", "md O C<cas seen>"), in two interleavings:

    (A) the switched set between its write and its clear of the other
        owner: S "mg O c", S "ms N v2", [S's "md O" held], P "mg N c",
        P "ms O v3", S "md O C<v1's cas>" (refused: O changed), P
        "md N C<v2's cas>". Both acknowledged; v3 must be read, and be the
        one copy (on N) after the migration.
    (B) P "mg N c" (nothing), P "ms O v4", S set v5 (clears O), P STORED
        without clearing N. v5 must be read, before and after.

    Old binary (switched set "ms N", then an unconditional "md O"): in (A)
    its "md O" deleted v3 and P's "md N" deleted v2: both sets
    acknowledged, the key gone."""
    p1, c1, fake, relays, by, keys = hold_at_switched(env, cluster, 1, "ss")
    k, o_name, n_name = keys[0]
    O, N = by[o_name], by[n_name]
    try:
        # (A)
        relays[o_name].hold(k)
        ws = Wire(p1.port)
        ws.send(("set %s 0 0 2\r\nv2\r\n" % k).encode())           # S
        assert relays[o_name].wait_held(), "S never sent its md to O"
        look = raw(N, ("mg %s c\r\n" % k).encode())                # P: look other
        assert look.startswith(b"HD"), look                         # S's v2
        assert raw(O, ("ms %s 2\r\nv3\r\n" % k).encode()) == b"HD\r\n"   # P: home
        relays[o_name].release()
        assert ws.read_line() == b"STORED\r\n"                      # S acknowledged
        rep = raw(N, ("md %s C%d\r\n" % (k, cas_of(look))).encode())    # P: clear other
        assert rep in (b"HD\r\n", b"EX\r\n", b"NF\r\n"), rep        # P acknowledged
        ws.close()
        got = c1.get(k)
        print("(A) both sets acknowledged; O=%r N=%r; get -> %r"
              % (mc_value(O, k), mc_value(N, k), got))
        assert got == b"v3", "(A) both sets acknowledged, read %r" % got
        assert c1.get(k) == b"v3"

        # (B)
        look = raw(N, ("mg %s c\r\n" % k).encode())                # P: look other
        assert look == b"EN\r\n", look
        assert raw(O, ("ms %s 2\r\nv4\r\n" % k).encode()) == b"HD\r\n"   # P: home
        assert c1.get(k) == b"v4"
        assert c1.set(k, b"v5", noreply=False)                      # S
        # P: N held nothing at its look, so it answers STORED with no "md N".
        got = c1.get(k)
        print("(B) O=%r N=%r; get -> %r" % (mc_value(O, k), mc_value(N, k), got))
        assert got == b"v5"

        finish_and_watch(p1, c1, fake, k, b"v5")
        assert (mc_value(O, k), mc_value(N, k)) == (None, b"v5")
    finally:
        for rl in relays.values():
            rl.release()


def test_prepared_add_races_a_switched_set(env, cluster):
    """add (prepared, played by hand as move.c sends it: "mg O v f c",
    "mg N v f", then "ms O ME") || set (switched, a real proxy: "mg O c",
    "ms N", no clear as O held nothing): the set lands between the add's
    lookups and its store, both are acknowledged, and both owners hold a
    value (O: v3 from the add, N: v2 from the set). Readers are answered
    from O (v3). Asserted: every read, before, during and after the
    migration, gives v3 (the mover waits until the pair has stood still
    for 2*timeout + liveness/2 + 1 s, then the old owner's value wins), and
    after the migration v3 is the one copy, on N.

    Old binary: the mover's "ms N ME" was refused ("a newer write wins")
    and it deleted O: reads went from v3 back to v2 with no write."""
    p1, c1, fake, relays, by, keys = hold_at_switched(env, cluster, 1, "as")
    k, o_name, n_name = keys[0]
    O, N = by[o_name], by[n_name]
    assert raw(O, ("md %s\r\n" % k).encode()) == b"HD\r\n"     # start from "absent"
    assert raw(N, ("md %s\r\n" % k).encode()) == b"NF\r\n"
    assert c1.get(k) is None
    assert raw(O, ("mg %s v f c\r\n" % k).encode()) == b"EN\r\n"   # P: old owner
    assert raw(N, ("mg %s v f\r\n" % k).encode()) == b"EN\r\n"     # P: new owner
    assert c1.set(k, b"v2", noreply=False)                          # S: on N
    stored = raw(O, ("ms %s 2 ME\r\nv3\r\n" % k).encode())         # P: add at home
    assert stored == b"HD\r\n", stored                              # P: STORED
    assert (mc_value(O, k), mc_value(N, k)) == (b"v3", b"v2")
    g1 = c1.get(k)
    print("(add || set) get before the move ->", g1)
    assert g1 == b"v3"
    t0 = time.monotonic()
    finish_and_watch(p1, c1, fake, k, b"v3")
    print("migration over after %.1fs (the pair had to stand still first)"
          % (time.monotonic() - t0))
    assert (mc_value(O, k), mc_value(N, k)) == (None, b"v3")
