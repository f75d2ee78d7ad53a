"""What a backend may send, and what the proxy sends it (src/backend.c,
client_forward and client_multiget in src/client.c).

A reply is trusted no further than it is checked: a backend that announces
a huge value, answers what was not asked, or breaks the framing fails its
connection (every request on it answers "connection lost"), is counted in
the backend's protocol_errors stat, and is replaced by a new connection.
Hostile backends are FakeBackends (harness) answered by hand.

Backends only ever see lines the proxy builds itself, under memcached's
2048-byte line limit: a client's spacing or a long gat must not make
memcached close a connection every client of that backend shares.
"""
import re
import socket
import threading
import time

import pytest

from harness import (FakeBackend, Wire, admin_get, client_on, first_conn, free_port, paused,
                     key_per_server, pool_yaml, proxy_stats, rss_kb, stat_becomes, wait_until)

LOST = b"SERVER_ERROR backend connection lost\r\n"
LINE_MAX = 2048


def value(key, data, flags=0):
    return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data)


def backend_stat(proxy, name, counter):
    return int(proxy_stats(proxy.port)["backend:%s:%s" % (name, counter)])


class EmptyMemcached:
    """Serves a FakeBackend's next connections in a thread, as an empty
    memcached would: every get line answers END, the rest ERROR. Used to
    see that the proxy replaced a connection it failed."""

    def __init__(self, fake):
        self.fake, self.stopped = fake, False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.fake.sock.settimeout(0.1)
        while not self.stopped:
            try:
                conn, _ = self.fake.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.fake.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn):
        buf = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    conn.sendall(b"END\r\n" if line.startswith((b"get ", b"gets "))
                                 else b"ERROR\r\n")
        except OSError:
            return

    def stop(self):
        self.stopped = True
        self.thread.join()


@pytest.fixture
def fake_pool(cluster):
    """A proxy whose one server is a FakeBackend: (proxy, fake)."""
    fake = FakeBackend()
    proxy = cluster.pool([fake])
    yield proxy, fake
    fake.close()


def stat_becomes_be(proxy, counter, want):
    stat_becomes(proxy.port, "backend:mc1:%s" % counter, want)


def assert_replaced(proxy, fake, w, others=0):
    """The failed connection was counted and a new one serves requests.
    others: backend connections other threads opened (client_on)."""
    stat_becomes_be(proxy, "protocol_errors", 1)
    server = EmptyMemcached(fake)
    try:
        # The backend backs off 100 ms after a failure: requests meanwhile
        # fail fast, then a new connection answers them.
        wait_until(lambda: w.call(b"get other\r\n") == b"END\r\n",
                   what="a new backend connection")
    finally:
        server.stop()
    stat_becomes_be(proxy, "connects", 2 + others)
    assert backend_stat(proxy, "mc1", "protocol_errors") == 1
    assert len(re.findall(r"protocol error", proxy.log())) == 1, proxy.log()[-3000:]


# ---- replies bounded -------------------------------------------------------

def test_a_huge_value_length_fails_the_connection_without_buffering(fake_pool):
    proxy, fake = fake_pool
    with Wire(proxy.port) as w:
        w.send(b"get k\r\n")
        conn = fake.accept()
        FakeBackend.recv_until(conn, b"get k\r\n")
        rss_before = rss_kb(proxy.proc.pid)
        conn.sendall(b"VALUE k 0 9000000000\r\n")
        # Stream what the VALUE announced, until the proxy hangs up.
        chunk, sent = b"x" * (1 << 20), 0
        try:
            while sent < (512 << 20):
                conn.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        assert w.read_reply() == LOST
        rss_after = rss_kb(proxy.proc.pid)
        assert sent < (512 << 20), "the proxy kept reading a 9 GB value"
        assert rss_after - rss_before < 50 * 1024, (rss_before, rss_after)
        assert_replaced(proxy, fake, w)
    assert "VALUE longer than item_size_max" in proxy.log()


@pytest.mark.parametrize("length", [b"1025", b"18446744073709551615",
                                    b"99999999999999999999999"])
def test_a_value_length_past_item_size_max_or_64_bits_is_a_protocol_error(cluster, length):
    fake = FakeBackend()
    try:
        proxy = cluster.pool([fake], item_size_max=1024)
        with Wire(proxy.port) as w:
            w.send(b"get k\r\n")
            conn = fake.accept()
            FakeBackend.recv_until(conn, b"get k\r\n")
            conn.sendall(b"VALUE k 0 %s\r\n" % length)
            assert w.read_reply() == LOST
            assert_replaced(proxy, fake, w)
    finally:
        fake.close()


def test_a_value_of_item_size_max_bytes_is_delivered(cluster):
    fake = FakeBackend()
    try:
        proxy = cluster.pool([fake], item_size_max=1024)
        with Wire(proxy.port) as w:
            w.send(b"get k\r\n")
            conn = fake.accept()
            FakeBackend.recv_until(conn, b"get k\r\n")
            conn.sendall(value(b"k", b"v" * 1024) + b"END\r\n")
            assert w.read_reply() == value(b"k", b"v" * 1024) + b"END\r\n"
        assert backend_stat(proxy, "mc1", "protocol_errors") == 0
    finally:
        fake.close()


# ---- replies checked -------------------------------------------------------

# (what the client sends, what the proxy sends the backend, the bad reply,
#  what of it is good and reaches the client before the failure)
UNASKED = {
    "get answered STORED": (b"get k\r\n", b"get k\r\n", b"STORED\r\n", b""),
    "get answered VALUE of another key": (
        b"get k\r\n", b"get k\r\n", value(b"other", b"x") + b"END\r\n", b""),
    "data without its CRLF": (
        b"get k\r\n", b"get k\r\n", b"VALUE k 0 1\r\nxyEND\r\n", b""),
    "get answered with a CAS": (
        b"get k\r\n", b"get k\r\n", b"VALUE k 0 1 7\r\nx\r\nEND\r\n", b""),
    "gets answered without a CAS": (
        b"gets k\r\n", b"gets k\r\n", value(b"k", b"x") + b"END\r\n", b""),
    "set answered END": (b"set k 0 0 1\r\nx\r\n", b"set k 0 0 1\r\nx\r\n", b"END\r\n", b""),
    "delete answered STORED": (b"delete k\r\n", b"delete k\r\n", b"STORED\r\n", b""),
    "incr answered DELETED": (b"incr k 1\r\n", b"incr k 1\r\n", b"DELETED\r\n", b""),
    "touch answered a number": (b"touch k 0\r\n", b"touch k 0\r\n", b"5\r\n", b""),
    "flush_all answered END": (b"flush_all\r\n", b"flush_all\r\n", b"END\r\n", b""),
    "garbage": (b"get k\r\n", b"get k\r\n", b"HELLO\r\n", b""),
    # A one-backend get streams its values as they come: a value that was
    # good goes out, and the error ends the reply in place of END.
    "get answered two VALUEs": (
        b"get k\r\n", b"get k\r\n", value(b"k", b"1") + value(b"k", b"2") + b"END\r\n",
        value(b"k", b"1")),
    "multi-get answered out of order": (
        b"get a b\r\n", b"get a b\r\n",
        value(b"b", b"2") + value(b"a", b"1") + b"END\r\n", value(b"b", b"2")),
}


def read_until(w, last):
    """Everything the proxy sends up to and including the line `last`."""
    out = b""
    while not out.endswith(last):
        out += w.read_line()
    return out


@pytest.mark.parametrize("case", sorted(UNASKED))
def test_a_reply_that_does_not_answer_the_request_fails_the_connection(fake_pool, case):
    proxy, fake = fake_pool
    request, sent, reply, good = UNASKED[case]
    with Wire(proxy.port) as w:
        w.send(request)
        conn = fake.accept()
        FakeBackend.recv_until(conn, sent)
        # Another client behind it on the same connection (so on w's thread).
        other, others = client_on(proxy.port, fake, conn, b"get queued\r\n")
        with other:
            conn.sendall(reply)
            # Nothing of the bad reply reaches the client; every request on
            # the connection fails as lost.
            assert read_until(w, LOST) == good + LOST
            assert other.read_reply() == LOST
            assert_replaced(proxy, fake, w, others)
    # the two lost; requests in the backoff after it failed fast, uncounted
    stat_becomes_be(proxy, "errors", 2)


def test_a_multi_backend_get_with_a_bad_share_fails_whole(cluster):
    fake = FakeBackend()
    real = cluster.memcached(1)[0]
    try:
        proxy = cluster.pool([fake, real])
        keys = {name: k.encode() for name, k in key_per_server(proxy.conf_path).items()}
        on_fake, on_real = keys["mc1"], keys["mc2"]
        with Wire(proxy.port) as w:
            assert w.call(b"set %s 0 0 1\r\nr\r\n" % on_real) == b"STORED\r\n"
            w.send(b"get %s %s\r\n" % (on_real, on_fake))
            conn = fake.accept()
            FakeBackend.recv_until(conn, b"get %s\r\n" % on_fake)
            conn.sendall(value(b"not-" + on_fake, b"x") + b"END\r\n")
            assert w.read_reply() == LOST
        stat_becomes_be(proxy, "protocol_errors", 1)
        assert backend_stat(proxy, "mc2", "protocol_errors") == 0
    finally:
        fake.close()


def test_a_reply_nobody_asked_for_fails_the_connection(fake_pool):
    proxy, fake = fake_pool
    with Wire(proxy.port) as w:
        w.send(b"get k\r\n")
        conn = fake.accept()
        FakeBackend.recv_until(conn, b"get k\r\n")
        conn.sendall(b"END\r\nEND\r\n")
        assert w.read_reply() == b"END\r\n"
        wait_until(lambda: backend_stat(proxy, "mc1", "protocol_errors") == 1,
                   what="the unasked END to be counted")
        assert "reply without a request" in proxy.log()


def test_errors_from_the_backend_are_passed_on_and_keep_the_connection(fake_pool):
    proxy, fake = fake_pool
    with Wire(proxy.port) as w:
        w.send(b"get k\r\nset k 0 0 1\r\nx\r\nincr k 1\r\n")
        conn = fake.accept()
        FakeBackend.recv_until(conn, b"incr k 1\r\n")
        conn.sendall(b"SERVER_ERROR out of memory writing get response\r\n"
                     b"CLIENT_ERROR bad data chunk\r\nERROR\r\n")
        assert w.read_reply() == b"SERVER_ERROR out of memory writing get response\r\n"
        assert w.read_reply() == b"CLIENT_ERROR bad data chunk\r\n"
        assert w.read_reply() == b"ERROR\r\n"
        w.send(b"get k\r\n")
        FakeBackend.recv_until(conn, b"get k\r\n")
        conn.sendall(value(b"k", b"v") + b"END\r\n")
        assert w.read_reply() == value(b"k", b"v") + b"END\r\n"
    stat_becomes_be(proxy, "connects", 1)
    assert backend_stat(proxy, "mc1", "protocol_errors") == 0


def test_protocol_errors_show_in_metrics(cluster):
    fake = FakeBackend()
    try:
        port = free_port()
        proxy = cluster.proxy(pool_yaml("cache", port, [(fake.addr, 1, "mc1")]),
                              port=port, admin_port=free_port())
        with Wire(proxy.port) as w:
            w.send(b"get k\r\n")
            conn = fake.accept()
            FakeBackend.recv_until(conn, b"get k\r\n")
            conn.sendall(b"STORED\r\n")
            assert w.read_reply() == LOST

        def counted():
            status, _, body = admin_get(proxy.admin_port, "/metrics")
            assert status == 200
            lines = [l for l in body.splitlines()
                     if l.startswith("ringproxy_backend_protocol_errors")]
            assert lines, body
            return lines[0].endswith(" 1")
        # Another thread's count shows as of its last loop turn.
        wait_until(counted, what="the protocol error in /metrics")
    finally:
        fake.close()


# ---- lines rebuilt ---------------------------------------------------------

def backend_lines(conn, n_end):
    """Read from a fake backend connection until n_end lines were read."""
    buf = FakeBackend.recv_until(conn, b"\r\n")
    while buf.count(b"\r\n") < n_end:
        buf += FakeBackend.recv_until(conn, b"\r\n")
    return buf.split(b"\r\n")[:-1]


def test_long_key_lists_reach_a_backend_in_lines_under_2048_bytes(fake_pool):
    proxy, fake = fake_pool
    keys = [b"key-%03d-" % i + b"x" * 190 for i in range(45)]     # ~9 KB
    with Wire(proxy.port) as w:
        w.send(b"gat 0 " + b" ".join(keys) + b"\r\n")
        conn = fake.accept()
        lines = []
        while sum(len(l.split()) - 2 for l in lines) < len(keys):
            lines += backend_lines(conn, 1)
        assert len(lines) == 5
        for line in lines:
            assert len(line) + 2 <= LINE_MAX
            assert line.startswith(b"gat 0 ") and b"  " not in line
        assert [k for l in lines for k in l.split()[2:]] == keys
        # Each line is answered by its own END; hits from several lines
        # come back in the client's order.
        for line in lines:
            asked = line.split()[2:]
            conn.sendall(b"".join(value(k, k[:7]) for k in asked[::2]) + b"END\r\n")
        expected = b"".join(value(k, k[:7]) for l in lines for k in l.split()[2:][::2])
        assert w.read_reply() == expected + b"END\r\n"


def test_client_spacing_never_reaches_a_backend(fake_pool):
    proxy, fake = fake_pool
    with Wire(proxy.port) as w:
        w.send(b" " * 200 + b"get   a  b\r\n" + b"   set  k 0 0 1  \r\nx\r\n"
               + b"delete k 0 noreply\r\n" + b"touch  k  10\r\n")
        conn = fake.accept()
        got = FakeBackend.recv_until(conn, b"touch k 10\r\n")
        assert got == (b"get a b\r\n" b"set k 0 0 1\r\nx\r\n" b"delete k\r\n"
                       b"touch k 10\r\n")
        conn.sendall(value(b"b", b"2") + b"END\r\nSTORED\r\nDELETED\r\nNOT_FOUND\r\n")
        assert w.read_reply() == value(b"b", b"2") + b"END\r\n"
        assert w.read_reply() == b"STORED\r\n"
        assert w.read_reply() == b"NOT_FOUND\r\n"     # the delete was noreply


@pytest.mark.parametrize("nservers", [1, 3])
def test_long_gat_and_spaced_get_leave_shared_connections_alone(cluster, nservers):
    mcs = cluster.memcached(nservers)
    proxy = cluster.pool(mcs)
    keys = [b"long-%03d-" % i + b"y" * 190 for i in range(45)]      # ~9 KB
    with Wire(proxy.port) as w, Wire(proxy.port) as other:
        for k in keys[::3]:
            assert w.call(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(k), k)) == b"STORED\r\n"
        hits = b"".join(value(k, k) for k in keys[::3]) + b"END\r\n"
        for _ in range(20):
            # Another client's requests share the backend connections.
            other.send(b"get %s\r\n" % keys[0] * 50)
            w.send(b"gat 0 " + b" ".join(keys) + b"\r\n")
            w.send(b" " * 200 + b"get " + b"  ".join(keys) + b"\r\n")
            assert w.read_reply() == hits
            assert w.read_reply() == hits
            for _ in range(50):
                assert other.read_reply() == value(keys[0], keys[0]) + b"END\r\n"
    stats = proxy_stats(proxy.port)
    for i in range(nservers):
        name = "mc%d" % (i + 1)
        # At most one connection per thread (w and other may be on two).
        assert int(stats["backend:%s:connects" % name]) <= proxy.threads, stats
        assert stats["backend:%s:errors" % name] == "0"
        assert stats["backend:%s:protocol_errors" % name] == "0"
    assert stats["server_errors"] == "0"



# ---- gets share a line -----------------------------------------------------
# Single-key gets written to one backend connection in one loop turn share a
# line ("get a b c"), answered by one END (backend.c, bconn_push_get;
# docs/ARCHITECTURE.md, "Gets share a line"). A client's pipelined commands
# are read and routed in one turn, so one send makes the lines.

def test_gets_of_one_turn_share_a_line_and_each_gets_its_own_answer(fake_pool):
    proxy, fake = fake_pool
    with Wire(proxy.port) as w:
        w.send(b"get a\r\nget b\r\nget c\r\ngets d\r\nget a\r\nget e\r\n"
               b"set x 0 0 1\r\nv\r\nget f\r\ngat 0 g\r\nget h\r\n")
        conn = fake.accept()
        # gets and get never share a line, nor does a key twice; any other
        # command ends the line.
        assert backend_lines(conn, 8) == [
            b"get a b c", b"gets d", b"get a e", b"set x 0 0 1", b"v", b"get f",
            b"gat 0 g", b"get h"]
        reply = (value(b"a", b"1") + value(b"c", b"3") + b"END\r\n" +
                 b"VALUE d 0 1 77\r\n4\r\nEND\r\n" +
                 value(b"e", b"5") + b"END\r\n" +
                 b"STORED\r\n" + b"END\r\n" + value(b"g", b"7") + b"END\r\n" +
                 value(b"h", b"8") + b"END\r\n")
        # In small pieces: a VALUE line may arrive before its data, after
        # the fragments before it were already ended as misses.
        for i in range(0, len(reply), 7):
            conn.sendall(reply[i:i + 7])
            time.sleep(0.001)
        assert [w.read_reply() for _ in range(10)] == [
            value(b"a", b"1") + b"END\r\n", b"END\r\n", value(b"c", b"3") + b"END\r\n",
            b"VALUE d 0 1 77\r\n4\r\nEND\r\n", b"END\r\n",
            value(b"e", b"5") + b"END\r\n", b"STORED\r\n", b"END\r\n",
            value(b"g", b"7") + b"END\r\n", value(b"h", b"8") + b"END\r\n"]
    assert backend_stat(proxy, "mc1", "protocol_errors") == 0


def test_an_error_on_a_shared_line_answers_each_of_its_gets(fake_pool):
    proxy, fake = fake_pool
    error = b"SERVER_ERROR out of memory writing get response\r\n"
    with Wire(proxy.port) as w:
        w.send(b"get a\r\nget b\r\nget c\r\n")
        conn = fake.accept()
        assert backend_lines(conn, 1) == [b"get a b c"]
        # a's value came before the error: its client gets both, as a
        # client of memcached would
        conn.sendall(value(b"a", b"1") + error)
        want = value(b"a", b"1") + error * 3
        assert w.read_exact(len(want)) == want
        w.send(b"get k\r\n")
        assert backend_lines(conn, 1) == [b"get k"]
        conn.sendall(value(b"k", b"v") + b"END\r\n")
        assert w.read_reply() == value(b"k", b"v") + b"END\r\n"
    stat_becomes_be(proxy, "connects", 1)
    assert backend_stat(proxy, "mc1", "protocol_errors") == 0


def test_a_shared_line_answered_out_of_order_fails_the_connection(fake_pool):
    proxy, fake = fake_pool
    with Wire(proxy.port) as w:
        w.send(b"get a\r\nget b\r\n")
        conn = fake.accept()
        assert backend_lines(conn, 1) == [b"get a b"]
        # b before a: a was a miss, so a VALUE for it after is not a reply
        conn.sendall(value(b"b", b"2") + value(b"a", b"1") + b"END\r\n")
        assert w.read_reply() == b"END\r\n"
        want = value(b"b", b"2") + LOST
        assert w.read_exact(len(want)) == want
        assert_replaced(proxy, fake, w)


def test_shared_lines_stay_under_2048_bytes_and_64_keys(fake_pool):
    proxy, fake = fake_pool
    long_keys = [b"long-%03d-" % i + b"x" * 190 for i in range(30)]
    short_keys = [b"s%03d" % i for i in range(150)]
    with Wire(proxy.port) as w:
        w.send(b"".join(b"get %s\r\n" % k for k in long_keys + short_keys))
        conn = fake.accept()
        lines = []
        while sum(len(l.split()) - 1 for l in lines) < len(long_keys + short_keys):
            lines += backend_lines(conn, 1)
        for line in lines:
            assert line.startswith(b"get ") and b"  " not in line
            assert len(line) + 2 <= LINE_MAX and len(line.split()) - 1 <= 64
        assert [k for l in lines for k in l.split()[1:]] == long_keys + short_keys
        assert len(lines) == 3 + 1 + 2      # 9+9+9+3 long (the 4th line takes
                                            # 3 long and 61 short), 64, 25
        for line in lines:
            conn.sendall(b"".join(value(k, k[-3:]) for k in line.split()[1:][::3]) +
                         b"END\r\n")
        for i, k in enumerate(long_keys + short_keys):
            line = [l for l in lines if k in l.split()[1:]][0]
            hit = line.split()[1:].index(k) % 3 == 0
            assert w.read_reply() == (value(k, k[-3:]) if hit else b"") + b"END\r\n", k


def test_a_reply_to_an_open_line_before_it_was_sent_fails_only_the_connection(fake_pool):
    proxy, fake = fake_pool
    if proxy.threads > 1:
        pytest.skip("the clients must share one thread's loop turn")
    with Wire(proxy.port) as w1:
        conn = first_conn(fake, w1)
        with Wire(proxy.port) as w2:
            w2.send(b"get warm2\r\n")
            assert backend_lines(conn, 1) == [b"get warm2"]
            conn.sendall(b"END\r\n")
            assert w2.read_reply() == b"END\r\n"
            # Answered by the proxy: w1's socket, not the backend's, is the
            # last the loop saw ready, so the three below come in order.
            assert w1.call(b"version\r\n").startswith(b"VERSION ")
            # In one turn: w1's get opens a line, an END the backend sent
            # before it was asked anything ends that get, then w2's get comes.
            with paused(proxy):
                w1.send(b"get a\r\n")
                conn.sendall(b"END\r\n")
                w2.send(b"get b\r\n")
            assert w1.read_reply() == b"END\r\n"
            lines = backend_lines(conn, 2)
            assert lines == [b"get a", b"get b"]
            conn.sendall(b"END\r\nEND\r\n")
            assert w2.read_reply() == b"END\r\n"
            assert_replaced(proxy, fake, w1)


@pytest.mark.parametrize("reply, first", [
    (value(b"zzz", b"1"), b""),                             # a key not on the line
    (value(b"a", b"1") + value(b"a", b"1"), value(b"a", b"1")),  # a key answered twice
])
def test_a_value_no_get_of_a_shared_line_asked_fails_them_all(fake_pool, reply, first):
    proxy, fake = fake_pool
    with Wire(proxy.port) as w:
        w.send(b"get a\r\nget b\r\nget c\r\n")
        conn = fake.accept()
        assert backend_lines(conn, 1) == [b"get a b c"]
        # As on lines of their own: the VALUE answers none of the gets not
        # yet answered, so none of them was a miss; the connection fails
        # before any is ended (a's value, delivered first, stays).
        conn.sendall(reply + b"END\r\n")
        want = first + LOST * 3
        assert w.read_exact(len(want)) == want
        assert_replaced(proxy, fake, w)
