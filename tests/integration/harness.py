"""Real servers for the integration tests: memcached, redis-server, ringproxy.

Every server runs on a free loopback port chosen here, in a temporary
directory, and is stopped (and its process reaped) when the test ends, so no
test assumes a running service and none leaves one behind. The proxy runs the
binary named by RINGPROXY_BIN (the Makefile passes the sanitizer build); its
log is scanned for sanitizer reports when it stops, so a memory error fails
the test that caused it.
"""
import functools
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RINGPROXY = os.environ.get("RINGPROXY_BIN", os.path.join(ROOT, "build", "ringproxy"))
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: AddressSanitizer",
                   "WARNING: ThreadSanitizer")


@functools.lru_cache(maxsize=None)
def built_with_tsan(path=RINGPROXY):
    """Is the proxy under test a ThreadSanitizer build? Its shadow memory
    makes VmRSS say nothing of what the proxy itself holds. Read once."""
    try:
        with open(path, "rb") as f:
            return b"__tsan_init" in f.read()
    except OSError:
        return False


def rss_kb(pid):
    """VmRSS of pid, in kB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def vnode_of(name):
    """The v-node set (layout 1's name) an index set belongs to: layout 2
    keeps a v-node's keys in <base>:s<low> and long keys in <base>:l<low>
    (docs/ARCHITECTURE.md, "The index")."""
    n = name.decode() if isinstance(name, bytes) else name
    m = re.match(r"^(.*:\d+):[sl]\d+$", n)
    return m.group(1) if m else n


def is_long_list(name):
    """Is this index set a long-key list (<base>:l<low>, src/layout.h)?"""
    n = name.decode() if isinstance(name, bytes) else name
    return re.search(r":\d+:l\d+$", n) is not None


def set_members(r, name):
    """[(member, score)] of an index set of either kind: a sorted set, or a
    long-key list of "<score> <key>" entries (src/layout.h, LAY_LONG_KEYS)."""
    if not is_long_list(name):
        return r.zrange(name, 0, -1, withscores=True)
    out = []
    for e in r.lrange(name, 0, -1):
        score, _, m = e.partition(b" ")
        out.append((m, float(score)))
    return out


def set_card(r, name):
    """Entries of an index set of either kind."""
    return r.llen(name) if is_long_list(name) else r.zcard(name)


def index_sets(r, prefix):
    """Every set of the index that holds keys (both layouts): the names
    under <prefix>:v: (the directories live under <prefix>:vd:)."""
    return list(r.scan_iter(match=prefix + ":v:*", count=1000))


def index_entries(r, prefix):
    """Every index entry, both layouts: {member: [(v-node set, score), ...]}."""
    out = {}
    for name in index_sets(r, prefix):
        for m, score in set_members(r, name):
            out.setdefault(m, []).append((vnode_of(name), score))
    return out


def mc_value(m, key):
    """The bytes memcached m holds for key (straight from the server, not
    through a proxy), or None."""
    with socket.create_connection(("127.0.0.1", m.port), timeout=5) as s:
        s.sendall(b"mg %s v\r\n" % (key.encode() if isinstance(key, str) else key))
        got = b""
        while not (got.startswith(b"EN\r\n") or
                   (got.startswith(b"VA ") and got.count(b"\r\n") >= 2)):
            chunk = s.recv(65536)
            assert chunk, "memcached closed the connection: %r" % got
            got += chunk
    return None if got.startswith(b"EN") else got.split(b"\r\n")[1]


def recv_to_eof(sock):
    """Read sock until the peer closes (a reset ends it too): the bytes."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data


def read_all(port, host="127.0.0.1", timeout=10):
    """Connect and read to EOF: the bytes (what the stats port writes)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        return recv_to_eof(s)


def stats_port_json(port, host="127.0.0.1"):
    """What a twemproxy monitor does with the stats port: connect, read to
    EOF, parse the JSON."""
    return json.loads(read_all(port, host).decode())


# Ports for the servers a test starts. Each pytest-xdist worker (`make
# integration` runs two) takes its own block of ports from 10000 up, below
# Linux's ephemeral range (32768 and up), and walks through it: a port
# handed out cannot be handed to another worker, nor be taken by an outgoing
# connection, between the check here and the server's bind. A port
# something listens on, or one in TIME_WAIT, fails the bind below and is
# skipped. DEAD_PORT and up (to 24999) is for addresses of servers no test
# ever runs.
PORT_BLOCK = 2500
_PORT_BASE = 10000
DEAD_PORT = 20000
_next_port = None


def _worker_index():
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    global _next_port
    first = _PORT_BASE + (_worker_index() % 4) * PORT_BLOCK    # below DEAD_PORT
    if _next_port is None:
        # somewhere in the block: another process on the same block (a
        # bench script beside the tests) starts elsewhere
        _next_port = first + os.getpid() % PORT_BLOCK
    for _ in range(PORT_BLOCK):
        port = _next_port
        _next_port = first + (_next_port + 1 - first) % PORT_BLOCK
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in %d..%d" % (first, first + PORT_BLOCK - 1))


def wait_port(port, timeout=10.0, proc=None):
    """Wait until something listens on port; with proc, until proc itself
    does (a free port can be taken by another process meanwhile, and a
    connection would then reach that one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d"
                               % (proc.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
            # Someone listens; reading /proc is slow with many sockets in
            # TIME_WAIT, so it is only asked once there is a listener.
            if proc is None or _owns_listener(proc.pid, port):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("nothing listening on port %d after %.1fs" % (port, timeout))


def _owns_listener(pid, port):
    """Does process pid hold a TCP socket listening on port? (Linux /proc)"""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add("socket:[%s]" % f[9])
    if not inodes:
        return False
    fd_dir = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) in inodes:
                return True
        except OSError:
            pass
    return False


class Server:
    """A child process listening on one port; start(), stop(), kill()."""

    def __init__(self, name, port, workdir):
        self.name, self.port, self.workdir = name, port, workdir
        self.proc = None
        self.log_path = os.path.join(workdir, "%s-%d.log" % (name, port))

    def argv(self):
        raise NotImplementedError

    def start(self, attempts=3):
        """Start and wait until it listens. A free port can be taken by
        someone else before the server binds it; a server that can pick
        another (repick_port) then tries again on a new one."""
        for attempt in range(attempts):
            self._log = open(self.log_path, "ab")
            self.proc = subprocess.Popen(self.argv(), stdout=self._log,
                                         stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            try:
                wait_port(self.port, proc=self.proc)
                return self
            except RuntimeError:
                # An exit for a taken port is retried elsewhere; any other
                # failure is the caller's to see (self.proc stays set).
                if (self.proc.poll() is None or attempt + 1 == attempts
                        or "in use" not in self.log() or not self.repick_port()):
                    raise
                self._log.close()
                self.proc = None

    def repick_port(self):
        """Move to another free port before a new start; False if it cannot."""
        return False

    def _moved_to(self, port):
        self.port = port
        self.log_path = os.path.join(self.workdir, "%s-%d.log" % (self.name, port))

    def kill(self):
        """SIGKILL: the server vanishes without a goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._log.close()
        self.proc = None

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("%s did not stop within %.0fs" % (self.name, timeout))
        rc = self.proc.returncode
        self.proc = None
        self._log.close()
        return rc

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class Memcached(Server):
    def __init__(self, workdir, port=None, memory_mb=64, item_max="2m"):
        super().__init__("memcached", port or free_port(), workdir)
        self.memory_mb, self.item_max = memory_mb, item_max
        self.port_chosen_here = port is None

    def repick_port(self):
        if self.port_chosen_here:
            self._moved_to(free_port())
        return self.port_chosen_here

    def argv(self):
        # no_lru_maintainer: one plain LRU per slab class. With the segmented
        # LRU, items move between its HOT/WARM/COLD lists in the background
        # (a get schedules such a move), and `lru_crawler metadump` can miss
        # an item that moves into a list it has already walked: keys() would
        # then be short.
        return ["memcached", "-p", str(self.port), "-U", "0", "-l", "127.0.0.1",
                "-o", "no_lru_maintainer",
                "-m", str(self.memory_mb), "-I", self.item_max, "-t", "1",
                "-c", "4096", "-u", "root" if os.getuid() == 0 else os.environ.get("USER", "nobody")]

    def keys(self):
        """Every key the server holds (lru_crawler metadump). A crawler busy
        with another dump (a proxy's index rebuild) is asked again."""
        keys = set()
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", self.port)) as s:
                s.sendall(b"lru_crawler metadump all\r\n")
                buf = b""
                while not buf.endswith(b"END\r\n") and not buf.startswith(b"BUSY"):
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    buf += chunk
            if not buf.startswith(b"BUSY"):
                break
            time.sleep(0.05)
        for line in buf.split(b"\n"):     # metadump ends its lines with "\n"
            if line.startswith(b"key="):
                from urllib.parse import unquote_to_bytes
                keys.add(unquote_to_bytes(line.split(b" ")[0][4:]))
        return keys


class Redis(Server):
    """redis-server; persist=True keeps an fsync'd append-only file, so a
    killed server restarts with its data, as a production Redis would."""

    def __init__(self, workdir, port=None, persist=False):
        super().__init__("redis", port or free_port(), workdir)
        self.persist = persist

    def argv(self):
        aof = (["--appendonly", "yes", "--appendfsync", "always",
                "--appendfilename", "rp-%d.aof" % self.port] if self.persist
               else ["--appendonly", "no"])
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--dir", self.workdir, "--daemonize", "no"] + aof


class Proxy(Server):
    """ringproxy on a generated config. `pools` maps pool name -> dict."""

    def __init__(self, workdir, config_text, port, admin_port=0, stats_port=0,
                 extra=()):
        super().__init__("ringproxy", port, workdir)
        self.conf_path = os.path.join(workdir, "ringproxy-%d.yml" % port)
        self.pid_path = os.path.join(workdir, "ringproxy-%d.pid" % port)
        self.admin_port = admin_port
        self.stats_port = stats_port
        self.extra = list(extra)
        self.write_config(config_text)

    def write_config(self, text):
        with open(self.conf_path, "w") as f:
            f.write(text)

    def _config(self):
        with open(self.conf_path) as f:
            return f.read()

    def argv(self):
        # -v 6: nutcracker's info level; -s: the stats JSON port (0: off).
        # One event-loop thread unless RINGPROXY_THREADS=N says otherwise (the
        # product's default is one per core): a test's own -T, or a threads:
        # line of its file, wins; extra=["-T", "default"] passes no -T.
        threads = os.environ.get("RINGPROXY_THREADS") or "1"
        extra = list(self.extra)
        if extra[-2:] == ["-T", "default"]:
            extra = extra[:-2]
        elif "-T" not in extra and not re.search(r"^threads:", self._config(), re.M):
            extra += ["-T", threads]
        # Every thread serves (the product's default is `auto`, which keeps
        # a light load on one thread: docs/ARCHITECTURE.md, "Threads: how
        # many serve"), so the tests' clients land on every thread; a test of
        # the balancing passes --threads-active or sets threads_active:.
        if "--threads-active" not in extra and \
                not re.search(r"^threads_active:", self._config(), re.M):
            extra += ["--threads-active", "all"]
        return [RINGPROXY, "-c", self.conf_path, "-v", "6", "-p", self.pid_path,
                "-P", str(self.admin_port), "-s", str(self.stats_port)] + extra

    @property
    def threads(self):
        """Its event-loop threads as its command line sets them (-T; 1
        without): each has its own backend connections."""
        argv = self.argv()
        return int(argv[argv.index("-T") + 1]) if "-T" in argv else 1

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        rc = super().stop(sig, timeout)
        check_sanitizers(self.log())
        return rc

    def signal(self, sig):
        self.proc.send_signal(sig)


class Nutcracker(Server):
    """twemproxy on a config file it shares with ringproxy (same YAML)."""

    BINARY = shutil.which("nutcracker") or "/usr/sbin/nutcracker"

    def __init__(self, workdir, config_text, port):
        """config_text: one pool listening on 127.0.0.1:port."""
        super().__init__("nutcracker", port, workdir)
        self.config_text = config_text
        self._write_config()

    def _write_config(self):
        self.conf_path = os.path.join(self.workdir, "nutcracker-%d.yml" % self.port)
        self.pid_path = os.path.join(self.workdir, "nutcracker-%d.pid" % self.port)
        self.stats_port = free_port()
        with open(self.conf_path, "w") as f:
            f.write(self.config_text)

    def repick_port(self):
        old = "listen: 127.0.0.1:%d" % self.port
        self._moved_to(free_port())
        self.config_text = self.config_text.replace(old, "listen: 127.0.0.1:%d" % self.port)
        self._write_config()
        return True

    @classmethod
    def installed(cls):
        return os.access(cls.BINARY, os.X_OK)

    def argv(self):
        return [self.BINARY, "-c", self.conf_path, "-s", str(self.stats_port),
                "-a", "127.0.0.1", "-p", self.pid_path, "-o", self.log_path]


def check_sanitizers(log):
    for mark in SANITIZER_MARKS:
        if mark in log:
            raise AssertionError("sanitizer report in the proxy log:\n" + log[-6000:])


def pool_yaml(name, listen_port, servers, **settings):
    """A pool in ringproxy's YAML; servers: list of (addr, weight, name)."""
    lines = ["%s:" % name, "  listen: 127.0.0.1:%d" % listen_port]
    for k, v in settings.items():
        if isinstance(v, dict):
            lines.append("  %s:" % k)
            lines += ["    %s: %s" % (kk, fmt(vv)) for kk, vv in v.items()]
        else:
            lines.append("  %s: %s" % (k, fmt(v)))
    lines.append("  servers:")
    for addr, weight, sname in servers:
        lines.append("    - %s:%d%s" % (addr, weight, " " + sname if sname else ""))
    return "\n".join(lines) + "\n"


def fmt(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"%s"' % v
    return str(v)


def locate(conf_path, keys, pool=None):
    """Ask `ringproxy locate` where keys go: {key: server identity}.

    Keys may be str or bytes (bytes reach the proxy's argv unchanged, so keys
    with bytes >= 0x80 work); the answer's keys have the type given."""
    out = {}
    keys = list(keys)
    raw = bool(keys) and isinstance(keys[0], bytes)
    for i in range(0, len(keys), 2000):
        argv = [RINGPROXY, "locate", "-c", conf_path]
        if pool:
            argv += ["--pool", pool]
        argv.append("--")           # keys may start with "-"
        chunk = keys[i:i + 2000]
        res = subprocess.run([os.fsencode(a) for a in argv] + chunk if raw
                             else argv + chunk, check=True, capture_output=True)
        for line in res.stdout.split(b"\n")[1:]:
            if line:
                f = line.split(b" ")
                out[f[1] if raw else os.fsdecode(f[1])] = f[4].decode()
    return out


def key_per_server(conf_path, prefix="k", pool=None):
    """One key that the ring of conf_path places on each server:
    {server identity: key}. Keys look like "<prefix>-1a2b3c4d"."""
    rng = random.Random(prefix)
    keys = ["%s-%08x" % (prefix, rng.getrandbits(32)) for _ in range(200)]
    where = locate(conf_path, keys, pool)
    out = {}
    for k in keys:
        out.setdefault(where[k], k)
    return out


class Wire:
    """A raw memcached text-protocol connection, to check bytes on the wire.

    read_reply() returns one whole reply: a VALUE...END or STAT...END block
    (values read by their length, so any bytes may be inside), or one line.
    """

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("connection closed; unread: %r" % self.buf[:200])
        self.buf += chunk

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_line(self):
        """The next line, with its "\r\n"."""
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def read_reply(self):
        line = self.read_line()
        if not (line.startswith(b"VALUE ") or line.startswith(b"STAT ")):
            return line
        out = line
        while line != b"END\r\n":
            if line.startswith(b"VALUE "):
                out += self.read_exact(int(line.split()[3]) + 2)
            line = self.read_line()
            out += line
        return out

    def call(self, data, replies=1):
        """Send data, return the next `replies` replies joined."""
        self.send(data)
        return b"".join(self.read_reply() for _ in range(replies))

    def closed_by_peer(self):
        """Read to the end: True when the peer closes (EOF or reset) with
        nothing more to say; raises if it sends bytes instead."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
        except ConnectionResetError:
            pass
        if self.buf:
            raise AssertionError("unexpected bytes before close: %r" % self.buf[:200])
        return True


def sigstop(proc, timeout=10.0):
    """SIGSTOP proc and wait until the kernel says it stopped (state T): a
    request sent right after the signal could still be served otherwise."""
    proc.send_signal(signal.SIGSTOP)

    def stopped():
        with open("/proc/%d/stat" % proc.pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    wait_until(stopped, timeout=timeout, what="process %d to stop" % proc.pid)


class paused:
    """A context in which a server's process is stopped (SIGSTOP, waited
    for): what the test sends meanwhile is all ready when it resumes, so one
    turn of its loop sees it, in the order it became ready (epoll's)."""

    def __init__(self, server):
        self.server = server

    def __enter__(self):
        pid = self.server.proc.pid
        self.server.proc.send_signal(signal.SIGSTOP)

        def state():
            with open("/proc/%d/stat" % pid) as f:
                return f.read().rsplit(")", 1)[1].split()[0]
        wait_until(lambda: state() == "T", what="process %d stopped" % pid)
        return self

    def __exit__(self, *exc):
        self.server.proc.send_signal(signal.SIGCONT)


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll predicate() until it returns a true value (returned), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def proxy_stats(port):
    """The proxy's `stats` as {name: value string}."""
    with Wire(port) as w:
        reply = w.call(b"stats\r\n")
    stats = {}
    for line in reply.split(b"\r\n"):
        if line.startswith(b"STAT "):
            _, name, value = line.decode().split(" ", 2)
            stats[name] = value
    return stats


# Under -T 2 a `stats` that another thread answers shows the home thread's
# pool lines (index:*, migration:*, threads:forwarded) as of the home
# thread's last tick (src/pool.c pool_hub_tick, every 100 ms).
HOME_LINES_LAG = 0.3


def fresh_stats(port):
    """`stats` in which every line, whichever thread answers, is at least as
    new as the moment of the call: the counts a test takes as its base."""
    time.sleep(HOME_LINES_LAG)
    return proxy_stats(port)


def home_lines_lag():
    """How long a test waits before it trusts the home thread's lines as
    they stand: HOME_LINES_LAG when the harness runs every proxy on
    several threads (RINGPROXY_THREADS), else 0."""
    return HOME_LINES_LAG if int(os.environ.get("RINGPROXY_THREADS") or 1) > 1 else 0


def stats_until(port, done, timeout=10.0, what="condition"):
    """The first `stats` for which done(stats) holds, each read taken
    home_lines_lag() after it was asked for, so that a line saying the
    index writer or the migration is idle is not one from before the test's
    last commands."""
    def probe():
        time.sleep(home_lines_lag())
        st = proxy_stats(port)
        return st if done(st) else None
    return wait_until(probe, timeout=timeout, what=what)


def stat_becomes(port, name, want, timeout=10.0):
    """The proxy's `stats` field name reaches want (compared as text). With
    -T N another thread's share shows as of the end of its last loop turn
    (docs/ARCHITECTURE.md, "Threads"), so a reply can be read before what
    it counted is. Returns that `stats`: a second one could show another
    thread's later turn (a connection the caller closed just before)."""
    def probe():
        st = proxy_stats(port)
        return st if st.get(name) == str(want) else None
    return wait_until(probe, timeout=timeout, what="stats %s to be %s" % (name, want))


class FakeBackend:
    """A listening socket that plays a memcached server by hand.

    Connections wait in the kernel's backlog until accept() (so a proxy's
    connect succeeds at once and its requests are never answered until the
    test says so): accept() one, read what the proxy sent with recv_until(),
    then reply with send() or vanish with close()."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = []

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def accept(self, timeout=10.0):
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        conn.settimeout(timeout)
        self.conns.append(conn)
        return conn

    @staticmethod
    def recv_until(conn, end):
        buf = b""
        while not buf.endswith(end):
            chunk = conn.recv(65536)
            if not chunk:
                raise EOFError("proxy closed the connection after %r" % buf)
            buf += chunk
        return buf

    def close(self):
        for c in self.conns:
            c.close()
        self.conns = []
        self.sock.close()


def first_conn(fake, w, key=b"warm"):
    """The proxy's connection to fake, opened by client w's get of key
    (answered as a miss): with TCP_NODELAY, so that what the test sends on
    it is not held back for the proxy's delayed ACK."""
    w.send(b"get %s\r\n" % key)
    conn = fake.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    FakeBackend.recv_until(conn, b"get %s\r\n" % key)
    conn.sendall(b"END\r\n")
    assert w.read_reply() == b"END\r\n"
    return conn


def client_on(port, fake, conn, request, answer=b"END\r\n", tries=64):
    """A new client (Wire) whose requests reach the FakeBackend on conn, the
    backend connection another client already uses: so the thread serving
    the new client is the one that opened conn (with -T N each thread has
    its own backend connections and the kernel picks a client's thread). A
    client whose `request` (sent here, read from conn when it arrives there)
    reaches the fake on another connection is answered `answer` and dropped
    for another. Returns (wire, n): n is how many backend connections of
    other threads it accepted (they stay open until fake.close())."""
    others = []
    for _ in range(tries):
        w = Wire(port)
        w.send(request)
        while True:
            ready, _, _ = select.select([conn, fake.sock] + others, [], [], 10.0)
            assert ready, "%r reached no backend connection" % request
            if conn in ready:
                FakeBackend.recv_until(conn, request)
                return w, len(others)
            if fake.sock in ready:
                others.append(fake.accept())
                continue
            FakeBackend.recv_until(ready[0], request)
            ready[0].sendall(answer)
            assert w.read_reply() == answer
            w.close()
            break
    raise AssertionError("%d clients in a row on other threads" % tries)


def admin_get(port, path, method="GET", timeout=10.0):
    """One request to the proxy's admin port: (status, headers, body text).

    headers: {lower-case name: value}."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def admin_json(port, path):
    """GET path on the admin port, expecting 200 and JSON: the decoded value."""
    import json
    status, headers, body = admin_get(port, path)
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("application/json"), headers
    return json.loads(body)


def run_cli(*args, check=False):
    """Run `ringproxy ARGS...`: the CompletedProcess (text stdout/stderr)."""
    return subprocess.run([RINGPROXY] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=60, check=check)


class TcpRelay:
    """A listener on 127.0.0.1 (a free port: .port, .addr) in front of a
    server: each connection accepted is paired with a new one to
    target_port and handed to attach(client, server), which subclasses
    define. A subclass sets its own state before calling __init__ (the
    accept thread starts in it). close() stops accepting."""

    def __init__(self, target_port):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self.attach(client, server)

    def attach(self, client, server):
        raise NotImplementedError

    def close(self):
        self.sock.close()
