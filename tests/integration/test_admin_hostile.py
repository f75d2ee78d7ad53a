"""Hostile HTTP on the admin port: malformed requests get an error or a
closed connection, never a crash, and the pool's memcached clients and
/healthz are served meanwhile and after. Open admin connections are capped
(src/admin.c, ADMIN_MAX_CONNS): a flood costs the proxy no more descriptors."""
import os
import resource
import socket
import time

import pytest
from pymemcache.client.base import Client

from harness import admin_get, free_port, wait_until

ADMIN_MAX_CONNS = 64


@pytest.fixture(scope="module")
def proxy(module_cluster):
    mc = module_cluster.memcached(1)[0]
    port, aport = free_port(), free_port()
    text = ("cache:\n  listen: 127.0.0.1:%d\n  servers:\n    - %s:1 mc1\n"
            % (port, mc.addr))
    return module_cluster.proxy(text, port=port, admin_port=aport)


def still_serving(p):
    c = Client(("127.0.0.1", p.port), timeout=5)
    try:
        c.set("alive", b"yes", noreply=False)
        assert c.get("alive") == b"yes"
    finally:
        c.close()
    assert admin_get(p.admin_port, "/healthz")[0] == 200
    assert p.proc.poll() is None


def raw(p, data, timeout=5.0):
    """Send bytes to the admin port; what came back before it closed (or the
    timeout)."""
    s = socket.create_connection(("127.0.0.1", p.admin_port), timeout=timeout)
    got = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got and b"Content-Length: 0" not in got and \
                    len(got) > 2000:
                break
    except (socket.timeout, ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return got


def status_of(reply):
    if not reply.startswith(b"HTTP/1."):
        return None
    return int(reply.split(b" ", 2)[1])


MALFORMED = {
    "huge_header": b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n",
    "many_headers": b"GET /healthz HTTP/1.1\r\n" +
                    b"".join(b"X-%d: v\r\n" % i for i in range(5000)) + b"\r\n",
    "huge_request_line": b"GET /" + b"x" * 100000 + b" HTTP/1.1\r\n\r\n",
    "bad_method": b"FROB /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "lowercase_method": b"get /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_percent_path": b"GET /%zz%%%4 HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad_percent_query": b"GET /ring?points=%zz&%%%=1&=&&points HTTP/1.1\r\n\r\n",
    "nul_and_binary": b"GET /\x00\xff\xfe HTTP/1.1\r\n\x01\x02: \x03\r\n\r\n",
    "no_version": b"GET /healthz\r\n\r\n",
    "bad_version": b"GET /healthz HTTP/9.9\r\n\r\n",
    "garbage": bytes(range(256)) * 8,
    "huge_body": b"POST /healthz HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n" +
                 b"z" * 100000,
    "negative_length": b"POST /ring HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
    "bad_chunked": b"POST /ring HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"fffffffffffffffffff\r\nx\r\n",
    "absolute_uri": b"GET http://evil/healthz?points=1 HTTP/1.1\r\n\r\n",
    "connect": b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n",
    "pipelined_100": b"GET /ring?points=1 HTTP/1.1\r\nHost: x\r\n\r\n" * 100,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_is_refused_and_the_proxy_serves_on(proxy, name):
    reply = raw(proxy, MALFORMED[name])
    code = status_of(reply)
    # An answer is an HTTP status line or nothing (closed); a request the
    # admin does not serve never gets 200, except a well-formed GET.
    assert reply == b"" or code is not None, reply[:200]
    if name in ("bad_method", "lowercase_method", "huge_body", "connect",
                "huge_header", "many_headers", "huge_request_line"):
        assert code != 200, reply[:200]
    still_serving(proxy)


def healthz_ok(p):
    try:
        return admin_get(p.admin_port, "/healthz", timeout=1)[0] == 200
    except OSError:
        return False


def fds_of(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test_a_thousand_admin_connections_cost_at_most_the_cap(proxy):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    before = fds_of(proxy.proc.pid)
    socks = []
    try:
        for _ in range(1000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", proxy.admin_port))    # backlog may refuse
            socks.append(s)
        time.sleep(1.0)
        # held open and silent: the proxy holds at most the cap of them
        assert fds_of(proxy.proc.pid) <= before + ADMIN_MAX_CONNS + 2
        c = Client(("127.0.0.1", proxy.port), timeout=5)
        for i in range(100):
            c.set("k%d" % i, b"v", noreply=False)
            assert c.get("k%d" % i) == b"v"
        c.close()
        assert "64 admin connections open" in proxy.log()
    finally:
        for s in socks:
            s.close()
    # once they are gone, /healthz answers again at once (no 10 s timeout)
    wait_until(lambda: healthz_ok(proxy), timeout=5, what="/healthz after the flood")
    wait_until(lambda: fds_of(proxy.proc.pid) <= before + 2, timeout=5,
               what="the flood's descriptors to be closed")
    still_serving(proxy)
