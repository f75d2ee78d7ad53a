"""Names and IPv6 (docs/ARCHITECTURE.md, "Addresses and names").

Backends' names are resolved on the loop by evdns, asking the name servers of
RINGPROXY_RESOLV_CONF: here a small DNS responder on a UDP port of the test,
whose answers the test changes. memcached, Redis and the proxy's listener on
::1 show IPv6 end to end."""
import os
import socket
import struct
import subprocess
import threading

import pytest

from harness import (RINGPROXY, Memcached, Proxy, Redis, Wire, admin_get, free_port,
                     key_per_server, pool_yaml, proxy_stats, wait_until)


# --- a DNS responder --------------------------------------------------------

class Responder:
    """Answers A queries from `names` ({name: "a.b.c.d"}), AAAA with no
    record, NXDOMAIN for other names, and nothing at all for `silent` ones.
    Counts the queries per name."""

    def __init__(self):
        self.names, self.silent, self.queries = {}, set(), {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def _answer(self, q):
        if len(q) < 12:
            return None
        tid, _, qd = struct.unpack("!HHH", q[:6])
        pos, labels = 12, []
        while pos < len(q) and q[pos] != 0:
            n = q[pos]
            labels.append(q[pos + 1:pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        question = q[12:pos + 5]
        qtype = struct.unpack("!H", q[pos + 1:pos + 3])[0]
        name = ".".join(labels).lower()      # evdns randomizes the case
        self.queries[name] = self.queries.get(name, 0) + 1
        if name in self.silent:
            return None
        header = lambda rcode, an: struct.pack("!HHHHHH", tid, 0x8180 | rcode, qd,
                                               an, 0, 0)
        if name not in self.names:
            return header(3, 0) + question                # NXDOMAIN
        if qtype != 1:
            return header(0, 0) + question                # no AAAA record
        rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(self.names[name])
        return header(0, 1) + question + rr

    def resolv_conf(self, workdir):
        path = os.path.join(workdir, "resolv-%d.conf" % self.port)
        with open(path, "w") as f:
            f.write("nameserver 127.0.0.1:%d\noptions timeout:30 attempts:1\n" % self.port)
        return path

    def close(self):
        self.stopping = True
        self.sock.close()


@pytest.fixture
def dns(tmp_path, monkeypatch):
    r = Responder()
    monkeypatch.setenv("RINGPROXY_RESOLV_CONF", r.resolv_conf(str(tmp_path)))
    yield r
    r.close()


# --- servers on ::1 ---------------------------------------------------------

def free_port6():
    return free_port(socket.AF_INET6, "::1")


def wait_port6(port, proc):
    def listening():
        assert proc.poll() is None, "exited with %s" % proc.returncode
        try:
            with socket.create_connection(("::1", port), timeout=0.5):
                return True
        except OSError:
            return False
    wait_until(listening, what="a listener on [::1]:%d" % port)


class Memcached6(Memcached):
    def __init__(self, workdir):
        super().__init__(workdir, port=free_port6())

    def argv(self):
        argv = super().argv()
        argv[argv.index("-l") + 1] = "::1"
        return argv

    @property
    def addr(self):
        return "[::1]:%d" % self.port


class Redis6(Redis):
    def __init__(self, workdir):
        super().__init__(workdir, port=free_port6())

    def argv(self):
        argv = super().argv()
        argv[argv.index("--bind") + 1] = "::1"
        return argv


def start6(server):
    """Start a server that listens on ::1 only (harness waits on 127.0.0.1)."""
    server._log = open(server.log_path, "ab")
    server.proc = subprocess.Popen(server.argv(), stdout=server._log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_port6(server.port, server.proc)
    return server


class Wire6(Wire):
    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("::1", port), timeout=timeout)
        self.buf = b""


def redis6(port, *args):
    """One command to Redis on ::1 (RESP), its reply's raw bytes."""
    cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("::1", port), timeout=5) as s:
        s.sendall(cmd)
        return s.recv(65536)


def test_memcached_redis_and_listener_on_ipv6(cluster):
    mcs = [start6(Memcached6(cluster.workdir)) for _ in range(2)]
    red = start6(Redis6(cluster.workdir))
    cluster.started += mcs + [red]
    port = free_port6()
    text = pool_yaml("cache", port, [(m.addr, 1, None) for m in mcs],
                     index={"redis": "[::1]:%d" % red.port})
    # a plain YAML scalar cannot start with "[" (a flow list): quoted
    text = text.replace("listen: 127.0.0.1:%d" % port, 'listen: "[::1]:%d"' % port)
    for m in mcs:
        text = text.replace("- %s:1" % m.addr, '- "%s:1"' % m.addr)
    proxy = Proxy(cluster.workdir, text, port)
    cluster.started.append(proxy)
    start6(proxy)

    # the identities are libmemcached's: the bare address, then ":port"
    where = key_per_server(proxy.conf_path)
    assert sorted(where) == sorted("::1:%d" % m.port for m in mcs)

    def stored():
        with Wire6(port) as w:
            return w.call(b"set k1 0 0 2\r\nv1\r\n") == b"STORED\r\n"
    wait_until(stored, what="the pool to serve once Redis said which ring")
    with Wire6(port) as w:
        for ident, key in where.items():
            assert w.call(b"set %s 0 0 1\r\nx\r\n" % key.encode()) == b"STORED\r\n"
            assert w.call(b"get %s\r\n" % key.encode()) == \
                b"VALUE %s 0 1\r\nx\r\nEND\r\n" % key.encode()
    # each key reached the memcached its identity names, over IPv6
    for m in mcs:
        key = where["::1:%d" % m.port].encode()
        with Wire6(m.port) as w:
            assert w.call(b"get %s\r\n" % key) == b"VALUE %s 0 1\r\nx\r\nEND\r\n" % key
    # and the index writer reached Redis on ::1
    wait_until(lambda: b"*0\r\n" != redis6(red.port, b"KEYS", b"rp:cache:*"),
               what="index entries in Redis on ::1")
    proxy.stop()


def test_a_name_that_does_not_resolve_says_so(cluster, dns):
    good = cluster.memcached(1)[0]
    port, aport = free_port(), free_port()
    text = pool_yaml("cache", port, [(good.addr, 1, "good"),
                                     ("nothing.invalid:11211", 1, "bad")])
    proxy = cluster.proxy(text, port=port, admin_port=aport)
    where = key_per_server(proxy.conf_path)

    with Wire(port) as w:
        assert w.call(b"get %s\r\n" % where["bad"].encode()) == \
            b"SERVER_ERROR backend unavailable\r\n"
        # the other backend serves on
        assert w.call(b"set %s 0 0 1\r\nx\r\n" % where["good"].encode()) == b"STORED\r\n"
    assert dns.queries.get("nothing.invalid", 0) > 0
    why = "cannot resolve nothing.invalid: "
    wait_until(lambda: why in proxy.log(), what="the reason in the log")
    assert "No route to host" not in proxy.log()
    line = [l for l in proxy.log().splitlines() if why in l][0]
    reason = line.split(why, 1)[1]
    assert reason.startswith("no such name (NXDOMAIN)"), line
    code, _, body = admin_get(aport, "/healthz")
    assert code == 200
    assert "degraded: pool cache: server bad: cannot resolve nothing.invalid: " \
           "no such name (NXDOMAIN)" in body
    stats = proxy_stats(port)
    assert stats["backend:bad:error"].startswith("cannot resolve nothing.invalid: ")
    assert "backend:good:error" not in stats


def test_the_name_is_resolved_again_on_reconnect(cluster, dns):
    """mc.test moves from 127.0.0.1 to 127.0.0.2 (same port): once the old
    server is gone, the proxy's reconnect asks DNS again and follows."""
    port_mc = free_port()
    old = Memcached(cluster.workdir, port=port_mc)
    new = Memcached(cluster.workdir, port=port_mc)
    new.argv = lambda: [a if a != "127.0.0.1" else "127.0.0.2"
                        for a in Memcached.argv(new)]
    cluster.started += [old.start()]
    new._log = open(new.log_path + ".2", "ab")
    new.proc = subprocess.Popen(new.argv(), stdout=new._log, stderr=subprocess.STDOUT)
    cluster.started.append(new)

    def up(host):
        try:
            with socket.create_connection((host, port_mc), timeout=0.5):
                return True
        except OSError:
            return False
    wait_until(lambda: up("127.0.0.2"), what="memcached on 127.0.0.2")
    for host, val in (("127.0.0.1", b"old"), ("127.0.0.2", b"new")):
        with socket.create_connection((host, port_mc)) as s:
            s.sendall(b"set k 0 0 3\r\n%s\r\n" % val)
            assert s.recv(100) == b"STORED\r\n"

    dns.names["mc.test"] = "127.0.0.1"
    port = free_port()
    cluster.proxy(pool_yaml("cache", port, [("mc.test:%d" % port_mc, 1, "mc")]), port=port)
    with Wire(port) as w:
        assert w.call(b"get k\r\n") == b"VALUE k 0 3\r\nold\r\nEND\r\n"
    asked = dns.queries["mc.test"]

    dns.names["mc.test"] = "127.0.0.2"
    old.kill()

    def follows():
        with Wire(port) as w:
            return w.call(b"get k\r\n") == b"VALUE k 0 3\r\nnew\r\nEND\r\n"
    wait_until(follows, what="the proxy to follow mc.test to 127.0.0.2")
    assert dns.queries["mc.test"] > asked


def test_the_loop_serves_while_a_name_resolves(cluster, dns):
    """A name server that never answers: a command to that backend waits,
    a command to another backend answers meanwhile; the first then fails
    with the reason."""
    good = cluster.memcached(1)[0]
    dns.silent.add("slow.test")
    port = free_port()
    text = pool_yaml("cache", port, [(good.addr, 1, "good"), ("slow.test:11211", 1, "slow")],
                     timeout=3000)
    proxy = cluster.proxy(text, port=port)
    where = key_per_server(proxy.conf_path)

    with Wire(port) as stuck, Wire(port) as other:
        stuck.send(b"get %s\r\n" % where["slow"].encode())
        wait_until(lambda: dns.queries.get("slow.test", 0) > 0,
                   what="the proxy to ask for slow.test")
        assert other.call(b"set %s 0 0 1\r\nx\r\n" % where["good"].encode()) == b"STORED\r\n"
        assert other.call(b"get %s\r\n" % where["good"].encode()) == \
            b"VALUE %s 0 1\r\nx\r\nEND\r\n" % where["good"].encode()
        # the first command is still waiting for its name
        stuck.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            stuck.sock.recv(1)
        stuck.sock.settimeout(10)
        assert stuck.read_line() == b"SERVER_ERROR backend unavailable\r\n"
    wait_until(lambda: "cannot resolve slow.test: timed out" in proxy.log(),
               what="the timeout in the log")


def test_check_mode_does_no_dns_and_places_bad_addresses(cluster, dns):
    dns.silent.add("slow.test")
    path = os.path.join(cluster.workdir, "t.yml")
    with open(path, "w") as f:
        f.write("cache:\n  listen: 127.0.0.1:22121\n  servers:\n"
                "    - slow.test:11211:1\n    - \"[::1]:11212:1\"\n")
    res = subprocess.run([RINGPROXY, "-t", "-c", path], capture_output=True, timeout=30)
    assert res.returncode == 0, res
    assert dns.queries == {}
    with open(path, "w") as f:
        f.write("cache:\n  listen: 127.0.0.1:22121\n  servers:\n"
                "    - 127.0.0.1:11211:1\n    - ::1:11212:1\n")
    res = subprocess.run([RINGPROXY, "-t", "-c", path], capture_output=True, timeout=30)
    assert res.returncode != 0
    out = (res.stdout + res.stderr).decode()
    assert "%s:5:7: server '::1:11212:1': an IPv6 address must be in brackets" % path in out


def test_redis_and_listen_by_name_are_resolved_off_the_loop(cluster, dns):
    """The index's Redis and the listener by name: resolved when the proxy
    starts (hiredis would block the loop in getaddrinfo at every connect);
    a name that does not resolve stops the start with the reason."""
    mc = cluster.memcached(1)[0]
    red = cluster.redis()
    dns.names["redis.test"] = "127.0.0.1"
    dns.names["proxy.test"] = "127.0.0.1"
    port = free_port()
    text = pool_yaml("cache", port, [(mc.addr, 1, None)],
                     index={"redis": "redis.test:%d" % red.port})
    text = text.replace("listen: 127.0.0.1:", "listen: proxy.test:")
    proxy = cluster.proxy(text, port=port)
    assert dns.queries.get("redis.test", 0) > 0
    assert dns.queries.get("proxy.test", 0) > 0

    def stored():
        with Wire(port) as w:
            return w.call(b"set k1 0 0 2\r\nv1\r\n") == b"STORED\r\n"
    wait_until(stored, what="the pool to serve once Redis said which ring")
    proxy.stop()

    port = free_port()
    bad = Proxy(cluster.workdir, pool_yaml("cache", port, [(mc.addr, 1, None)],
                index={"redis": "redis.invalid:%d" % red.port}), port)
    res = subprocess.run(bad.argv(), capture_output=True, timeout=60)
    assert res.returncode == 1
    assert "index: Redis redis.invalid:%d: cannot resolve redis.invalid: no such " \
           "name (NXDOMAIN)" % red.port in (res.stdout + res.stderr).decode()


def test_a_resize_between_servers_known_by_name(cluster, dns):
    """The migration's connections (the meta connection, the closing pass's
    dump) reach servers by their names, resolved by evdns on the loop."""
    import signal
    mcs = cluster.memcached(3)
    red = cluster.redis()
    for i, m in enumerate(mcs):
        dns.names["mc%d.test" % i] = "127.0.0.1"
    port = free_port()

    def config(n):
        servers = [("mc%d.test:%d" % (i, m.port), 1, "mc%d" % i)
                   for i, m in enumerate(mcs[:n])]
        return pool_yaml("cache", port, servers, hash="md5",
                         index={"redis": "127.0.0.1:%d" % red.port})
    proxy = cluster.proxy(config(2), port=port)
    keys = [b"k%d" % i for i in range(2000)]

    def stored():
        with Wire(port) as w:
            return w.call(b"set k0 0 0 2\r\nv0\r\n") == b"STORED\r\n"
    wait_until(stored, what="the pool to serve")
    with Wire(port) as w:
        w.send(b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(k), k) for k in keys))
        for _ in keys:
            assert w.read_line() == b"STORED\r\n"
    wait_until(lambda: index_entries(red.port) >= len(keys),
               what="the index writes to land")

    proxy.write_config(config(3))
    proxy.signal(signal.SIGHUP)

    def migrated():
        st = proxy_stats(port)
        return st.get("migration:state") == "idle" and int(st.get("migration:epoch", 0)) >= 2
    wait_until(migrated, timeout=60, what="the resize to finish")
    st = proxy_stats(port)
    assert int(st["migration:keys_moved"]) > 0
    assert int(st["migration:keys_failed"]) == 0
    with Wire(port) as w:
        for k in keys:
            assert w.call(b"get %s\r\n" % k) == b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (
                k, len(k), k)
    assert "cannot resolve" not in proxy.log()


def index_entries(port):
    """Entries of the pool's index in Redis (ZCARD over its v-node sets)."""
    import redis
    r = redis.Redis(port=port)
    return sum(r.zcard(k) for k in r.scan_iter(match="rp:cache:v:*", count=1000))
