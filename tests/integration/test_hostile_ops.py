"""Hostile peers and operators against the operations surface: the stats
port (src/nstats.c), names resolved by evdns (src/resolve.c), the status
page's JSON (src/status_page.c), sd_notify (src/notify.c) and a unix
listener's mode (src/proxy.c, listener_chmod).

Real memcached, Redis and proxies throughout; the peers that must misbehave
are played here: a DNS responder whose answers are garbage, truncated, for
another query or huge, and a notify socket that never reads. Every proxy's
log is checked for sanitizer reports when it stops (harness.Proxy.stop)."""
import json
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import threading

import pytest

from harness import (DEAD_PORT, Memcached, Proxy, Wire, admin_get, free_port, pool_yaml, rss_kb,
                     read_all, wait_port, wait_until)


def read_stats(port):
    return json.loads(read_all(port).decode("utf-8"))


def fds_of(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def cpu_seconds(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def serves(port):
    with Wire(port) as w:
        return w.call(b"version\r\n").startswith(b"VERSION ")


def limit_fds(pid, n):
    subprocess.run(["prlimit", "--pid", str(pid), "--nofile=%d:%d" % (n, n)], check=True)


def stats_proxy(cluster, text, port, **kw):
    p = cluster.proxy(text, port=port, stats_port=free_port(), **kw)
    wait_port(p.stats_port, proc=p.proc)
    return p


# --- the stats port ---------------------------------------------------------------


def test_stats_port_a_thousand_connections_that_never_read(cluster):
    """1,000 connections at once, none reading: the cap closes the excess,
    the client port serves throughout, and once they are gone no descriptor
    is left behind and the stats port answers again."""
    mc, = cluster.memcached(1)
    port = free_port()
    p = stats_proxy(cluster, pool_yaml("alpha", port, [(mc.addr, 1, "mc1")]), port)
    base_fds = fds_of(p.proc.pid)
    socks = []
    for _ in range(1000):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", p.stats_port))
        socks.append(s)
    assert serves(port)
    assert fds_of(p.proc.pid) <= base_fds + 64 + 8      # the cap, a few for the test
    for s in socks:
        s.close()
    wait_until(lambda: fds_of(p.proc.pid) <= base_fds, timeout=30,
               what="the stats connections to be closed")
    assert read_stats(p.stats_port)["service"] == "ringproxy"
    assert serves(port)


def test_stats_port_out_of_descriptors_pauses_instead_of_spinning(cluster):
    """With every descriptor taken, a stats connection waits in the backlog:
    the listener pauses (no busy loop on accept, no log flood) and answers
    once descriptors are free again. The same for the admin port."""
    mc, = cluster.memcached(1)
    port, aport = free_port(), free_port()
    p = stats_proxy(cluster, pool_yaml("alpha", port, [(mc.addr, 1, "mc1")]), port,
                    admin_port=aport)
    wait_port(aport, proc=p.proc)
    pid = p.proc.pid
    limit_fds(pid, fds_of(pid) + 8)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    wait_until(lambda: "accept failed" in p.log(), what="the client port to run out")
    stats_conn = socket.create_connection(("127.0.0.1", p.stats_port))
    admin_conn = socket.create_connection(("127.0.0.1", aport))
    admin_conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    log_before, cpu_before = len(p.log()), cpu_seconds(pid)
    # The proxy's own timer (the client port's accept pause doubles up to
    # 1 s) is the clock here: two pauses pass.
    wait_until(lambda: p.log().count("alpha: accept failed") >= 3, timeout=30,
               what="two more pauses of the client port")
    assert cpu_seconds(pid) - cpu_before < 1.0, "the loop spins on accept"
    assert len(p.log()) - log_before < 20000, p.log()[-2000:]
    for c in clients:
        c.close()
    stats_conn.settimeout(15)
    data = b""
    while True:
        chunk = stats_conn.recv(65536)
        if not chunk:
            break
        data += chunk
    stats_conn.close()
    assert json.loads(data)["service"] == "ringproxy"
    admin_conn.settimeout(15)
    assert admin_conn.recv(100).startswith(b"HTTP/1.")
    admin_conn.close()
    assert serves(port)


def test_stats_port_a_client_that_sends_megabytes_or_resets(cluster):
    mc, = cluster.memcached(1)
    port = free_port()
    p = stats_proxy(cluster, pool_yaml("alpha", port, [(mc.addr, 1, "mc1")]), port)
    # megabytes: what is read past the JSON is discarded, then the
    # connection is closed; the JSON came first
    with socket.create_connection(("127.0.0.1", p.stats_port), timeout=10) as s:
        data, sent = b"", 0
        s.setblocking(False)
        junk = b"x" * 65536
        closed = False
        while sent < (8 << 20) and not closed:
            try:
                sent += s.send(junk)
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            try:
                chunk = s.recv(65536)
                data += chunk
                closed = closed or chunk == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed = True
        assert closed, "8 MiB were read without the connection closing"
    if data:
        assert json.loads(data)["service"] == "ringproxy"
    # resets: a connection closed with SO_LINGER 0 at once, many times
    for _ in range(200):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.connect(("127.0.0.1", p.stats_port))
        s.close()
    # Until the proxy has seen those resets it may still count more than
    # NSTATS_MAX_CONNS of them and close a new connection at once (nstats.c);
    # then it answers again.
    wait_until(lambda: read_all(p.stats_port).startswith(b"{"),
               what="the stats port to answer after the resets")
    assert read_stats(p.stats_port)["service"] == "ringproxy"
    assert serves(port)


def test_stats_port_idle_readers_do_not_pin_a_json_each(cluster, rss_faithful):
    """4,000 servers with long escaped names make a JSON of megabytes; 64
    connections that never read must not hold 64 copies of it: the unsent
    bytes of all connections are budgeted (nstats.c, NSTATS_PENDING_MAX)."""
    mc, = cluster.memcached(1)
    port = free_port()
    text = "alpha:\n  listen: 127.0.0.1:%d\n  servers:\n    - %s:1 mc\n" % (port, mc.addr)
    for i in range(3999):
        text += '    - "127.0.0.1:%d:1 %04d%s"\n' % (DEAD_PORT + i, i, "\\x01" * 240)
    p = stats_proxy(cluster, text, port)
    size = len(read_all(p.stats_port))
    assert size > 5 << 20
    before = rss_kb(p.proc.pid)
    socks = []
    for _ in range(64):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", p.stats_port))
        socks.append(s)
    wait_until(lambda: "bytes unsent" in p.log(), what="the budget to refuse one")
    grown = rss_kb(p.proc.pid) - before
    assert grown < 100 * 1024, "64 idle readers hold %d MiB" % (grown >> 10)
    for s in socks:
        s.close()
    assert serves(port)
    wait_until(lambda: len(read_all(p.stats_port)) == size, timeout=30,
               what="the stats port to answer again")


def test_admin_idle_readers_do_not_pin_a_reply_each(cluster, rss_faithful):
    """The same against the admin port: 64 requests for /status.json (and
    /metrics) never read. Past the budget of unsent replies a request is
    answered 503; once the readers go, the routes answer again."""
    mc, = cluster.memcached(1)
    port, aport = free_port(), free_port()
    text = "alpha:\n  listen: 127.0.0.1:%d\n  servers:\n    - %s:1 mc\n" % (port, mc.addr)
    for i in range(3999):
        text += '    - "127.0.0.1:%d:1 %04d%s"\n' % (DEAD_PORT + i, i, "\\x01" * 240)
    p = cluster.proxy(text, port=port, admin_port=aport)
    wait_port(aport, proc=p.proc)
    code, _, body = admin_get(aport, "/status.json")
    assert code == 200 and len(body) > 5 << 20
    before = rss_kb(p.proc.pid)
    socks = []
    for i in range(60):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", aport))
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" %
                  (b"/metrics" if i % 2 else b"/status.json"))
        socks.append(s)
    wait_until(lambda: "answered 503" in p.log(), what="the budget to refuse one")
    assert admin_get(aport, "/status.json")[0] == 503
    grown = rss_kb(p.proc.pid) - before
    assert grown < 150 * 1024, "60 idle readers hold %d MiB" % (grown >> 10)
    for s in socks:
        s.close()
    wait_until(lambda: admin_get(aport, "/status.json")[0] == 200, timeout=30,
               what="/status.json to answer again")
    assert serves(port)


HOSTILE_NAMES = ['"quote"', "back\\slash", "ctl\x01\x1f\x7f", "tab\tnl\n",
                 "\u00e9t\u00e9 \u2603 \U0001F600", "</script><img src=x onerror=alert(1)>",
                 "x" * 200]
HOSTILE_SERVER_NAMES = ['s"1\\x', "mark<b>\x02", "</script>\t\u2603"]


def yaml_quote(text):
    """text as a YAML double-quoted scalar (what YAML cannot hold raw, escaped)."""
    out = ""
    for ch in text:
        if ch in '"\\':
            out += "\\" + ch
        elif ord(ch) < 0x20 or ord(ch) == 0x7f:
            out += "\\x%02x" % ord(ch)
        else:
            out += ch
    return '"%s"' % out


def hostile_config(port, mcs, workdir):
    """One pool per hostile name (the first on port, the others on unix
    sockets), each over mcs with the hostile server names."""
    text = ""
    for i, name in enumerate(HOSTILE_NAMES):
        listen = ("127.0.0.1:%d" % port if i == 0
                  else os.path.join(workdir, "p%d.sock" % i))
        text += "%s:\n  listen: %s\n  servers:\n" % (yaml_quote(name), listen)
        for mc, sname in zip(mcs, HOSTILE_SERVER_NAMES):
            text += "    - %s\n" % yaml_quote("%s:1 %s" % (mc.addr, sname))
    return text


def test_stats_and_status_json_stay_json_for_hostile_names(cluster):
    """Pool and server names with quotes, backslashes, control bytes, markup
    and non-ASCII: the stats JSON and /status.json parse, and name the
    pools and servers as configured."""
    mcs = cluster.memcached(3)
    port, aport = free_port(), free_port()
    p = stats_proxy(cluster, hostile_config(port, mcs, cluster.workdir), port,
                    admin_port=aport)
    wait_port(aport, proc=p.proc)
    st = read_stats(p.stats_port)
    assert set(HOSTILE_NAMES) <= set(st)
    for name in HOSTILE_NAMES:
        assert {k for k, v in st[name].items() if isinstance(v, dict)} == \
            set(HOSTILE_SERVER_NAMES)
    code, headers, body = admin_get(aport, "/status.json")
    assert code == 200
    sj = json.loads(body)
    assert headers["content-type"].startswith("application/json")
    blob = json.dumps(sj)
    for name in HOSTILE_NAMES + HOSTILE_SERVER_NAMES:
        assert json.dumps(name) in blob
    code, headers, page = admin_get(aport, "/")
    assert code == 200 and "onerror=alert" not in page
    assert "script-src" in headers.get("content-security-policy", "")


def test_stats_json_with_very_many_servers(cluster):
    """2,000 servers in one pool (none of them up): one valid JSON object."""
    mc, = cluster.memcached(1)
    port = free_port()
    servers = [(mc.addr, 1, "mc0")] + [("127.0.0.1:%d" % (DEAD_PORT + i), 1,
                                        "server-%04d-%s" % (i, "n" * 40))
                                       for i in range(2000)]
    p = stats_proxy(cluster, pool_yaml("alpha", port, servers), port)
    st = read_stats(p.stats_port)
    assert len([k for k, v in st["alpha"].items() if isinstance(v, dict)]) == 2001
    assert serves(port)


def test_status_json_and_stats_while_reloads_remove_pools(cluster):
    """Readers of /status.json, /metrics and the stats port in a loop while
    reloads add and remove a pool (with clients on it): every answer is
    whole JSON, and ASan sees no use after free (checked at stop)."""
    mc, = cluster.memcached(1)
    port, aport, port2 = free_port(), free_port(), free_port()
    one = pool_yaml("alpha", port, [(mc.addr, 1, "mc1")])
    two = one + pool_yaml("beta", port2, [(mc.addr, 1, "b1"), ("127.0.0.1:1", 1, "b2")])
    p = stats_proxy(cluster, two, port, admin_port=aport)
    wait_port(aport, proc=p.proc)
    stop, errors, counts = threading.Event(), [], {"json": 0, "stats": 0}

    def status_reader():
        while not stop.is_set():
            try:
                code, _, body = admin_get(aport, "/status.json")
                assert code == 200, code
                json.loads(body)
                admin_get(aport, "/metrics")
                counts["json"] += 1
            except Exception as e:      # noqa: BLE001 -- reported below
                errors.append(repr(e))
                return

    def stats_reader():
        while not stop.is_set():
            try:
                read_stats(p.stats_port)
                counts["stats"] += 1
            except Exception as e:      # noqa: BLE001
                errors.append(repr(e))
                return
    threads = [threading.Thread(target=status_reader, daemon=True),
               threading.Thread(target=stats_reader, daemon=True)]
    for t in threads:
        t.start()
    for i in range(10):
        clients = []
        if i % 2 == 0:
            clients = [Wire(port2) for _ in range(5)]
            for c in clients:
                c.send(b"get a b c d e f\r\n")
        reloads = p.log().count(" applied")
        p.write_config(one if i % 2 == 0 else two)
        p.signal(signal.SIGHUP)
        wait_until(lambda: p.log().count(" applied") > reloads, what="reload %d" % i)
        for c in clients:
            c.close()
    wait_until(lambda: counts["json"] > 10 and counts["stats"] > 10, timeout=30,
               what="readers to read")
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert serves(port)


# --- DNS from a hostile name server -------------------------------------------------

def dns_name(q):
    """(id, lower-case name, qtype, question bytes) of a query, or None."""
    if len(q) < 12:
        return None
    tid, = struct.unpack("!H", q[:2])
    pos, labels = 12, []
    while pos < len(q) and q[pos] != 0:
        n = q[pos]
        labels.append(q[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    if pos + 5 > len(q):
        return None
    qtype, = struct.unpack("!H", q[pos + 1:pos + 3])
    return tid, ".".join(labels).lower(), qtype, q[12:pos + 5]


def encode_name(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


def rr_a(ip, name_ptr=b"\xc0\x0c", ttl=0):
    return name_ptr + struct.pack("!HHIH", 1, 1, ttl, 4) + socket.inet_aton(ip)


def rr_aaaa(ip, ttl=0):
    return b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, ttl, 16) + \
        socket.inet_pton(socket.AF_INET6, ip)


def rr_cname(owner, target):
    t = encode_name(target)
    return encode_name(owner) + struct.pack("!HHIH", 5, 1, 0, len(t)) + t


class HostileDNS:
    """A UDP name server; `behave[name]` is a function (tid, qtype, question)
    -> list of datagrams to send back (none: silence). Unknown names get
    NXDOMAIN. Queries are counted per name."""

    def __init__(self):
        self.behave, self.queries = {}, {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            parsed = dns_name(data)
            if parsed is None:
                continue
            tid, name, qtype, question = parsed
            self.last_peer = peer
            self.queries[name] = self.queries.get(name, 0) + 1
            fn = self.behave.get(name)
            replies = ([header(tid, 3, 0) + question] if fn is None
                       else fn(tid, qtype, question))
            for r in replies:
                try:
                    self.sock.sendto(r, peer)
                except OSError:
                    pass

    def resolv_conf(self, workdir):
        path = os.path.join(workdir, "resolv-%d.conf" % self.port)
        with open(path, "w") as f:
            f.write("nameserver 127.0.0.1:%d\noptions timeout:2 attempts:1\n" % self.port)
        return path

    def close(self):
        self.sock.close()


def header(tid, rcode, an, flags=0x8180):
    return struct.pack("!HHHHHH", tid, flags | rcode, 1, an, 0, 0)


def answer_a(ip):
    def fn(tid, qtype, question):
        if qtype != 1:
            return [header(tid, 0, 0) + question]
        return [header(tid, 0, 1) + question + rr_a(ip)]
    return fn


@pytest.fixture
def hdns(tmp_path, monkeypatch):
    d = HostileDNS()
    monkeypatch.setenv("RINGPROXY_RESOLV_CONF", d.resolv_conf(str(tmp_path)))
    yield d
    d.close()


def by_name_proxy(cluster, mc, host, **settings):
    """A pool of two servers: mc by address ("good") and host at mc's port
    ("named"); keys for each."""
    port = free_port()
    text = pool_yaml("cache", port, [(mc.addr, 1, "good"),
                                     ("%s:%d" % (host, mc.port), 1, "named")], **settings)
    p = cluster.proxy(text, port=port)
    from harness import key_per_server
    return p, key_per_server(p.conf_path)


def named_get(port, keys):
    with Wire(port) as w:
        good = w.call(b"get %s\r\n" % keys["good"].encode())
        named = w.call(b"get %s\r\n" % keys["named"].encode())
    assert good == b"END\r\n", good
    return named


HOSTILE_ANSWERS = {
    # random bytes after the right id
    "garbage": lambda tid, qt, q: [struct.pack("!H", tid) + bytes(
        random.Random(tid).getrandbits(8) for _ in range(300))],
    # a header that promises an answer the packet does not hold
    "truncated": lambda tid, qt, q: [header(tid, 0, 1) + q + rr_a("127.0.0.1")[:7]],
    # the TC bit, with no answer
    "tcbit": lambda tid, qt, q: [header(tid, 0, 0, flags=0x8380) + q],
    # only answers for another id
    "otherid": lambda tid, qt, q: [header((tid + 1) & 0xffff, 0, 1) + q + rr_a("127.0.0.1")],
    # an answer whose record claims a length past the end
    "rdlength": lambda tid, qt, q: [header(tid, 0, 1) + q + b"\xc0\x0c" +
                                    struct.pack("!HHIH", 1, 1, 0, 60000) + b"\x7f\0\0\1"],
    # a compression pointer that loops on itself
    "ptrloop": lambda tid, qt, q: [header(tid, 0, 1) + q + b"\xc0\x0c"[:0] +
                                   struct.pack("!H", 0xc000 | (12 + len(q))) +
                                   struct.pack("!HHIH", 1, 1, 0, 4) + b"\x7f\0\0\1"],
    # SERVFAIL, REFUSED
    "servfail": lambda tid, qt, q: [header(tid, 2, 0) + q],
    "refused": lambda tid, qt, q: [header(tid, 5, 0) + q],
    # a CNAME to itself, no address
    "cnameloop": lambda tid, qt, q: [header(tid, 0, 1) + q + rr_cname("cnameloop.test",
                                                                      "cnameloop.test")],
    # a query, not an answer (QR bit clear)
    "notanswer": lambda tid, qt, q: [header(tid, 0, 0, flags=0x0100) + q],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_ANSWERS))
def test_a_hostile_name_server_fails_the_named_backend_only(cluster, hdns, kind):
    """Whatever the name server answers, the named backend's requests fail
    with SERVER_ERROR in bounded time and the other backend serves."""
    host = "%s.test" % kind
    hdns.behave[host] = HOSTILE_ANSWERS[kind]
    mc, = cluster.memcached(1)
    p, keys = by_name_proxy(cluster, mc, host, timeout=1500, server_retry_timeout=50)
    for _ in range(3):
        assert named_get(p.port, keys).startswith(b"SERVER_ERROR"), kind
    assert hdns.queries.get(host, 0) > 0
    assert serves(p.port)


def many_a(n):
    def fn(tid, qtype, question):
        if qtype != 1:
            return [header(tid, 0, 0) + question]
        rrs = b"".join(rr_a("127.0.0.%d" % (1 + i % 250)) for i in range(n))
        return [header(tid, 0, n & 0xffff) + question + rrs]
    return fn


def cname_chain(names, ip):
    """names[0] -> names[1] -> ... -> ip, all in one answer."""
    def fn(tid, qtype, question):
        if qtype != 1:
            return [header(tid, 0, 0) + question]
        rrs = b"".join(rr_cname(a, b) for a, b in zip(names, names[1:]))
        rrs += encode_name(names[-1]) + struct.pack("!HHIH", 1, 1, 0, 4) + \
            socket.inet_aton(ip)
        return [header(tid, 0, len(names)) + question + rrs]
    return fn


@pytest.mark.parametrize("answer", ["huge", "cname", "first_wrong_then_right"])
def test_odd_but_usable_answers(cluster, hdns, answer):
    """Answers that are odd but usable: 4,000 A records (past a UDP
    datagram's usual size), a CNAME chain, a datagram for another id before
    the right one. The named backend either serves or fails cleanly."""
    host = "%s.test" % answer.replace("_", "-")
    if answer == "huge":
        hdns.behave[host] = many_a(4000)
    elif answer == "cname":
        hdns.behave[host] = cname_chain([host] + ["c%d.test" % i for i in range(8)],
                                        "127.0.0.1")
    else:
        good = answer_a("127.0.0.1")
        hdns.behave[host] = lambda tid, qt, q: (
            HOSTILE_ANSWERS["otherid"](tid, qt, q) + HOSTILE_ANSWERS["garbage"](tid, qt, q)[:0]
            + good(tid, qt, q))
    mc, = cluster.memcached(1)
    p, keys = by_name_proxy(cluster, mc, host, timeout=3000)
    with Wire(mc.port) as w:
        assert w.call(b"set %s 0 0 2\r\nok\r\n" % keys["named"].encode()) == b"STORED\r\n"
    reply = named_get(p.port, keys)
    if answer == "huge":
        assert reply in (b"VALUE %s 0 2\r\nok\r\nEND\r\n" % keys["named"].encode(),
                         b"SERVER_ERROR backend unavailable\r\n"), reply
    else:
        assert reply == b"VALUE %s 0 2\r\nok\r\nEND\r\n" % keys["named"].encode(), reply
    assert serves(p.port)


def test_reconnect_loop_through_dns_keeps_memory_bounded(cluster, hdns, rss_faithful):
    """A name that resolves to a port nobody listens on: 2,000 rounds of
    resolve, connect, refused. The proxy's memory stays flat (no request
    leaks per round) and the good backend serves throughout."""
    host = "refused.test"
    hdns.behave[host] = answer_a("127.0.0.1")
    mc, = cluster.memcached(1)
    closed = free_port()
    port = free_port()
    text = pool_yaml("cache", port, [(mc.addr, 1, "good"),
                                     ("%s:%d" % (host, closed), 1, "named")],
                     timeout=2000, server_retry_timeout=1)
    p = cluster.proxy(text, port=port)
    from harness import key_per_server
    keys = key_per_server(p.conf_path)
    pid = p.proc.pid
    req = b"get %s\r\n" % keys["named"].encode()

    def rounds(w, n):
        """n rounds that each resolve and connect again (a request inside
        the 1 ms backoff fails without one and is not counted: on a fast
        machine more than 20 fit in it, so the bound is 200 per round)."""
        target = hdns.queries.get(host, 0) + n
        for _ in range(200 * n):
            assert w.call(req) == b"SERVER_ERROR backend unavailable\r\n"
            if hdns.queries.get(host, 0) >= target:
                return
        raise AssertionError("%d requests did not ask the name %d times" % (200 * n, n))
    with Wire(port) as w:
        rounds(w, 300)                     # warm up: caches, ASan's quarantine
        rss = rss_kb(pid)
        rounds(w, 2000)
        grown = rss_kb(pid) - rss
    assert grown < 2 * 1024, "RSS grew %d KiB over 2,000 reconnects" % grown
    assert serves(port)


def test_slow_answers_while_reconnecting(cluster, hdns):
    """A name server that answers only long after the request's deadline:
    requests for the named backend fail at their timeout, the loop serves
    the other backend meanwhile, and the late answers (to requests evdns
    gave up on) are ignored without harm."""
    host = "slow.test"
    late = []
    hdns.behave[host] = lambda tid, qt, q: late.append((tid, qt, q)) or []
    mc, = cluster.memcached(1)
    p, keys = by_name_proxy(cluster, mc, host, timeout=300, server_retry_timeout=1)
    for _ in range(20):
        assert named_get(p.port, keys) == b"SERVER_ERROR backend unavailable\r\n"
    assert len(late) >= 2
    for tid, qt, q in late:
        for r in answer_a("127.0.0.1")(tid, qt, q):
            hdns.sock.sendto(r, hdns.last_peer)
    # now the name answers at once: the backend serves
    hdns.behave[host] = answer_a("127.0.0.1")
    wait_until(lambda: named_get(p.port, keys) == b"END\r\n",
               what="the named backend to serve once the name answers")
    assert serves(p.port)


def test_a_name_that_flips_between_ipv4_and_ipv6(cluster, hdns):
    """flip.test answers A only, then AAAA only, then A again: each
    reconnect follows the family the name has now (memcached on 127.0.0.1
    and on ::1, same port, different values)."""
    from test_dns_ipv6 import Memcached6, start6
    m6 = start6(Memcached6(cluster.workdir))
    cluster.started.append(m6)
    m4 = Memcached(cluster.workdir, port=m6.port).start()
    cluster.started.append(m4)
    host, family = "flip.test", {"now": 4}

    def flip(tid, qtype, question):
        if family["now"] == 4 and qtype == 1:
            return [header(tid, 0, 1) + question + rr_a("127.0.0.1")]
        if family["now"] == 6 and qtype == 28:
            return [header(tid, 0, 1) + question + rr_aaaa("::1")]
        return [header(tid, 0, 0) + question]
    hdns.behave[host] = flip
    mc, = cluster.memcached(1)
    port = free_port()
    p = cluster.proxy(pool_yaml("cache", port, [(mc.addr, 1, "good"),
                                                ("%s:%d" % (host, m6.port), 1, "named")],
                                server_retry_timeout=1, timeout=2000), port=port)
    from harness import key_per_server
    key = key_per_server(p.conf_path)["named"].encode()
    for addr, fam, val in ((("127.0.0.1", m4.port), socket.AF_INET, b"v4"),
                           (("::1", m6.port), socket.AF_INET6, b"v6")):
        with socket.socket(fam) as s:
            s.connect(addr)
            s.sendall(b"set %s 0 0 2\r\n%s\r\n" % (key, val))
            assert s.recv(100) == b"STORED\r\n"

    def value():
        with Wire(port) as w:
            return w.call(b"get %s\r\n" % key)
    expect = {4: b"VALUE %s 0 2\r\nv4\r\nEND\r\n" % key,
              6: b"VALUE %s 0 2\r\nv6\r\nEND\r\n" % key}
    assert value() == expect[4]
    live = {4: m4, 6: m6}
    for fam in (6, 4, 6, 4):
        family["now"] = fam
        # the server the proxy is connected to goes; the reconnect asks again
        old = 4 if fam == 6 else 6
        live[old].kill()
        wait_until(lambda: value() == expect[fam], what="the proxy to follow to IPv%d" % fam)
        if old == 4:
            live[4] = Memcached(cluster.workdir, port=m6.port).start()
        else:
            live[6] = Memcached6(cluster.workdir)
            live[6]._moved_to(m6.port)
            start6(live[6])
        cluster.started.append(live[old])
        fam_of = {4: socket.AF_INET, 6: socket.AF_INET6}
        with socket.socket(fam_of[old]) as s:
            s.connect(("127.0.0.1" if old == 4 else "::1", m6.port))
            s.sendall(b"set %s 0 0 2\r\nv%d\r\n" % (key, old))
            assert s.recv(100) == b"STORED\r\n"
    assert serves(port)


@pytest.mark.parametrize("server", [
    "[:11211:1", "[::1:11211:1", "[::1]x:11211:1", "]::1[:11211:1", "[]:11211:1",
    "[127.0.0.1]:11211:1", "[::1%lo]:11211:1", "[fe80::1%eth0]:11211:1",
    "[[::1]]:11211:1", "[::1]:0:1", "[::1]:65536:1", "[::1]::1", "host[:11211:1",
    "a" * 300 + ":11211:1", "[" + "1:" * 200 + "]:11211:1",
])
def test_weird_bracketed_servers_are_refused_or_work(tmp_path, server):
    """Bracket forms that are not one IPv6 address are config errors with a
    line and column; none crashes the checker (-t) or the proxy's start."""
    from harness import run_cli
    conf = tmp_path / "w.yml"
    conf.write_text('alpha:\n  listen: 127.0.0.1:%d\n  servers:\n    - "%s"\n'
                    % (free_port(), server))
    res = run_cli("-t", "-c", conf)
    assert res.returncode in (0, 1), res
    from harness import SANITIZER_MARKS
    assert not any(m in res.stderr for m in SANITIZER_MARKS), res.stderr
    if res.returncode == 1:
        assert "w.yml:4:" in res.stderr, res.stderr


@pytest.mark.parametrize("content", ["junk", "directory", "devzero", "huge", "binary"])
def test_resolv_conf_that_is_not_one(cluster, tmp_path, monkeypatch, content):
    """RINGPROXY_RESOLV_CONF naming junk lines, a directory, /dev/zero, a
    huge file or binary bytes: the proxy refuses to start with the reason,
    or starts and serves (junk lines are skipped); it never hangs."""
    path = str(tmp_path / "resolv.conf")
    if content == "junk":
        with open(path, "w") as f:
            f.write("nameserver\nnameserver 999.1.1.1\nnameserver [::1\noptions "
                    "timeout:-5 attempts:999999999999 ndots:x\n" + "x" * 5000 + "\n"
                    "search " + " ".join("d%d.test" % i for i in range(500)) + "\n"
                    "nameserver 127.0.0.1:1\n")
    elif content == "directory":
        os.mkdir(path)
    elif content == "devzero":
        path = "/dev/zero"
    elif content == "huge":
        with open(path, "wb") as f:
            f.write(b"# comment\n" * (3 << 20))
    else:
        with open(path, "wb") as f:
            f.write(bytes(random.Random(7).getrandbits(8) for _ in range(65536)))
    monkeypatch.setenv("RINGPROXY_RESOLV_CONF", path)
    mc, = cluster.memcached(1)
    port = free_port()
    p = cluster.proxy(pool_yaml("cache", port, [(mc.addr, 1, "good"),
                                                ("name.test:%d" % mc.port, 1, "named")],
                                timeout=1000), port=port, start=False)
    p._log = open(p.log_path, "ab")
    p.proc = subprocess.Popen(p.argv(), stdout=p._log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)

    def started_or_exited():
        if p.proc.poll() is not None:
            return "exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return "serving"
        except OSError:
            return None
    outcome = wait_until(started_or_exited, timeout=30, what="start or exit")
    if outcome == "exited":
        assert p.proc.returncode == 1
        assert "resolv" in p.log() or path in p.log(), p.log()
        p.proc = None
        p._log.close()
    else:
        assert serves(port)


# --- sd_notify against a hostile service manager --------------------------------------

def notify_proxy(cluster, monkeypatch, address):
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    mc, = cluster.memcached(1)
    return cluster.pool([mc])


def reload_and_serve(p):
    applied = p.log().count(" applied")
    p.signal(signal.SIGHUP)
    wait_until(lambda: p.log().count(" applied") > applied, what="the reload")
    assert serves(p.port)


def test_notify_socket_path_longer_than_sun_path(cluster, tmp_path, monkeypatch):
    p = notify_proxy(cluster, monkeypatch, "/" + "n" * 200)
    assert "is not a unix socket path" in p.log()
    reload_and_serve(p)
    assert p.stop() == 0


def test_notify_socket_of_exactly_sun_path_less_one(cluster, tmp_path, monkeypatch):
    """A path of 107 bytes (sun_path holds 108 with its NUL) works."""
    d = tmp_path / "n"
    d.mkdir()
    path = str(d) + "/" + "s" * (107 - len(str(d)) - 1)
    assert len(path) == 107
    from test_service import NotifySocket
    n = NotifySocket(path)
    try:
        p = notify_proxy(cluster, monkeypatch, path)
        pid = p.proc.pid
        n.expect("READY", pid)
        assert p.stop() == 0
        n.expect("STOPPING", pid)
    finally:
        n.close()


def test_notify_socket_that_is_a_stream_socket(cluster, tmp_path, monkeypatch):
    path = str(tmp_path / "stream.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    try:
        p = notify_proxy(cluster, monkeypatch, path)
        assert "cannot connect to NOTIFY_SOCKET" in p.log()
        reload_and_serve(p)
        assert p.stop() == 0
    finally:
        s.close()


def test_notify_socket_that_never_reads(cluster, tmp_path, monkeypatch):
    """A manager whose socket buffer is full: notifications are lost (and
    said so once), the proxy never blocks: it serves, reloads and stops."""
    path = str(tmp_path / "full.sock")
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.bind(path)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.connect(path)
    filler.setblocking(False)
    try:
        while True:
            filler.send(b"X" * 4096)
    except BlockingIOError:
        pass
    try:
        p = notify_proxy(cluster, monkeypatch, path)
        wait_until(lambda: "could not tell the service manager" in p.log(),
                   what="the lost READY in the log")
        for _ in range(5):
            reload_and_serve(p)
        assert p.stop() == 0
        assert p.log().count("could not tell the service manager") == 1
    finally:
        filler.close()
        r.close()


def test_notify_socket_removed_while_running(cluster, tmp_path, monkeypatch):
    """The manager's socket goes away (and another takes its path): the
    proxy reloads, serves and stops as before."""
    from test_service import NotifySocket
    path = str(tmp_path / "gone.sock")
    n = NotifySocket(path)
    p = notify_proxy(cluster, monkeypatch, path)
    n.expect("READY", p.proc.pid)
    n.close()
    os.unlink(path)
    reload_and_serve(p)
    n2 = NotifySocket(path)
    try:
        reload_and_serve(p)
        assert p.stop() == 0
        n2.nothing_more()       # its datagrams went to the old socket: lost
    finally:
        n2.close()


@pytest.mark.parametrize("address", ["@", "@" + "a" * 107, "/", "/dev/null"])
def test_notify_socket_odd_addresses(cluster, monkeypatch, address):
    p = notify_proxy(cluster, monkeypatch, address)
    reload_and_serve(p)
    assert p.stop() == 0


# --- listen: /path mode ----------------------------------------------------------------

def unix_pool(path, mc, mode=""):
    return ("alpha:\n  listen: %s%s\n  servers:\n    - %s:1 mc1\n"
            % (path, " " + mode if mode else "", mc.addr))


def unix_proxy(cluster, text):
    """A proxy whose only pool listens on a unix path: started by hand, up
    once its admin port answers."""
    aport = free_port()
    p = cluster.proxy(text, port=free_port(), admin_port=aport, start=False)
    p._log = open(p.log_path, "ab")
    p.proc = subprocess.Popen(p.argv(), stdout=p._log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    wait_port(aport, proc=p.proc)
    return p


def unix_version(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"version\r\n")
        return s.recv(100)


def test_listen_path_that_is_a_symlink(cluster, tmp_path):
    """A symlink at the listen path is replaced by the socket; its target
    (a file the proxy must not touch) keeps its bytes and its mode."""
    mc, = cluster.memcached(1)
    target = tmp_path / "precious"
    target.write_text("keep me")
    os.chmod(target, 0o600)
    path = str(tmp_path / "rp.sock")
    os.symlink(target, path)
    p = unix_proxy(cluster, unix_pool(path, mc, "0666"))
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o666
    assert target.read_text() == "keep me"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert unix_version(path).startswith(b"VERSION ")
    assert p.stop() == 0


def test_listen_path_in_a_directory_that_does_not_exist(cluster, tmp_path):
    mc, = cluster.memcached(1)
    for path in (str(tmp_path / "nope" / "rp.sock"), "/proc/self/rp.sock"):
        p = Proxy(cluster.workdir, unix_pool(path, mc, "0666"), free_port())
        res = subprocess.run(p.argv(), capture_output=True, text=True, timeout=60)
        assert res.returncode == 1, res
        assert "cannot listen on %s" % path in res.stderr, res.stderr


def test_listen_path_longer_than_sun_path_is_a_config_error(tmp_path):
    """A unix socket path that sun_path cannot hold would be bound truncated
    (a socket at another path than the config says): refused with the
    line and column."""
    from harness import run_cli
    long_path = "/tmp/" + "d" * 120 + ".sock"
    conf = tmp_path / "long.yml"
    conf.write_text("alpha:\n  listen: %s 0666\n  servers:\n    - 127.0.0.1:11211:1\n"
                    % long_path)
    res = run_cli("-t", "-c", conf)
    assert res.returncode == 1, res
    assert "long.yml:2:" in res.stderr and "at most 107 bytes" in res.stderr, res.stderr
    conf.write_text("alpha:\n  listen: 127.0.0.1:1\n  servers:\n    - %s:1\n" % long_path)
    res = run_cli("-t", "-c", conf)
    assert res.returncode == 1, res
    assert "long.yml:4:" in res.stderr, res.stderr


def test_listen_mode_changed_by_reloads_while_clients_are_connected(cluster, tmp_path):
    """Reloads that change only the mode, with clients connected through
    the socket: the clients keep their connections, the mode follows."""
    mc, = cluster.memcached(1)
    path = str(tmp_path / "rp.sock")
    text = unix_pool(path, mc, "0600")
    p = unix_proxy(cluster, text)
    clients = []
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(path)
        clients.append(s)
    for mode in ("0666", "0000", "0640", "0600"):
        p.write_config(unix_pool(path, mc, mode))
        reload_and_serve_unix = p.log().count(" applied")
        p.signal(signal.SIGHUP)
        wait_until(lambda: p.log().count(" applied") > reload_and_serve_unix,
                   what="the reload to %s" % mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == int(mode, 8)
        for s in clients:
            s.sendall(b"version\r\n")
            assert s.recv(100).startswith(b"VERSION ")
    # dropping the mode leaves the socket as it is
    p.write_config(unix_pool(path, mc))
    applied = p.log().count(" applied")
    p.signal(signal.SIGHUP)
    wait_until(lambda: p.log().count(" applied") > applied, what="the reload without mode")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert unix_version(path).startswith(b"VERSION ")
    for s in clients:
        s.close()
    assert p.stop() == 0
    assert not os.path.exists(path)


def test_a_stopping_proxy_leaves_another_proxys_socket_alone(cluster, tmp_path):
    """Two proxies on one unix path, one after the other (a restart that
    overlaps): the first one's stop must not remove the socket the second
    one serves on."""
    mc, = cluster.memcached(1)
    path = str(tmp_path / "rp.sock")
    first = unix_proxy(cluster, unix_pool(path, mc, "0666"))
    second = unix_proxy(cluster, unix_pool(path, mc, "0666"))
    assert unix_version(path).startswith(b"VERSION ")
    assert first.stop() == 0
    assert os.path.exists(path), "the first proxy's stop removed the second's socket"
    assert unix_version(path).startswith(b"VERSION ")
    assert second.stop() == 0
    assert not os.path.exists(path)


def test_a_reload_that_hands_a_unix_path_to_another_pool(cluster, tmp_path):
    """One reload removes pool alpha from a unix path and gives the path to
    a new pool beta: beta's socket stays (alpha's removal must not unlink
    it) and serves."""
    mc, = cluster.memcached(1)
    path = str(tmp_path / "rp.sock")
    p = unix_proxy(cluster, unix_pool(path, mc, "0666"))
    p.write_config(unix_pool(path, mc, "0666").replace("alpha:", "beta:"))
    applied = p.log().count(" applied")
    p.signal(signal.SIGHUP)
    wait_until(lambda: p.log().count(" applied") > applied, what="the reload")
    assert os.path.exists(path), "the removed pool took the new pool's socket with it"
    assert unix_version(path).startswith(b"VERSION ")
    assert p.stop() == 0
    assert not os.path.exists(path)
