"""A Jepsen-style checker for resizes in a fleet of ringproxy processes.

Claim under test: a resize causes no miss, no stale read, no undone delete,
no lost acknowledged write, and leaves no key stranded on a non-owner.

How it checks:
- A Fleet: K memcached, one Redis, P proxies, each proxy with its own config
  file on the same pool name and the same index prefix (one shared Redis
  index). fleet_config() is the one place that writes a pool config.
- Workers (threads): every key has exactly one owner worker, which runs all
  operations on it one after another, each through a randomly chosen proxy.
  The op mix is the text protocol's (the default), or text and meta
  commands mixed, or meta commands only (Checker's `ops`): mg, ms (with
  C<cas> from `mg c`), md, ma (with N, autovivify) and their quiet forms
  followed by mn, modelled as memcached 1.6.18 answers them.
  Because nobody else writes the key, the worker's model of it is exact: the
  value and flags, or absent. Every reply is compared with the model.
- A reply that cannot be trusted (SERVER_ERROR, timeout, connection lost)
  makes a write "in doubt": it may take effect later (a SIGSTOPped backend
  applies it on SIGCONT). The key becomes UNCERTAIN: the model keeps every
  possible state, no more writes are sent on it, and a read matching any of
  them is fine; a read once things are quiet again pins the state down.
- At the end, once every proxy is idle on the same epoch and Redis records
  the final ring, the FINAL CHECK reads every key through every live proxy and
  lists every backend's keys (lru_crawler metadump): a key must sit only on
  its owner under the final ring (`ringproxy locate`).

Every loop is bounded in time; a scenario stops by itself.
"""
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION = os.path.join(HERE, "..", "integration")
if INTEGRATION not in sys.path:
    sys.path.insert(0, INTEGRATION)

import redis as redis_py  # noqa: E402

from harness import (RINGPROXY, ROOT, Memcached, Proxy, Wire,  # noqa: E402,F401
                     free_port, locate, pool_yaml, proxy_stats, wait_until)


def _load_integration_conftest():
    """The integration suite's Cluster, imported under another module name
    (this directory has a conftest.py of its own)."""
    spec = importlib.util.spec_from_file_location(
        "integration_conftest", os.path.join(INTEGRATION, "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


Cluster = _load_integration_conftest().Cluster

POOL = "cache"
PREFIX = "rp:chaos"
POOL_TIMEOUT_MS = 2000   # the pools' backend timeout
OP_TIMEOUT = 20.0        # s a client waits for one reply (> any freeze below)
SETTLE = 2.0             # s after an in-doubt write before a read may pin it
QUIET = 1.0              # s with no error anywhere before a read may pin a key
CONVERGE_TIMEOUT = 90.0  # s for a fleet to finish its migrations
LEGACY_LIVENESS_MS = 5000    # MIG_PROXY_LIVE_MS of binaries without `liveness`
MAX_EXAMPLES = 20
MAX_EXAMPLES_PER_KIND = 6


# ---------------------------------------------------------------- config

_liveness_supported = None


def liveness_supported():
    """Does the binary accept `migration: {liveness: ms}`? (Probed once with
    `ringproxy -t`; the protocol rewrite adds it.)"""
    global _liveness_supported
    if _liveness_supported is None:
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
            f.write(pool_yaml(POOL, 1, [("127.0.0.1:1", 1, "mc1")],
                              migration={"liveness": 3000}))
        try:
            res = subprocess.run([RINGPROXY, "-t", "-c", f.name],
                                 capture_output=True, timeout=30)
            _liveness_supported = res.returncode == 0
        finally:
            os.unlink(f.name)
    return _liveness_supported


def effective_liveness_ms(liveness):
    """The liveness timeout the proxies actually run with."""
    if liveness is not None and liveness_supported():
        return liveness
    return LEGACY_LIVENESS_MS if not liveness_supported() else 10000


def fleet_config(port, servers, redis_port, rate=0, liveness=None, prefix=PREFIX, top=""):
    """The one place a pool config is written.

    servers: list of (Memcached, weight); each memcached has .ident ("mcN").
    liveness (ms) goes into `migration:` only when the binary knows it.
    top: process-wide lines before the pool (e.g. `threads: 2`)."""
    migration = {"rate": rate}
    if liveness is not None and liveness_supported():
        migration["liveness"] = liveness
    return top + pool_yaml(POOL, port, [(m.addr, w, m.ident) for m, w in servers],
                     hash="md5", timeout=POOL_TIMEOUT_MS, server_retry_timeout=500,
                     index={"redis": "127.0.0.1:%d" % redis_port, "prefix": prefix},
                     migration=migration)


# ---------------------------------------------------------------- fleet

class Fleet:
    """K memcached, one Redis, P proxies sharing one index prefix."""

    def __init__(self, cluster, n_mc, n_proxies, rate=0, liveness=None,
                 persist=False, weights=None, top=""):
        self.cluster, self.rate, self.liveness = cluster, rate, liveness
        self.top = top          # process-wide lines of every proxy's file
        self.mcs = []
        self.redis = cluster.redis(persist=persist)
        self.add_memcached(n_mc)
        self.proxies = []
        self.specs = []          # the ring each proxy's config file says
        self.live = []           # proxies the workers may use
        spec = [(m, (weights or [1] * n_mc)[i]) for i, m in enumerate(self.mcs)]
        for _ in range(n_proxies):
            self.start_proxy(spec)

    def add_memcached(self, n=1):
        new = self.cluster.memcached(n)
        for m in new:
            self.mcs.append(m)
            m.ident = "mc%d" % len(self.mcs)
        return new

    def spec(self, n, weights=None):
        """The first n memcached with weights (default 1)."""
        return [(m, (weights or [1] * n)[i]) for i, m in enumerate(self.mcs[:n])]

    def config(self, port, spec, rate=None):
        return fleet_config(port, spec, self.redis.port,
                            rate=self.rate if rate is None else rate,
                            liveness=self.liveness, top=self.top)

    def start_proxy(self, spec, wait=True):
        """A new proxy on spec; returns its index."""
        port = free_port()
        p = self.cluster.proxy(self.config(port, spec), port=port)
        self.proxies.append(p)
        self.specs.append(list(spec))
        self.live.append(False)
        i = len(self.proxies) - 1
        if wait:
            wait_ready(p.port)
        self.live[i] = True
        return i

    def write(self, i, spec):
        self.proxies[i].write_config(self.config(self.proxies[i].port, spec))
        self.specs[i] = list(spec)

    def reload(self, idxs, spec):
        """Write every config first, then SIGHUP them back to back."""
        for i in idxs:
            self.write(i, spec)
        for i in idxs:
            self.proxies[i].signal(signal.SIGHUP)

    def kill_proxy(self, i):
        self.live[i] = False
        self.proxies[i].kill()

    def restart_proxy(self, i, spec=None):
        if spec is not None:
            self.write(i, spec)
        self.proxies[i].start()
        wait_ready(self.proxies[i].port)
        self.live[i] = True

    def upgrade_proxy(self, i, spec):
        """A binary upgrade of proxy i (docs/ARCHITECTURE.md, "Binary
        upgrade"): a new process on its port (SO_REUSEPORT) with spec's
        file, and once its heartbeat is in Redis (it is a proxy of the
        fleet), SIGTERM to the old one; the workers' connections to the old
        one end between two requests and reconnect to the port. Returns a
        sanitizer report of the old one, or None."""
        old = self.proxies[i]
        workdir = os.path.join(self.cluster.workdir, "upgrade-%d-%d" % (i, old.proc.pid))
        os.mkdir(workdir)
        new = Proxy(workdir, self.config(old.port, spec), old.port)
        self.cluster.started.append(new)
        new.start()
        r = self.redis_client()
        wait_until(lambda: any((":%d:" % new.proc.pid) in f.decode()
                               for f in r.hgetall(PREFIX + ":proxies")),
                   what="the new process's heartbeat")
        self.proxies[i] = new
        self.specs[i] = list(spec)
        try:
            old.stop()
        except AssertionError as e:
            return str(e).splitlines()[0]
        return None

    def stop_proxy(self, i):
        """SIGTERM; a sanitizer report in its log is returned, not raised,
        so the scenario goes on (the test still fails at teardown)."""
        self.live[i] = False
        try:
            self.proxies[i].stop()
        except AssertionError as e:
            return str(e).splitlines()[0]
        return None

    def live_idxs(self):
        return [i for i, up in enumerate(self.live) if up]

    def redis_client(self):
        return redis_py.Redis(port=self.redis.port, socket_timeout=2,
                              socket_connect_timeout=2)


def wait_ready(port, timeout=15.0):
    def ready():
        try:
            return proxy_stats(port).get("migration:state") not in (None, "starting")
        except OSError:
            return False
    wait_until(ready, timeout=timeout, interval=0.05, what="proxy %d ready" % port)


# ------------------------------------------------- migration detection

def migration_status(fleet):
    """One look at where the fleet's migration stands.

    proxies: per live proxy (index, state, epoch, keys_moved) or None when
    its stats cannot be read; redis_epoch / redis_migration / redis_servers:
    `<prefix>:ring` epoch, whether `<prefix>:migration` exists, and the
    recorded ring's [(identity, weight)] (None when Redis cannot be read)."""
    out = {"proxies": [], "redis_epoch": None, "redis_migration": None,
           "redis_servers": None}
    for i in fleet.live_idxs():
        try:
            st = proxy_stats(fleet.proxies[i].port)
            out["proxies"].append((i, st.get("migration:state"),
                                   int(st.get("migration:epoch", -1)),
                                   int(st.get("migration:keys_moved", 0))))
        except (OSError, EOFError, ValueError):
            out["proxies"].append((i, None, None, None))
    try:
        r = fleet.redis_client()
        ring = r.hgetall(PREFIX + ":ring")
        out["redis_migration"] = bool(r.exists(PREFIX + ":migration"))
        if ring:
            out["redis_epoch"] = int(ring[b"epoch"])
            servers = json.loads(ring[b"servers"])
            out["redis_servers"] = sorted(
                (s.get("identity") or s.get("name"), int(s.get("weight", 1)))
                for s in servers)
        r.close()
    except (redis_py.RedisError, OSError, KeyError, ValueError):
        pass
    return out


def migration_under_way(status, base_epoch):
    return (status["redis_migration"]
            or (status["redis_epoch"] or 0) > base_epoch
            or any(p[1] not in ("idle", "starting", None) for p in status["proxies"]))


def converged(status, final_spec):
    """Every live proxy idle on one epoch, which Redis records with the
    final ring, and no migration left in Redis."""
    states = status["proxies"]
    if not states or any(p[1] != "idle" for p in states):
        return False
    epochs = {p[2] for p in states}
    want = sorted((m.ident, w) for m, w in final_spec)
    return (len(epochs) == 1 and status["redis_epoch"] in epochs
            and status["redis_migration"] is False
            and status["redis_servers"] == want)


def wait_under_way(fleet, base_epoch, timeout=20.0, min_moved=0):
    """Until a migration is under way (and, with min_moved, has moved keys)."""
    def check():
        st = migration_status(fleet)
        moved = sum(p[3] or 0 for p in st["proxies"])
        return migration_under_way(st, base_epoch) and moved >= min_moved and st
    return wait_until(check, timeout=timeout, interval=0.02,
                      what="a migration under way")


def wait_converged(fleet, final_spec, timeout=CONVERGE_TIMEOUT):
    """The status once converged, or raise with the last status seen."""
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = migration_status(fleet)
        if converged(st, final_spec):
            return st
        time.sleep(0.1)
    raise TimeoutError("the fleet did not converge in %.0fs: %s" % (timeout, st))


# ---------------------------------------------------------------- client

class NotSent(Exception):
    """The request never left (no connection): it cannot take effect."""


class BadReply(Exception):
    """The reply is an error or unparseable: the request is in doubt."""


class Conn(Wire):
    """A raw text-protocol connection to one proxy, reconnected on demand."""

    def __init__(self, port):
        self.port, self.sock, self.buf = port, None, b""

    def ensure(self):
        if self.sock is None:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port),
                                                     timeout=OP_TIMEOUT)
            except OSError as e:
                raise NotSent(str(e))
            self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def request(self, data):
        """Send data, return one reply; any failure closes the connection."""
        self.ensure()
        try:
            self.sock.sendall(data)
            return self.read_reply()
        except (OSError, EOFError) as e:
            self.close()
            raise BadReply("%s: %s" % (type(e).__name__, e))

    def meta_request(self, data, quiet=False):
        """Send meta command(s), return their replies as a list: the one
        reply of a command, or (quiet: data ends with `mn`) every reply
        before the MN, none when the command's answer was suppressed."""
        self.ensure()
        try:
            self.sock.sendall(data)
            if not quiet:
                return [self.read_meta_reply()]
            out = []
            while True:
                r = self.read_meta_reply()
                if r == b"MN\r\n":
                    return out
                out.append(r)
                if len(out) > 2:        # one quiet command answers at most once
                    raise BadReply("more than one reply before MN: %r" % out)
        except (OSError, EOFError, ValueError, IndexError) as e:
            self.close()
            raise BadReply("%s: %s" % (type(e).__name__, e))

    def read_meta_reply(self):
        """A reply line; for VA, with its data block."""
        line = self.read_line()
        if line.startswith(b"VA "):
            return line + self.read_exact(int(line.split()[1]) + 2)
        return line


def parse_values(reply):
    """A VALUE...END block: {key: (value, flags, cas or None)}."""
    out = {}
    pos = 0
    while True:
        eol = reply.index(b"\r\n", pos)
        line = reply[pos:eol]
        if line == b"END":
            return out
        f = line.split(b" ")
        if f[0] != b"VALUE":
            raise BadReply("unexpected %r" % line[:120])
        n = int(f[3])
        out[f[1]] = (reply[eol + 2:eol + 2 + n], int(f[2]),
                     int(f[4]) if len(f) > 4 else None)
        pos = eol + 2 + n + 2


def parse_meta(reply):
    """A meta reply: (code, {flag letter: token rest}, data or None)."""
    eol = reply.index(b"\r\n")
    toks = reply[:eol].split(b" ")
    code, flags, data = toks[0], {}, None
    if code == b"VA":
        n = int(toks[1])
        data = reply[eol + 2:eol + 2 + n]
        if len(data) != n or reply[eol + 2 + n:] != b"\r\n":
            raise BadReply("VA block of %d bytes framed wrong: %r" % (n, reply[:120]))
        toks = toks[2:]
    else:
        toks = toks[1:]
    for t in toks:
        if t:
            flags[t[:1].decode()] = t[1:]
    return code.decode(), flags, data


# ---------------------------------------------------------------- model

ANY = "ANY"   # a state nobody can predict (after a reply that contradicts the model)


class Key:
    """The exact model of one key: states (one when certain), values it held
    when an acknowledged delete removed it, and when a read may pin it."""

    __slots__ = ("name", "num", "states", "deleted", "ver", "settle_at", "hist")

    def __init__(self, name, num):
        self.name, self.num = name, num
        self.states = [None]
        self.deleted = set()
        self.ver = 0
        self.settle_at = 0.0
        self.hist = []          # the last commands on it: shown with a violation

    @property
    def certain(self):
        return len(self.states) == 1 and self.states[0] is not ANY

    @property
    def state(self):
        return self.states[0]

    def norm(self, value, flags):
        # A decr may leave the number space-padded in place (memcached does).
        return (value.rstrip(b" ") if self.num else value, flags)

    def matches(self, got):
        return ANY in self.states or got in self.states

    def in_doubt(self, apply, now):
        """A write whose outcome is unknown: each state may or may not have
        had it applied."""
        if ANY in self.states:
            return
        new = []
        for s in self.states:
            for t in (s, apply(s)):
                if t not in new:
                    new.append(t)
        self.states = new if len(new) <= 16 else [ANY]
        self.settle_at = max(self.settle_at, now + SETTLE)


# ---------------------------------------------------------------- checker

class Result:
    COUNTS = ("ops", "reads", "misses", "stale", "undone_deletes", "lost",
              "stranded", "errors", "wrong_replies", "cas_spurious",
              "unresolved", "crashes", "unagreed_moves", "meta_ops",
              "meta_errors", "meta_moving_ops")

    def __init__(self, name):
        self.name = name
        for c in self.COUNTS:
            setattr(self, c, 0)
        self.examples, self.per_kind, self.events, self.notes = [], {}, [], []
        self.converged = None
        self.duration = 0.0
        self.final_status = None

    def violations(self):
        return (self.misses + self.stale + self.undone_deletes + self.lost
                + self.stranded)

    def ok(self):
        return (self.violations() == 0 and self.wrong_replies == 0
                and self.crashes == 0 and self.unagreed_moves == 0 and self.converged)

    def counts(self):
        return {c: getattr(self, c) for c in self.COUNTS}

    def summary(self):
        lines = ["== chaos %s: %s in %.1fs" % (
            self.name, "OK" if self.ok() else "VIOLATIONS", self.duration),
            "   " + " ".join("%s=%d" % kv for kv in self.counts().items()),
            "   converged=%s" % self.converged]
        lines += ["   note: %s" % n for n in self.notes]
        lines.append("   events:")
        lines += ["     t=%7.3f %s" % e for e in self.events]
        if self.examples:
            lines.append("   examples (of %s):" % self.per_kind)
        for e in self.examples:
            lines.append("     %(kind)s key=%(key)s op=%(op)s proxy=%(proxy)s "
                         "t=%(t0).3f..%(t1).3f expected=%(expected)s got=%(got)s" % e)
            lines += ["       before: " + h for h in e["hist"]]
        return "\n".join(lines)


def _show(state):
    if isinstance(state, str):
        return state
    if state is None or state is ANY:
        return repr(state)
    if isinstance(state, list):
        return "[" + ", ".join(_show(s) for s in state) + "]"
    v, f = state
    if len(v) > 48:     # versions sit at the head, appends/prepends at the ends
        return "%r...%r(%dB)/f%d" % (v[:28], v[-14:], len(v), f)
    return "%r/f%d" % (v, f)


class Checker:
    """Workers, the model, the violations; final_check() at the end."""

    def __init__(self, fleet, name, workers=6, keys_per_worker=600, seed=None,
                 num_share=0.25, max_seconds=150.0, reserved=0, ops="text"):
        self.fleet = fleet
        self.tables = OP_MIXES[ops]     # (text keys' table, numeric keys' table)
        # keys whose owner a resize changes, and whether it runs: meta ops
        # on them are counted (meta_moving_ops) while watch is set
        self.moving, self.watch = frozenset(), False
        self.result = Result(name)
        self.rng = random.Random(seed if seed is not None else name)
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + max_seconds
        self.stop_ev = threading.Event()
        self.last_error = -1e9
        self.keys = {}
        self.owned = []
        tag = "%08x" % self.rng.getrandbits(32)
        for w in range(workers + (1 if reserved else 0)):
            n = keys_per_worker if w < workers else reserved
            mine = []
            for i in range(n):
                name = ("c%s-w%d-%d" % (tag, w, i)).encode()
                self.keys[name] = Key(name, self.rng.random() < num_share)
                mine.append(self.keys[name])
            self.owned.append(mine)
        # The last group (when reserved) is for a scenario's scripted worker.
        self.reserved = self.owned.pop() if reserved else []
        self.threads = []

    # -- bookkeeping (thread-safe)

    def now(self):
        return time.monotonic() - self.t0

    def event(self, what):
        with self.lock:
            self.result.events.append((self.now(), what))

    def crashed(self, tb):
        """A bug in the checker itself: the run proves nothing."""
        with self.lock:
            self.result.crashes += 1
            self.result.notes.append("worker crashed:\n" + tb)

    def count(self, name, n=1):
        with self.lock:
            setattr(self.result, name, getattr(self.result, name) + n)

    def error(self):
        with self.lock:
            self.result.errors += 1
            self.last_error = self.now()

    def meta_error(self, data, reply):
        """A meta command answered with an error line: counted, the first
        few shown (a text command's errors are only counted)."""
        with self.lock:
            self.result.meta_errors += 1
            if self.result.meta_errors <= 3:
                self.result.notes.append("meta error at t=%.3f: %r -> %r" % (
                    self.now(), data.split(b"\r\n")[0][:80], reply.strip()[:120]))

    def violation(self, kind, counter, key, op, proxy, expected, got, t0, t1):
        with self.lock:
            setattr(self.result, counter, getattr(self.result, counter) + 1)
            self.result.per_kind[kind] = self.result.per_kind.get(kind, 0) + 1
            shown = sum(1 for e in self.result.examples if e["kind"] == kind)
            if len(self.result.examples) < MAX_EXAMPLES and shown < MAX_EXAMPLES_PER_KIND:
                k = self.keys.get(key)
                self.result.examples.append(dict(
                    kind=kind, key=key.decode(), op=op, proxy=proxy, t0=t0, t1=t1,
                    expected=_show(expected), got=_show(got),
                    hist=list(k.hist) if k is not None else []))

    def backend_copies(self, name):
        """Where a missed key is, read straight from every memcached (only
        while examples are still being kept: it costs a round trip each)."""
        if len(self.result.examples) >= MAX_EXAMPLES:
            return "-"
        out = []
        for m in self.fleet.mcs:
            if m.proc is None:
                continue
            try:
                with Wire(m.port, timeout=2.0) as w:
                    got = parse_values(w.call(b"get " + name + b"\r\n"))
                if name in got:
                    out.append("%s %s" % (m.ident, _show(got[name][:2])))
            except (OSError, EOFError, BadReply, ValueError):
                out.append("%s unreadable" % m.ident)
        return ", ".join(out) or "none"

    def settled(self, k, t_start):
        return t_start >= k.settle_at and t_start >= self.last_error + QUIET

    def check_read(self, k, got, op, proxy, t0, t1):
        """One read of k returned got ((value, flags) or None)."""
        if got is not None:
            got = k.norm(*got)
        if k.matches(got):
            if not k.certain and self.settled(k, t0):
                k.states = [got]
            return True
        expected = k.states[0] if k.certain else list(k.states)
        if got is None:
            # A miss that took the pool's backend timeout is most likely a
            # timeout answered as a miss: still a miss, told apart.
            kind = "MISS_AFTER_TIMEOUT" if t1 - t0 >= POOL_TIMEOUT_MS / 1000.0 else "MISS"
            self.violation(kind, "misses", k.name, op, proxy, expected,
                           "None; on the backends now: %s" % self.backend_copies(k.name),
                           t0, t1)
        elif got[0] in k.deleted:
            self.violation("UNDONE_DELETE", "undone_deletes", k.name, op, proxy,
                           expected, got, t0, t1)
        else:
            self.violation("STALE", "stale", k.name, op, proxy, expected, got, t0, t1)
        return False

    # -- running

    def seed(self, present=0.85, direct=0.0, direct_keys=()):
        """Store most keys (through proxies in turn) before the disruption, so
        a resize has keys to move; the rest start absent. The stored keys
        named in direct_keys, and a `direct` share of the others, are written
        straight to their owner's memcached, around the proxies: the index
        never sees those, and only the migration's closing pass can move them
        (docs/ARCHITECTURE.md, "Moving keys")."""
        conns = [Conn(self.fleet.proxies[i].port) for i in self.fleet.live_idxs()]
        straight = []
        try:
            for n, k in enumerate(self.keys.values()):
                if self.rng.random() >= present:
                    continue
                value, flags = new_value(k, self.rng), self.rng.randrange(1 << 16)
                line = b"set %s %d 0 %d\r\n%s\r\n" % (k.name, flags, len(value), value)
                if k.name in direct_keys or (direct and self.rng.random() < direct):
                    straight.append((k, line))
                    k.states = [k.norm(value, flags)]
                    continue
                reply = conns[n % len(conns)].request(line)
                assert reply == b"STORED\r\n", (k.name, reply)
                k.states = [k.norm(value, flags)]
        finally:
            for c in conns:
                c.close()
        if straight:
            self.store_direct(straight)
        self.wait_indexed(want=sum(1 for k in self.keys.values() if k.state is not None)
                          - len(straight))
        self.event("seeded %d keys%s" % (len(self.keys), "" if not straight else
                   ", %d of them straight to their memcached (unindexed)" % len(straight)))

    def store_direct(self, items):
        """(key, set line) pairs, each sent to the memcached that owns the key
        under the recorded ring (proxy 0's file, before any resize)."""
        conf = self.fleet.proxies[self.fleet.live_idxs()[0]].conf_path
        owner = locate(conf, [k.name for k, _ in items])
        conns = {m.ident: Conn(m.port) for m in self.fleet.mcs}
        try:
            for k, line in items:
                reply = conns[owner[k.name]].request(line)
                assert reply == b"STORED\r\n", (k.name, reply)
        finally:
            for c in conns.values():
                c.close()

    def wait_indexed(self, timeout=15.0, want=None):
        """Until Redis's index holds every key stored through a proxy (a key
        missing from the index can only be moved by the closing pass)."""
        if want is None:
            want = sum(1 for k in self.keys.values() if k.state is not None)
        r = self.fleet.redis_client()

        def indexed():
            n = 0
            for name in r.scan_iter(match=PREFIX + ":v:*", count=1000):
                n += r.zcard(name)
            return n >= want
        try:
            wait_until(indexed, timeout=timeout, interval=0.1, what="index writes")
        finally:
            r.close()

    def start(self, scripted=None):
        for wid, keys in enumerate(self.owned):
            t = threading.Thread(target=Worker(self, wid, keys).run, daemon=True)
            t.start()
            self.threads.append(t)
        if scripted is not None:
            t = threading.Thread(target=scripted, daemon=True)
            t.start()
            self.threads.append(t)
        self.event("load started (%d workers)" % len(self.owned))

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(OP_TIMEOUT + 10)
            if t.is_alive():
                self.result.notes.append("a worker did not stop in time")
        self.event("load stopped")

    def running(self):
        return not self.stop_ev.is_set() and time.monotonic() < self.deadline

    def sleep(self, s):
        """Sleep s seconds unless the checker's deadline comes first."""
        time.sleep(max(0.0, min(s, self.deadline - time.monotonic())))

    # -- the end

    def finish(self, final_spec, converge_timeout=CONVERGE_TIMEOUT):
        """Stop the load, wait for the fleet to converge, final check; the Result."""
        self.stop()
        res = self.result
        try:
            res.final_status = wait_converged(self.fleet, final_spec, converge_timeout)
            res.converged = True
            self.event("converged: %s" % (res.final_status,))
        except TimeoutError as e:
            res.converged = False
            res.notes.append(str(e))
            self.event("did not converge")
        self.final_check(final_spec)
        res.duration = self.now()
        res.unresolved = sum(1 for k in self.keys.values() if not k.certain)
        return res

    def final_check(self, final_spec):
        t = self.now()
        keys = list(self.keys.values())
        lost, stale_final = set(), set()
        # 1. Through every live proxy.
        for i in self.fleet.live_idxs():
            c = Conn(self.fleet.proxies[i].port)
            try:
                for j in range(0, len(keys), 100):
                    batch = keys[j:j + 100]
                    try:
                        got = parse_values(c.request(
                            b"get " + b" ".join(k.name for k in batch) + b"\r\n"))
                    except (BadReply, NotSent, ValueError) as e:
                        self.result.notes.append("final read via proxy %d failed: %s" % (i, e))
                        self.error()
                        break
                    for k in batch:
                        self.count("reads")
                        g = got.get(k.name)
                        g = k.norm(g[0], g[1]) if g else None
                        if k.matches(g):
                            continue
                        exp = k.state if k.certain else list(k.states)
                        if g is None:
                            if k.name not in lost:
                                lost.add(k.name)
                                self.violation("LOST_WRITE", "lost", k.name, "final get",
                                               i, exp, g, t, self.now())
                        elif (k.name, i) not in stale_final:
                            stale_final.add((k.name, i))
                            kind, ctr = (("UNDONE_DELETE", "undone_deletes")
                                         if g[0] in k.deleted else ("STALE", "stale"))
                            self.violation(kind, ctr, k.name, "final get", i, exp, g,
                                           t, self.now())
            finally:
                c.close()
        # 2. On every backend: only the owner under the final ring holds a key.
        conf = os.path.join(self.fleet.cluster.workdir, "final-ring.yml")
        with open(conf, "w") as f:
            f.write(self.fleet.config(free_port(), final_spec))
        owner = locate(conf, [k.name for k in keys])
        by_ident = {m.ident: m for m in self.fleet.mcs}
        held = {}
        for m in self.fleet.mcs:
            if m.proc is None:
                continue
            try:
                held[m.ident] = m.keys()
            except OSError as e:
                self.result.notes.append("cannot list %s: %s" % (m.ident, e))
        for k in keys:
            own = owner[k.name]
            for ident, names in held.items():
                if ident != own and k.name in names:
                    copy = direct_get(by_ident[ident], k.name)
                    self.violation(
                        "STRANDED", "stranded", k.name, "metadump " + ident, ident,
                        "only on %s (%s; model %s)" % (
                            own, "holds it" if k.name in held.get(own, ()) else "absent",
                            _show(k.state if k.certain else list(k.states))),
                        "copy on %s: %s" % (ident, _show(copy)), t, self.now())
            present = k.certain and k.state is not None
            if present and own in held and k.name not in held[own] and k.name not in lost:
                lost.add(k.name)
                self.violation("LOST", "lost", k.name, "metadump " + own, own,
                               k.state, None, t, self.now())
        # 3. Direct gets on each owner: its copy is the model's.
        for ident, m in by_ident.items():
            if ident not in held:
                continue
            mine = [k for k in keys if owner[k.name] == ident and k.name in held[ident]]
            with Wire(m.port) as w:
                for j in range(0, len(mine), 100):
                    batch = mine[j:j + 100]
                    got = parse_values(w.call(
                        b"get " + b" ".join(k.name for k in batch) + b"\r\n"))
                    for k in batch:
                        g = got.get(k.name)
                        g = k.norm(g[0], g[1]) if g else None
                        if g is None or k.matches(g) or any(
                                n == k.name for n, _ in stale_final):
                            continue
                        kind, ctr = (("UNDONE_DELETE", "undone_deletes")
                                     if g[0] in k.deleted else ("STALE", "stale"))
                        self.violation(kind, ctr, k.name, "direct get " + ident, ident,
                                       k.state if k.certain else list(k.states), g,
                                       t, self.now())
        self.event("final check done")


def direct_get(m, name):
    """(value, flags) of name on memcached m itself, or None."""
    with Wire(m.port) as w:
        got = parse_values(w.call(b"get " + name + b"\r\n"))
    return got[name][:2] if name in got else None


def new_value(k, rng):
    k.ver += 1
    if k.num:
        return b"%d" % (k.ver * 1000003 + rng.randrange(1000))
    pad = rng.choice((0, 8, 64, 300, 300, 3000))
    return b"%s#%d|" % (k.name, k.ver) + b"x" * pad


# ---------------------------------------------------------------- worker

TEXT_OPS = (("get", 14), ("gets", 5), ("gat", 4), ("mget", 8), ("set", 14),
            ("add", 5), ("replace", 6), ("append", 6), ("prepend", 5), ("cas", 6),
            ("delete", 8), ("touch", 4))
NUM_OPS = (("get", 12), ("gets", 4), ("gat", 3), ("mget", 6), ("set", 10),
           ("add", 4), ("replace", 4), ("incr", 12), ("decr", 8), ("cas", 5),
           ("delete", 6), ("touch", 3))
READS = ("get", "gets", "gat", "mget")


def _table(ops):
    out = []
    for name, w in ops:
        out += [name] * w
    return out


TEXT_TABLE, NUM_TABLE = _table(TEXT_OPS), _table(NUM_OPS)

# Meta commands (Worker.op_<name>): mgq, msq, mdq, maq are the quiet forms,
# each followed by mn; mscas is `mg c` then `ms C<cas>`; man is ma with N.
META_TEXT_OPS = (("mg", 12), ("mgv", 4), ("mgq", 4), ("ms", 12), ("msq", 4),
                 ("mscas", 6), ("md", 6), ("mdq", 3))
META_NUM_OPS = (("mg", 10), ("mgv", 3), ("mgq", 3), ("ms", 8), ("msq", 3),
                ("mscas", 4), ("md", 5), ("mdq", 2), ("ma", 12), ("maq", 4),
                ("man", 6))
META_READS = ("mg", "mgv", "mgq")
META_OPS = frozenset(name for name, _ in META_TEXT_OPS + META_NUM_OPS)
READS = READS + META_READS

# Every loud meta command is sent alone (False) or with an `mn` right
# behind it (True). False exercises the lone command on a moving key, which
# once read freed client input (client_meta_migrating, fixed); True is kept
# as a switch for narrowing a failure down.
META_FENCE_ALL = False

# `ma N` on keys that change owner while the resize runs (True), or only
# on settled keys (False). True exercises creation over a tombstone left on
# the old owner by a switched proxy's delete, which once hid the created
# value (move.c: meta_reply_clear, meta_run_home).
AUTOVIVIFY_MOVING = True

# Checker(ops=...): the op tables of text keys and numeric keys.
OP_MIXES = {
    "text": (TEXT_TABLE, NUM_TABLE),
    "mixed": (_table(TEXT_OPS + META_TEXT_OPS), _table(NUM_OPS + META_NUM_OPS)),
    "meta": (_table(META_TEXT_OPS), _table(META_NUM_OPS)),
}


class Worker:
    """Owns its keys: runs ops on them one at a time through random proxies."""

    def __init__(self, checker, wid, keys, max_ops=10 ** 7):
        self.c, self.wid, self.keys = checker, wid, keys
        self.rng = random.Random("%s-%d" % (checker.result.name, wid))
        self.conns = {}
        self.max_ops = max_ops

    def conn(self, i):
        port = self.c.fleet.proxies[i].port
        c = self.conns.get(i)
        if c is None or c.port != port:
            c = self.conns[i] = Conn(port)
        return c

    def pick_proxy(self):
        live = self.c.fleet.live_idxs()
        return self.rng.choice(live) if live else None

    def run(self):
        try:
            n = 0
            while self.c.running() and n < self.max_ops:
                n += 1
                self.one(self.rng.choice(self.keys))
        except Exception:
            self.c.crashed(traceback.format_exc())
        finally:
            for c in self.conns.values():
                c.close()

    def one(self, k, op=None, proxy=None):
        if op is None:
            op = self.rng.choice(self.c.tables[1] if k.num else self.c.tables[0])
            if not k.certain and op not in READS:
                op = "get"      # no writes on a key in doubt
        i = self.pick_proxy() if proxy is None else proxy
        if i is None:
            time.sleep(0.05)
            return
        self.c.count("ops")
        if self.c.watch and k.name in self.c.moving and op in META_OPS:
            self.c.count("meta_moving_ops")
        getattr(self, "op_" + op)(k, i)

    # -- transport

    def call(self, i, data):
        """(reply, t0, t1); reply None when the request is in doubt."""
        t0 = self.c.now()
        try:
            reply = self.conn(i).request(data)
        except NotSent:
            self.c.error()
            return False, t0, self.c.now()
        except BadReply:
            self.c.error()
            return None, t0, self.c.now()
        t1 = self.c.now()
        self.trace(i, data, reply, t0, t1)
        if reply.startswith((b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR")):
            self.c.error()
            return None, t0, t1
        return reply, t0, t1

    # -- reads

    def read(self, i, verb, ks, exptime=None):
        line = verb + (b" %d" % exptime if exptime is not None else b"")
        reply, t0, t1 = self.call(i, line + b" " + b" ".join(k.name for k in ks) + b"\r\n")
        if not reply:
            return None
        try:
            got = parse_values(reply)
        except (BadReply, ValueError, IndexError):
            self.c.error()
            self.conn(i).close()
            return None
        for k in ks:
            self.c.count("reads")
            g = got.get(k.name)
            self.c.check_read(k, g[:2] if g else None, verb.decode(), i, t0, t1)
        return got

    def op_get(self, k, i):
        self.read(i, b"get", [k])

    def op_gets(self, k, i):
        self.read(i, b"gets", [k])

    def op_gat(self, k, i):
        self.read(i, b"gat", [k], exptime=0)

    def op_mget(self, k, i):
        ks = [k] + self.rng.sample(self.keys, min(len(self.keys), self.rng.randrange(1, 6)))
        seen, uniq = set(), []
        for x in ks:
            if x.name not in seen:
                seen.add(x.name)
                uniq.append(x)
        self.read(i, b"get", uniq)

    # -- writes: each has (expected success?, new state on success)

    def store(self, k, i, verb, value, flags, on_ok, ok_expected, extra=b""):
        """A storage command. on_ok(state) -> the state it leaves when it
        applies; ok_expected: does the model say it applies?"""
        data = b"%s %s %d 0 %d%s\r\n%s\r\n" % (verb, k.name, flags, len(value), extra, value)
        reply, t0, t1 = self.call(i, data)
        self.settle(k, i, verb.decode(), reply, t0, t1, b"STORED\r\n", on_ok, ok_expected)

    def settle(self, k, i, op, reply, t0, t1, ok_reply, on_ok, ok_expected,
               fail_replies=(b"NOT_STORED\r\n", b"NOT_FOUND\r\n", b"EXISTS\r\n")):
        if reply is False:          # never sent
            return
        if reply is None:           # in doubt
            k.in_doubt(lambda s: apply_if(on_ok, s, op), self.c.now())
            return
        before = k.state
        if reply == ok_reply:
            if ok_expected:
                k.states = [on_ok(before)]
                return
            self.c.violation("WRONG_REPLY", "wrong_replies", k.name, op, i,
                             "not applied to " + _show(before), reply.strip().decode(), t0, t1)
            # It applied to a state the model does not know.
            if op in ("set", "add", "replace", "cas", "ms", "ms C"):
                k.states = [on_ok(None)]
            elif op in ("delete", "md"):
                k.states = [None]
            else:
                k.states = [ANY]
            return
        if reply in fail_replies:
            if not ok_expected:
                return
            if (op, reply) in (("cas", b"EXISTS\r\n"), ("ms C", b"EX\r\n")):
                # A move rewrites the key on its new owner, which renews its
                # CAS unique: clients' cas loops retry; counted, not a loss.
                self.c.violation("CAS_SPURIOUS", "cas_spurious", k.name, op, i,
                                 ok_reply.strip().decode(), reply.strip().decode(), t0, t1)
                return
            self.c.violation("WRONG_REPLY", "wrong_replies", k.name, op, i,
                             ok_reply.strip().decode() + " on " + _show(before),
                             reply.strip().decode(), t0, t1)
            return
        self.c.error()
        self.conn(i).close()
        k.in_doubt(lambda s: apply_if(on_ok, s, op), self.c.now())

    def op_set(self, k, i):
        v, f = new_value(k, self.rng), self.rng.randrange(1 << 16)
        self.store(k, i, b"set", v, f, lambda s: k.norm(v, f), True)

    def op_add(self, k, i):
        v, f = new_value(k, self.rng), self.rng.randrange(1 << 16)
        self.store(k, i, b"add", v, f, lambda s: k.norm(v, f), k.state is None)

    def op_replace(self, k, i):
        v, f = new_value(k, self.rng), self.rng.randrange(1 << 16)
        self.store(k, i, b"replace", v, f, lambda s: k.norm(v, f), k.state is not None)

    def op_append(self, k, i):
        if k.state is not None and len(k.state[0]) > 6000:
            return self.op_set(k, i)
        k.ver += 1
        piece = b"+a%d" % k.ver
        self.store(k, i, b"append", piece, 0,
                   lambda s: (s[0] + piece, s[1]) if s is not None else None,
                   k.state is not None)

    def op_prepend(self, k, i):
        if k.state is not None and len(k.state[0]) > 6000:
            return self.op_set(k, i)
        k.ver += 1
        piece = b"p%d-" % k.ver
        self.store(k, i, b"prepend", piece, 0,
                   lambda s: (piece + s[0], s[1]) if s is not None else None,
                   k.state is not None)

    def op_cas(self, k, i):
        got = self.read(i, b"gets", [k])
        if got is None or not k.certain:
            return
        g = got.get(k.name)
        if (g is None) != (k.state is None):
            return              # the gets was already judged a violation
        unique = g[2] if g else 1
        v, f = new_value(k, self.rng), self.rng.randrange(1 << 16)
        self.store(k, i, b"cas", v, f, lambda s: k.norm(v, f), k.state is not None,
                   extra=b" %d" % unique)

    def op_delete(self, k, i):
        reply, t0, t1 = self.call(i, b"delete %s\r\n" % k.name)
        before = k.state
        if reply == b"DELETED\r\n" and before is not None:
            k.deleted.add(before[0])
        self.settle(k, i, "delete", reply, t0, t1, b"DELETED\r\n",
                    lambda s: None, before is not None)
        if reply is None:
            for s in k.states:
                if s is not None and s is not ANY:
                    k.deleted.add(s[0])

    def op_touch(self, k, i):
        exptime = self.rng.choice((0, 3600))
        reply, t0, t1 = self.call(i, b"touch %s %d\r\n" % (k.name, exptime))
        if reply is None or reply is False:
            return              # a touch changes no value: nothing in doubt
        self.settle(k, i, "touch", reply, t0, t1, b"TOUCHED\r\n",
                    lambda s: s, k.state is not None)

    def op_incr(self, k, i, verb=b"incr"):
        delta = self.rng.randrange(1, 10 ** 6) if verb == b"incr" else self.rng.randrange(1, 5000)

        def apply(s):
            if s is None:
                return None
            n = int(s[0])
            n = (n + delta) % (1 << 64) if verb == b"incr" else max(0, n - delta)
            return (b"%d" % n, s[1])
        reply, t0, t1 = self.call(i, b"%s %s %d\r\n" % (verb, k.name, delta))
        op = verb.decode()
        if reply and reply[:1].isdigit():
            n = reply.strip()
            before = k.state
            want = apply(before)
            if want is None:
                self.c.violation("WRONG_REPLY", "wrong_replies", k.name, op, i,
                                 "NOT_FOUND", n.decode(), t0, t1)
                k.states = [ANY]
            elif want[0] != n:
                self.c.violation("STALE", "stale", k.name, op, i, want, (n, before[1]), t0, t1)
                k.states = [(n, before[1])]
            else:
                k.states = [want]
            return
        self.settle(k, i, op, reply, t0, t1, b"<number>", apply, k.state is not None)

    def op_decr(self, k, i):
        self.op_incr(k, i, b"decr")

    # -- meta commands, answered as memcached 1.6.18 answers them (tried on
    # it): q suppresses mg's EN, ms's and md's HD, and ma's HD or VA on an
    # item that existed; an ma with N that creates the item answers HD even
    # under q; a created item holds J's value (not incremented), flags 0.

    def mcall(self, i, data, quiet=False):
        """(replies, t0, t1) of a meta command (quiet: with its mn);
        replies None when it is in doubt, False when it was never sent."""
        t0 = self.c.now()
        fence = not quiet and META_FENCE_ALL
        try:
            replies = self.conn(i).meta_request(data + (b"mn\r\n" if fence else b""),
                                                quiet or fence)
            if fence and len(replies) != 1:
                self.conn(i).close()
                raise BadReply("%d replies before MN to one loud command" % len(replies))
        except NotSent:
            self.c.error()
            return False, t0, self.c.now()
        except BadReply:
            self.c.error()
            return None, t0, self.c.now()
        t1 = self.c.now()
        self.trace(i, data, b"|".join(replies) or b"(nothing before MN)", t0, t1)
        bad = [r for r in replies if r.startswith((b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR"))]
        if bad:
            self.c.error()
            self.c.meta_error(data, bad[0])
            return None, t0, t1
        self.c.count("meta_ops")
        return replies, t0, t1

    def trace(self, i, data, reply, t0, t1):
        """Keeps the last few commands on the first key named in data."""
        line = data.split(b"\r\n", 1)[0]
        toks = line.split(b" ", 2)
        k = self.c.keys.get(toks[1]) if len(toks) > 1 else None
        if k is not None:
            k.hist.append("t=%.3f..%.3f p%d %r -> %r" % (t0, t1, i, line[:60], reply[:60]))
            del k.hist[:-8]

    def unsuppressed(self, k, op, i, reply, t0, t1):
        """memcached would have suppressed this reply under q."""
        self.c.violation("WRONG_REPLY", "wrong_replies", k.name, op + " q", i,
                         "nothing before MN", reply.strip().decode(), t0, t1)

    def mread(self, k, i, flags, quiet=False):
        """`mg <key> <flags>` checked against the model: the parsed reply
        (code, flags, data), or None when there is nothing to judge."""
        data = b"mg %s %s%s\r\n" % (k.name, flags, b" q\r\nmn" if quiet else b"")
        replies, t0, t1 = self.mcall(i, data, quiet)
        if replies is None or replies is False:
            return None
        try:
            parsed = parse_meta(replies[0]) if replies else ("EN", {}, None)
            code, fl, value = parsed
            if code not in ("EN", "VA"):
                raise BadReply("unexpected %r" % replies[0][:120])
            got = None
            if code == "VA":
                got = (value, int(fl["f"]) if "f" in fl else self.flags_of(k, value))
        except (BadReply, ValueError, IndexError, KeyError):
            self.c.error()
            self.conn(i).close()
            return None
        if quiet and code == "EN" and replies:
            self.unsuppressed(k, "mg", i, replies[0], t0, t1)
        self.c.count("reads")
        self.c.check_read(k, got, "mg " + flags.decode(), i, t0, t1)
        return parsed

    @staticmethod
    def flags_of(k, value):
        """`mg v` returns no flags: those of the model's state with this
        value (-1, which matches nothing, when none has it)."""
        v = k.norm(value, 0)[0]
        for s in k.states:
            if s is not None and s is not ANY and s[0] == v:
                return s[1]
        return -1

    def op_mg(self, k, i):
        self.mread(k, i, self.rng.choice((b"v f", b"v f c", b"v f t", b"v t f c")))

    def op_mgv(self, k, i):
        self.mread(k, i, b"v")

    def op_mgq(self, k, i):
        self.mread(k, i, b"v f", quiet=True)

    def msettle(self, k, i, op, replies, quiet, t0, t1, on_ok, ok_expected):
        """settle() for a meta write: a quiet one's empty answer is its HD."""
        reply = replies
        if isinstance(replies, list):
            reply = replies[0] if replies else b"HD\r\n"
            if quiet and replies and reply == b"HD\r\n":
                self.unsuppressed(k, op, i, reply, t0, t1)
        self.settle(k, i, op, reply, t0, t1, b"HD\r\n", on_ok, ok_expected,
                    fail_replies=(b"NS\r\n", b"NF\r\n", b"EX\r\n"))

    def op_ms(self, k, i, quiet=False):
        v, f = new_value(k, self.rng), self.rng.randrange(1 << 16)
        data = b"ms %s %d T%d F%d%s\r\n%s\r\n" % (
            k.name, len(v), self.rng.choice((0, 3600)), f, b" q" if quiet else b"", v)
        replies, t0, t1 = self.mcall(i, data + (b"mn\r\n" if quiet else b""), quiet)
        self.msettle(k, i, "ms", replies, quiet, t0, t1, lambda s: k.norm(v, f), True)

    def op_msq(self, k, i):
        self.op_ms(k, i, quiet=True)

    def op_mscas(self, k, i):
        got = self.mread(k, i, b"v f c")
        if got is None or not k.certain:
            return
        if (got[0] == "VA") != (k.state is not None):
            return              # the mg was already judged a violation
        try:
            unique = int(got[1]["c"]) if got[0] == "VA" else 1
        except (KeyError, ValueError):
            self.c.error()
            return
        v, f = new_value(k, self.rng), self.rng.randrange(1 << 16)
        data = b"ms %s %d T0 F%d C%d\r\n%s\r\n" % (k.name, len(v), f, unique, v)
        replies, t0, t1 = self.mcall(i, data)
        self.msettle(k, i, "ms C", replies, False, t0, t1, lambda s: k.norm(v, f),
                     k.state is not None)

    def op_md(self, k, i, quiet=False):
        replies, t0, t1 = self.mcall(
            i, b"md %s%s\r\n" % (k.name, b" q\r\nmn" if quiet else b""), quiet)
        before = k.state
        if isinstance(replies, list) and replies in ([], [b"HD\r\n"]) and before is not None:
            k.deleted.add(before[0])
        self.msettle(k, i, "md", replies, quiet, t0, t1, lambda s: None, before is not None)
        if replies is None:
            for s in k.states:
                if s is not None and s is not ANY:
                    k.deleted.add(s[0])

    def op_mdq(self, k, i):
        self.op_md(k, i, quiet=True)

    def op_ma(self, k, i, quiet=False, autoviv=False):
        if (autoviv and not AUTOVIVIFY_MOVING and self.c.watch and k.name in self.c.moving
                and k.state is None):
            autoviv = False     # see AUTOVIVIFY_MOVING
        decr = self.rng.random() < 0.4
        delta = self.rng.randrange(1, 5000) if decr else self.rng.randrange(1, 10 ** 6)
        init = self.rng.randrange(1000)
        want_v = not quiet and self.rng.random() < 0.7

        def apply(s):
            if s is None:
                return (b"%d" % init, 0) if autoviv else None
            n = int(s[0])
            n = max(0, n - delta) if decr else (n + delta) % (1 << 64)
            return (b"%d" % n, s[1])
        op = "ma N" if autoviv else "ma"
        line = b"ma %s D%d%s%s%s%s\r\n" % (
            k.name, delta, b" MD" if decr else b"", b" v" if want_v else b"",
            b" N0 J%d" % init if autoviv else b"", b" q" if quiet else b"")
        replies, t0, t1 = self.mcall(i, line + (b"mn\r\n" if quiet else b""), quiet)
        if replies is None or replies is False:
            self.settle(k, i, op, replies, t0, t1, b"HD\r\n", apply, True)
            return
        before = k.state
        want = apply(before)
        created = autoviv and before is None
        if quiet:
            form = [b"HD\r\n"] if created else [] if want is not None else [b"NF\r\n"]
            if replies != form and replies in ([], [b"HD\r\n"], [b"NF\r\n"]):
                self.c.violation("WRONG_REPLY", "wrong_replies", k.name, op + " q", i,
                                 b" ".join(form).decode() or "nothing before MN",
                                 b" ".join(replies).decode() or "nothing before MN", t0, t1)
        reply = replies[0] if replies else b"HD\r\n"
        if reply.startswith(b"VA "):
            try:
                n = parse_meta(reply)[2]
                int(n)
            except (BadReply, ValueError, IndexError):
                self.settle(k, i, op, reply, t0, t1, b"HD\r\n", apply, True)
                return
            if want is None:
                self.c.violation("WRONG_REPLY", "wrong_replies", k.name, op, i,
                                 "NF", n.decode(), t0, t1)
                k.states = [ANY]
            elif want[0] != n:
                self.c.violation("STALE", "stale", k.name, op, i, want, (n, want[1]), t0, t1)
                k.states = [(n, want[1])]
            else:
                k.states = [want]
            return
        if reply == b"HD\r\n" and want is None:
            self.c.violation("WRONG_REPLY", "wrong_replies", k.name, op, i,
                             "NF", "HD", t0, t1)
            k.states = [ANY]
            return
        self.settle(k, i, op, reply, t0, t1, b"HD\r\n", apply, want is not None,
                    fail_replies=(b"NF\r\n",))

    def op_maq(self, k, i):
        self.op_ma(k, i, quiet=True, autoviv=self.rng.random() < 0.3)

    def op_man(self, k, i):
        self.op_ma(k, i, autoviv=True)


def apply_if(on_ok, s, op):
    """The state an in-doubt op leaves when it did apply to state s."""
    if s is ANY:
        return ANY
    if s is None and op in ("append", "prepend", "replace", "cas", "touch",
                            "incr", "decr", "delete", "ms C", "md", "ma"):
        return None
    if s is not None and op == "add":
        return s
    return on_ok(s)

