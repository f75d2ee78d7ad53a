"""Gets that share a line (src/backend.c, bconn_push_get; docs/ARCHITECTURE.md,
"Gets share a line") against real memcached, checked with a model.

Each client owns its keys, so what every one of its pipelined commands must
answer is known when it is sent, whatever the other clients do meanwhile;
all clients also read keys written once before they start. Their commands
reach the same backend connections in the same loop turns, so gets of
different clients share lines: an answer that is not exactly the one a line
of its own would get (another client's value, a miss for a hit, a reply out
of order) fails the test.
"""
import random
import re
import threading

import pytest

from harness import FakeBackend, Wire, first_conn, free_port, paused, pool_yaml, proxy_stats

SHARED = [b"shared-%d" % i for i in range(12)]


def shared_value(key):
    return b"v-" + key


class Model:
    """One client's keys and what memcached holds for them."""

    def __init__(self, cid, rnd):
        self.cid, self.rnd, self.n = cid, rnd, 0
        self.keys = [b"c%d-k%d" % (cid, i) for i in range(6)]
        self.held = {}

    def fresh(self, key):
        self.n += 1
        return b"%s=%d" % (key, self.n) + b"x" * self.rnd.choice([0, 1, 30, 3000, 3000, 60000])

    def command(self):
        """(bytes to send, what the reply must be: bytes, or a regex for gets)."""
        r = self.rnd
        k = r.choice(self.keys)
        s = r.choice(SHARED)
        op = r.choice(["get", "get", "get", "gets", "getshared", "getshared", "set",
                       "setq", "delete", "deleteq", "gat", "multi", "mg", "ms", "version"])
        if op == "get":
            return b"get %s\r\n" % k, self.hit(k)
        if op == "getshared":
            return b"get %s\r\n" % s, b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (
                s, len(shared_value(s)), shared_value(s))
        if op == "gets":
            v = self.held.get(k)
            if v is None:
                return b"gets %s\r\n" % k, b"END\r\n"
            return b"gets %s\r\n" % k, re.compile(
                re.escape(b"VALUE %s 0 %d " % (k, len(v))) + b"[0-9]+\r\n" +
                re.escape(v + b"\r\nEND\r\n"))
        if op in ("set", "setq"):
            v = self.fresh(k)
            self.held[k] = v
            if op == "setq":
                return b"set %s 0 0 %d noreply\r\n%s\r\n" % (k, len(v), v), b""
            return b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v), b"STORED\r\n"
        if op in ("delete", "deleteq"):
            had = self.held.pop(k, None) is not None
            if op == "deleteq":
                return b"delete %s noreply\r\n" % k, b""
            return b"delete %s\r\n" % k, b"DELETED\r\n" if had else b"NOT_FOUND\r\n"
        if op == "gat":
            return b"gat 0 %s\r\n" % k, self.hit(k)
        if op == "multi":
            ks = r.sample(self.keys, 3) + [s]
            want = b"".join(self.value(x) for x in ks[:3])
            want += b"VALUE %s 0 %d\r\n%s\r\n" % (s, len(shared_value(s)), shared_value(s))
            return b"get %s\r\n" % b" ".join(ks), want + b"END\r\n"
        if op == "mg":
            v = self.held.get(k)
            return b"mg %s v\r\n" % k, (b"VA %d\r\n%s\r\n" % (len(v), v)) if v else b"EN\r\n"
        if op == "ms":
            v = self.fresh(k)
            self.held[k] = v
            return b"ms %s %d\r\n%s\r\n" % (k, len(v), v), b"HD\r\n"
        return b"version\r\n", re.compile(b"VERSION [^\r\n]+\r\n")

    def value(self, k):
        v = self.held.get(k)
        return b"" if v is None else b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(v), v)

    def hit(self, k):
        return self.value(k) + b"END\r\n"


def read_reply(w, want):
    if isinstance(want, bytes):
        return w.read_exact(len(want)) if want else b""
    if want.pattern.startswith(b"VERSION"):
        return w.read_line()
    return w.read_reply()


def run_client(port, cid, seed, rounds, errors):
    rnd = random.Random(seed * 1000 + cid)
    m = Model(cid, rnd)
    try:
        with Wire(port) as w:
            for _ in range(rounds):
                batch = [m.command() for _ in range(rnd.choice([1, 1, 2, 5, 20]))]
                w.send(b"".join(c for c, _ in batch))
                for cmd, want in batch:
                    got = read_reply(w, want)
                    ok = got == want if isinstance(want, bytes) else want.fullmatch(got)
                    if not ok:
                        errors.append((cid, cmd[:80], want, got[:200]))
                        return
    except Exception as e:   # reported with the others
        errors.append((cid, "exception", repr(e), b""))


# -T 2: each thread has its own backend connections. One connection with
# the smallest queue: clients wait for it to drain (server_max_queue) with
# gets on an open line.
@pytest.mark.parametrize("threads, conns, queue", [("1", 2, "16m"), ("2", 1, "64k")])
def test_concurrent_clients_get_exactly_their_own_answers(cluster, threads, conns, queue):
    mcs = cluster.memcached(2)
    port = free_port()
    servers = [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]
    proxy = cluster.proxy(pool_yaml("cache", port, servers, server_connections=conns,
                                    server_max_queue=queue),
                          port=port, extra=["-T", threads])
    with Wire(proxy.port) as w:
        for k in SHARED:
            assert w.call(b"set %s 0 0 %d\r\n%s\r\n" % (
                k, len(shared_value(k)), shared_value(k))) == b"STORED\r\n"
    errors = []
    clients = [threading.Thread(target=run_client, args=(proxy.port, cid, 7, 150, errors))
               for cid in range(12)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    assert errors == []
    stats = proxy_stats(proxy.port)
    for name in ("mc1", "mc2"):
        assert stats["backend:%s:protocol_errors" % name] == "0"
        assert stats["backend:%s:errors" % name] == "0"


# ---- FakeBackend: scripted answers to shared lines -------------------------

TIMEOUT = b"SERVER_ERROR backend timeout\r\n"


def value(key, data):
    return b"VALUE %s 0 %d\r\n%s\r\n" % (key, len(data), data)


def lines_from(conn, n):
    buf = b""
    while buf.count(b"\r\n") < n:
        buf += FakeBackend.recv_until(conn, b"\r\n")
    return buf.split(b"\r\n")[:-1]


def test_a_backend_that_stops_mid_line_times_out_the_gets_not_answered(cluster):
    fake = FakeBackend()
    try:
        proxy = cluster.pool([fake], timeout=300)
        with Wire(proxy.port) as w:
            w.send(b"get a\r\nget b\r\nget c\r\n")
            conn = fake.accept()
            assert lines_from(conn, 1) == [b"get a b c"]
            # b's VALUE says a was a miss; then nothing more: b and c time
            # out, as they would on lines of their own answered so far.
            conn.sendall(value(b"b", b"2"))
            want = b"END\r\n" + value(b"b", b"2") + TIMEOUT + TIMEOUT
            assert w.read_exact(len(want)) == want
        assert proxy_stats(proxy.port)["backend:mc1:timeouts"] == "1"
    finally:
        fake.close()


def test_gets_of_a_client_that_closed_leave_the_line_to_the_others(cluster):
    fake = FakeBackend()
    try:
        proxy = cluster.pool([fake])
        if proxy.threads > 1:
            pytest.skip("the clients must share one thread's loop turn")
        with Wire(proxy.port) as w1:
            conn = first_conn(fake, w1)
            with Wire(proxy.port) as w2:
                assert w2.call(b"version\r\n").startswith(b"VERSION ")
                w3 = Wire(proxy.port)
                assert w3.call(b"version\r\n").startswith(b"VERSION ")
                # w1's socket last: the three below are then seen in order
                assert w1.call(b"version\r\n").startswith(b"VERSION ")
                # one turn: the gets of three clients share one line
                with paused(proxy):
                    w1.send(b"get a\r\n")
                    w3.send(b"get big\r\nget c\r\n")
                    w2.send(b"get b\r\n")
                assert lines_from(conn, 1) == [b"get a big c b"]
                w3.close()      # its gets are orphaned, answered to no one
                with Wire(proxy.port) as w4:    # answered after w3's close was read
                    assert w4.call(b"version\r\n").startswith(b"VERSION ")
                # split at every byte: a VALUE for an orphan may arrive in
                # pieces while the gets after it wait
                reply = (value(b"a", b"1") + value(b"big", b"x" * 5000) + value(b"c", b"3") +
                         value(b"b", b"2") + b"END\r\n")
                for i in range(len(reply)):
                    conn.send(reply[i:i + 1])
                assert w1.read_reply() == value(b"a", b"1") + b"END\r\n"
                assert w2.read_reply() == value(b"b", b"2") + b"END\r\n"
        assert proxy_stats(proxy.port)["backend:mc1:protocol_errors"] == "0"
    finally:
        fake.close()
