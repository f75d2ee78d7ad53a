"""A binary upgrade without dropping clients (docs/ARCHITECTURE.md, "Binary
upgrade"): a new process started on the same port (SO_REUSEPORT) takes new
connections; the old one, on SIGTERM, stops accepting, answers what its
clients sent, closes each connection between two requests and exits. The
clients here behave as real ones do: a connection closed before any byte of
a reply came (end of stream) is made again and the command sent again.
Every reply is checked; a reset, a partial reply or a wrong value fails."""
import os
import signal
import socket
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
import redis

from harness import Proxy, free_port, locate, pool_yaml, wait_port, wait_until

CLIENTS = 8
KEYS_PER_CLIENT = 40


class Closed(Exception):
    """The connection ended before any byte of the reply: not answered."""


class LoadClient(threading.Thread):
    """One connection doing set then get of its own keys, checking each
    reply; reconnects when the connection ends between requests.

    A connection reset before it was ever answered is one the kernel queued
    on the old process's listener between its last accept and its close
    (docs/ARCHITECTURE.md, "Binary upgrade": what is left without
    net.ipv4.tcp_migrate_req): no proxy read its command, so the client
    retries it on a new connection, as memcached clients do. Counted in
    `unaccepted`; a reset of a connection that had been answered is an
    error."""

    def __init__(self, port, n, keys=None):
        super().__init__(daemon=True)
        self.port, self.n = port, n
        self.keys = keys or [b"up%d-%d" % (n, i) for i in range(KEYS_PER_CLIENT)]
        self.stop = threading.Event()
        self.ops = 0
        self.reconnects = 0
        self.unaccepted = 0
        self.errors = []
        self.sock = None
        self.answered = 0       # replies on the current connection

    def _connect(self):
        """A new connection. One the kernel resets while connect() waits
        for it (queued on the old process's listener, which closed) was
        never answered either: made again."""
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                break
            except ConnectionResetError:
                self.unaccepted += 1
        self.answered = 0

    def _reply(self, request, end):
        """Send request, read until the reply ends with `end`."""
        try:
            self.sock.sendall(request)
        except BrokenPipeError:
            raise Closed()
        except ConnectionResetError as e:
            if self.answered:
                raise AssertionError("reset sending %r after %d replies" %
                                     (request[:40], self.answered)) from e
            self.unaccepted += 1
            raise Closed()
        buf = b""
        while not buf.endswith(end):
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as e:
                if not self.answered and not buf:
                    self.unaccepted += 1
                    raise Closed()
                raise AssertionError("reset after %r, %d reply bytes read" %
                                     (request[:40], len(buf))) from e
            if not chunk:
                if buf:
                    raise AssertionError("closed in the middle of a reply: %r"
                                         % buf[:80])
                raise Closed()
            buf += chunk
        self.answered += 1
        return buf

    def call(self, request, end):
        while True:
            try:
                return self._reply(request, end)
            except Closed:
                self.sock.close()
                self.reconnects += 1
                self._connect()

    def run(self):
        try:
            self._connect()
            seq = 0
            while not self.stop.is_set():
                key = self.keys[seq % len(self.keys)]
                val = b"%d:%d" % (self.n, seq)
                got = self.call(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(val), val),
                                b"\r\n")
                if got != b"STORED\r\n":
                    raise AssertionError("set %s: %r" % (key, got))
                got = self.call(b"get %s\r\n" % key, b"END\r\n")
                want = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(val), val)
                if got != want:
                    raise AssertionError("get %s: %r, want %r" % (key, got, want))
                self.ops += 2
                seq += 1
        except Exception as e:      # reported by the test, not lost in a thread
            self.errors.append(repr(e))
        finally:
            if self.sock is not None:
                self.sock.close()


def heartbeats(r):
    return [f for f in r.hgetall("rp:cache:proxies") if not f.startswith(b"sweeper:")]


def stats(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            assert chunk, "stats: connection closed"
            buf += chunk
    finally:
        s.close()
    return {l.split()[1].decode(): l.split()[2].decode()
            for l in buf.split(b"\r\n") if l.startswith(b"STAT ")}


def wait_serving(port):
    wait_until(lambda: stats(port).get("migration:state") not in (None, "starting"),
               what="the proxy to serve")


def wait_resized(port, what):
    """Until the proxy on port serves the second ring, its migration over."""
    def resized():
        st = stats(port)
        return st.get("migration:state") == "idle" and int(st.get("migration:epoch", 0)) >= 2
    wait_until(resized, timeout=60, what=what)


def wait_load(clients, more, what):
    """Until the clients answered `more` requests more."""
    before = sum(c.ops for c in clients)
    wait_until(lambda: sum(c.ops for c in clients) >= before + more, timeout=30, what=what)


def stop_old_under_load(clients, old, r, port, resize):
    """SIGTERM to the old process while the clients run; then one heartbeat
    left, the resize's end (resize), and load through the new process.
    Returns how long the old process took to stop."""
    t0 = time.monotonic()
    assert old.stop() == 0
    took = time.monotonic() - t0
    wait_until(lambda: len(heartbeats(r)) == 1, what="one heartbeat left")
    if resize:
        wait_resized(port, "the resize's end")
    wait_load(clients, 400, "load through the new process")
    return took


def stop_all(clients):
    for c in clients:
        c.stop.set()
    for c in clients:
        c.join(30)


def assert_no_errors(clients):
    """Every reply was right, and no client saw an error (a reset only before
    its connection was ever answered, retried: LoadClient)."""
    errors = [e for c in clients for e in c.errors]
    assert errors == [], errors[:5]
    print("connections reset before any answer (retried):",
          sum(c.unaccepted for c in clients))


@pytest.mark.parametrize("change", [False, True], ids=["same-file", "new-server"])
def test_upgrade_under_load_loses_no_request(cluster, change):
    """Old and new serve the port together, as two proxies of the fleet
    (two heartbeats); SIGTERM to the old one; no request fails. With
    new-server the new process's file adds a server: the fleet disagrees
    while both run, and the resize runs once the old one left, still under
    load."""
    rds = cluster.redis()
    mcs = cluster.memcached(4)
    r = redis.Redis(port=rds.port)
    port = free_port()

    def conf(servers):
        return pool_yaml("cache", port, [(m.addr, 1, "mc%d" % (i + 1))
                                                 for i, m in enumerate(servers)],
                         hash="md5", timeout=2000,
                         index={"redis": "127.0.0.1:%d" % rds.port},
                         migration={"rate": 0})

    old = cluster.proxy(conf(mcs[:3]), port=port)
    wait_serving(port)
    clients = [LoadClient(port, n) for n in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        wait_until(lambda: sum(c.ops for c in clients) >= 400, timeout=30,
                   what="load through the old process")

        # The new binary: same port, its own files, its own proxy id.
        newdir = os.path.join(cluster.workdir, "new")
        os.mkdir(newdir)
        new = Proxy(newdir, conf(mcs if change else mcs[:3]), port)
        cluster.started.append(new)
        new.start()
        wait_port(port, proc=new.proc)
        wait_until(lambda: len(heartbeats(r)) == 2,
                   what="two proxies of one fleet")
        assert len(set(heartbeats(r))) == 2
        wait_load(clients, 200, "load while both listen")

        took = stop_old_under_load(clients, old, r, port, change)
        assert took < 5.0, "the old process took %.1fs to stop" % took
    finally:
        stop_all(clients)
    assert_no_errors(clients)
    # Every client was on the old process and was moved by a close between
    # requests; each ends on the new one.
    assert all(c.reconnects >= 1 for c in clients), [c.reconnects for c in clients]
    st = stats(port)
    assert int(st["curr_connections"]) >= 1
    assert int(st["total_connections"]) >= CLIENTS
    assert "stopping (SIGTERM)" in old.log()


def old_process_fleet(cluster, rate, n_keys, prefix):
    """The old process of an upgrade over 3 of 4 memcached, with an index
    (the fleet's Redis) and migration rate `rate`; n_keys keys stored
    through it. Returns .old, .port, .r (Redis), .conf(servers) (the
    pool's file), .mcs, .moving (the keys a fourth server takes over) and
    .conn (the connection that stored them, to the old process)."""
    rds = cluster.redis()
    f = SimpleNamespace(mcs=cluster.memcached(4), r=redis.Redis(port=rds.port),
                        port=free_port())
    f.conf = lambda servers: pool_yaml(
        "cache", f.port, [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(servers)],
        hash="md5", timeout=2000, index={"redis": "127.0.0.1:%d" % rds.port},
        migration={"rate": rate})
    f.old = cluster.proxy(f.conf(f.mcs[:3]), port=f.port)
    wait_serving(f.port)
    four = os.path.join(cluster.workdir, "four.yml")
    with open(four, "w") as out:
        out.write(f.conf(f.mcs))
    names = [b"%s%d" % (prefix, i) for i in range(n_keys)]
    before, after = locate(f.old.conf_path, names), locate(four, names)
    f.moving = [k for k in names if before[k] != after[k]]
    f.conn = socket.create_connection(("127.0.0.1", f.port))
    f.conn.sendall(b"".join(b"set %s 0 0 1 noreply\r\nx\r\n" % k for k in names) +
                   b"mn\r\n")
    buf = b""
    while not buf.endswith(b"MN\r\n"):
        buf += f.conn.recv(65536)
    return f


def start_new_process(cluster, f):
    """The new binary on the old one's port with the 4-server file, once
    both are proxies of one fleet."""
    newdir = os.path.join(cluster.workdir, "new")
    os.mkdir(newdir)
    new = Proxy(newdir, f.conf(f.mcs), f.port)
    cluster.started.append(new)
    new.start()
    wait_until(lambda: len(heartbeats(f.r)) == 2, what="two proxies of one fleet")
    return new


def test_upgrade_in_the_middle_of_a_migration_loses_no_request(cluster):
    """A 3 -> 4 resize moves keys slowly (300 keys/s) when the new binary
    starts with the 4-server file and the old one gets SIGTERM: both are
    proxies of the fleet for a while, the new one following the
    migration. Every client works on keys that change owner, so each
    command the old process still answers runs by the migration's rules.
    It stays in the fleet until its clients are gone (proxy_leave), so it
    answers them; before, it left at the signal and refused them
    (SERVER_ERROR): the fleet no longer waited for what it routed."""
    f = old_process_fleet(cluster, 300, 4000, b"mv")
    f.conn.close()
    old, port, mcs, moving = f.old, f.port, f.mcs, f.moving
    assert len(moving) > 600
    clients = [LoadClient(port, n, moving[n * 30:(n + 1) * 30]) for n in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        wait_until(lambda: sum(c.ops for c in clients) >= 400, timeout=30,
                   what="load through the old process")
        old.write_config(f.conf(mcs))
        old.signal(signal.SIGHUP)
        wait_until(lambda: stats(port).get("migration:phase") == "moving", timeout=30,
                   what="keys moving")
        start_new_process(cluster, f)
        wait_load(clients, 200, "load while both listen")
        assert stats(port).get("migration:state") != "idle"
        stop_old_under_load(clients, old, f.r, port, True)
    finally:
        stop_all(clients)
    assert_no_errors(clients)
    assert all(c.reconnects >= 1 for c in clients), [c.reconnects for c in clients]
    assert "stopping (SIGTERM)" in old.log()


def test_a_client_that_never_pauses_is_closed_before_the_old_process_leaves(cluster):
    """One client of the old process pipelines sets and deletes on keys that
    change owner without a pause (a command always half sent), while the new
    process proposes a fourth server. The old one closes it when the stop's
    grace is over, and only then leaves the fleet (proxy_leave): it never
    answers SERVER_ERROR, and the fleet resizes only once it left, so no
    acknowledged write or delete is undone by the move. A version that
    left at the grace and served on for 2 s answered thousands of
    SERVER_ERROR, and routed by the old ring while the fleet moved keys:
    acknowledged deletes came back (a review's reproduction)."""
    f = old_process_fleet(cluster, 0, 400, b"np")
    old, port, moving, s = f.old, f.port, f.moving, f.conn
    start_new_process(cluster, f)
    sent, replies = [], []
    done = threading.Event()

    def writer():       # op i: a set of v<i> (even i) or a delete (odd i)
        i, pending = 0, b""
        try:
            while not done.is_set():
                cmds = []
                for _ in range(10):
                    k, v = moving[(i // 2) % len(moving)], b"v%d" % i
                    sent.append((k, v))
                    cmds.append(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) if i % 2 == 0
                                else b"delete %s\r\n" % k)
                    i += 1
                data = pending + b"".join(cmds)
                s.sendall(data[:-3])
                pending = data[-3:]     # never idle between two commands
                time.sleep(0.005)
        except OSError:
            pass

    def reader():
        rest = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            rest += chunk
            *lines, rest = rest.split(b"\r\n")
            replies.extend(lines)
    threads = [threading.Thread(target=writer, daemon=True),
               threading.Thread(target=reader, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    assert old.stop() == 0
    took = time.monotonic() - t0
    done.set()
    for t in threads:
        t.join(10)
    s.close()
    wait_resized(port, "the resize once the old process left")
    assert [x for x in replies if not x.startswith((b"STORED", b"DELETED", b"NOT_FOUND"))] == []
    assert 4.5 < took < 9.0, took       # the grace, the settling, the leave
    last = {}
    for (k, v), reply in zip(sent, replies):
        last[k] = v         # each reply acknowledges its command, in order
    c = socket.create_connection(("127.0.0.1", port))
    undone = []
    for k, v in last.items():
        c.sendall(b"get %s\r\n" % k)
        buf = b""
        while not buf.endswith(b"END\r\n"):
            buf += c.recv(65536)
        got = buf.split(b"\r\n")[1] if buf.startswith(b"VALUE") else None
        if got is not None and int(got[1:]) < int(v[1:]):
            undone.append((k, v, got))
    c.close()
    assert len(last) > 20 and undone == [], undone[:5]


@pytest.mark.parametrize("active", ["all", "auto", "moving"])
def test_upgrade_of_a_pool_served_by_every_thread(cluster, active):
    """A pool without an index on 2 threads, old and new (4 listeners on
    one port): the same guarantee, each thread closing its own clients.
    With `auto`, the light load is served by one thread of each process,
    the other handing over what its listener accepts; with `moving`, the
    old process is told to serve on one thread just before its SIGTERM, so
    it stops while its clients move ("Threads: how many serve")."""
    mcs = cluster.memcached(2)
    port = free_port()
    text = pool_yaml("cache", port, [(m.addr, 1, "mc%d" % (i + 1))
                                     for i, m in enumerate(mcs)])
    text += "threads_active: %s\n" % (2 if active == "moving" else active)
    old = cluster.proxy(text, port=port, extra=["-T", "2"])
    clients = [LoadClient(port, n) for n in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        wait_until(lambda: sum(c.ops for c in clients) >= 400, timeout=30,
                   what="load through the old process")
        newdir = os.path.join(cluster.workdir, "new")
        os.mkdir(newdir)
        new = Proxy(newdir, text, port, extra=["-T", "2"])
        cluster.started.append(new)
        new.start()
        if active == "moving":
            old.write_config(text.replace("threads_active: 2", "threads_active: 1"))
            old.signal(signal.SIGHUP)
            wait_until(lambda: "1 of 2 threads serve now" in old.log(),
                       what="the old process on one thread")
        assert old.stop() == 0
        wait_load(clients, 400, "load through the new process")
    finally:
        stop_all(clients)
    assert_no_errors(clients)
    assert all(c.reconnects >= 1 for c in clients), [c.reconnects for c in clients]
    assert "2 threads" in new.log()


def start_unix(proxy, path):
    """Start a proxy whose pool listens on a unix socket (Server.start waits
    for a TCP port)."""
    proxy._log = open(proxy.log_path, "ab")
    proxy.proc = subprocess.Popen(proxy.argv(), stdout=proxy._log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_until(lambda: "listening on %s" % path in proxy.log(),
               what="the proxy on %s" % path)


def unix_call(path, req):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(path)
        s.sendall(req)
        out = b""
        while not out.endswith(b"\r\n"):
            chunk = s.recv(4096)
            assert chunk, "closed without a reply"
            out += chunk
        return out
    finally:
        s.close()


def test_unix_socket_and_pid_file_stay_with_the_new_process(cluster):
    """The new process takes the socket's path over; the old one, stopping,
    removes neither the path nor the pid file the new one wrote."""
    mc = cluster.memcached(1)[0]
    path = os.path.join(cluster.workdir, "rp.sock")
    text = pool_yaml("cache", 1, [(mc.addr, 1, "mc1")]).replace(
        "listen: 127.0.0.1:1", "listen: %s" % path)
    old = Proxy(cluster.workdir, text, 1)
    cluster.started.append(old)
    start_unix(old, path)
    assert unix_call(path, b"set u 0 0 1\r\nx\r\n") == b"STORED\r\n"

    newdir = os.path.join(cluster.workdir, "new")
    os.mkdir(newdir)
    new = Proxy(newdir, text, 2)
    new.pid_path = old.pid_path         # one pid file, as a service manager has
    cluster.started.append(new)
    start_unix(new, path)
    wait_until(lambda: open(old.pid_path).read().strip() == str(new.proc.pid),
               what="the new pid in the pid file")
    assert old.stop() == 0
    assert os.path.exists(path)
    assert open(new.pid_path).read().strip() == str(new.proc.pid)
    assert unix_call(path, b"get u\r\n") == b"VALUE u 0 1\r\nx\r\nEND\r\n"
    assert "pid %d" % new.proc.pid in new.log()
