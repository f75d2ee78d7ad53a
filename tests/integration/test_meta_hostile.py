"""The meta protocol against hostile peers (issue 12): clients that send
malformed, oversized, split or endless meta commands, and backends that
answer meta commands with garbage.

Client attacks are differential: the same bytes go to a direct memcached
and through the proxy over three backends (test_meta.py's runner: each
step then "version", CAS values and clock readings masked), and the
answers must be identical. What memcached cannot be compared on (a data
block that never ends, a pipeline never read) is checked against the
proxy's own limits: value_timeout, the client's memory budget.

Backend attacks use a FakeBackend next to a real memcached: the hostile
reply is a protocol error on that backend connection (the command answers
"connection lost"), counted in protocol_errors, and a key on the real
backend is served throughout.
"""
import base64
import socket
import time

import pytest

from harness import FakeBackend, Wire, key_per_server, proxy_stats, rss_kb, wait_until
from test_backend_replies import LOST, EmptyMemcached, backend_stat
from test_client_limits import closed
from test_meta import K250, K251, normalise, run_battery

MB = 1024


def cmd(line):
    return line + b"\r\n"


def ms(key, data, flags=b""):
    return (b"ms " + key + b" %d" % len(data) + (b" " + flags if flags else b"")
            + b"\r\n" + data + b"\r\n")


def b64(raw):
    return base64.b64encode(raw)


FLAGS16 = b"v f t c s k h l u O1 T0 N0 R1 E5 q x"     # 16 flags
OPQ = {n: b"O" + b"o" * (n - 1) for n in (31, 32, 33)}     # whole token n bytes

HOSTILE = [
    # -- ms lengths: memcached reads the length, or refuses the line
    ms(b"len0", b""), cmd(b"ms len -0") + b"\r\n", cmd(b"ms len +1") + b"x\r\n",
    cmd(b"ms len 1x") + b"x\r\n", cmd(b"ms len 0x1") + b"x\r\n",
    cmd(b"ms len abc"), cmd(b"ms len -5"), cmd(b"ms len -2147483648"),
    cmd(b"ms len 18446744073709551616"), cmd(b"ms len 1 1") + b"x\r\n",
    cmd(b"ms len 1") + b"xy\r\n", cmd(b"ms len 2") + b"x\r\n\r\n",
    cmd(b"ms len 3") + b"x\r\n\r\n", cmd(b"ms len 2147483646"),
    cmd(b"ms len 2147483647"), cmd(b"ms len 2147483648"), cmd(b"ms len 4294967297") + b"x\r\n",
    cmd(b"ms len 9223372036854775807"), cmd(b"ms len 9223372036854775808"),
    # -- base64 keys
    cmd(b"mg ==== b v"), cmd(b"mg = b"), cmd(b"mg A b"), cmd(b"mg AA== b"),
    ms(b64(b"a b\r\nc d"), b"sp", b"b"), cmd(b"mg " + b64(b"a b\r\nc d") + b" b v k"),
    cmd(b"md " + b64(b"a b\r\nc d") + b" b"),
    cmd(b"mg " + b64(b"a b\r\nc d") + b" b v k"),
    ms(b64(b"\x00\r\n get x\r\n"), b"nul", b"b k"),
    cmd(b"mg " + b64(b"\x00\r\n get x\r\n") + b" b v k"),
    cmd(b"ma " + b64(b"n n\r\n") + b" b N0 J7 v"),
    cmd(b"mg " + b64(b"x" * 187) + b" b v"),      # 250 bytes of base64
    cmd(b"mg " + b64(b"x" * 188) + b" b v"),      # 252
    cmd(b"mg " + b64(b"x" * 250) + b" b v"),
    cmd(b"mg " + b64(b"x" * 251) + b" b v"),
    cmd(b"mg !!!! b v"), cmd(b"mg Zm9v= b v"), cmd(b"mg Zm9v b b v"),
    # -- 250-byte keys with flags
    ms(K250, b"v250", b"T0 F5 c k O1"), cmd(b"mg " + K250 + b" " + FLAGS16),
    cmd(b"mg " + K250 + b" v f t c s k h l O1 q"), cmd(b"mg " + K251 + b" v"),
    cmd(b"md " + K250 + b" q") + cmd(b"mn"),
    # -- flag counts
    cmd(b"mg k16 " + b" ".join([b"v"] * 16)), cmd(b"mg k17 " + b" ".join([b"v"] * 17)),
    cmd(b"mg k " + b" ".join([b"O%d" % i for i in range(16)])),
    cmd(b"mg k " + b" ".join([b"k"] * 23)), cmd(b"mg k " + b" ".join([b"k"] * 24)),
    cmd(b"mg k " + b" ".join([b"k"] * 40)),
    # -- opaque tokens
    cmd(b"mg k " + OPQ[31]), cmd(b"mg k " + OPQ[32]), cmd(b"mg k " + OPQ[33]),
    cmd(b"mg k q " + OPQ[33]) + cmd(b"mn"), ms(b"o", b"x", OPQ[32]),
    ms(b"o", b"x", OPQ[33]), cmd(b"md o " + OPQ[33]),
    # -- mn
    cmd(b"mn"), cmd(b"mn") * 5, cmd(b"get a b c") + cmd(b"mn") + cmd(b"gets a"),
    ms(b"a", b"A", b"q") + cmd(b"get a o a") + cmd(b"mn") + cmd(b"mg a v q") +
    cmd(b"get nope a") + cmd(b"mn"),
    cmd(b"mg a q v") + cmd(b"get a") + cmd(b"mg nope q") + cmd(b"mn") + cmd(b"get a"),
    # -- me
    cmd(b"me"), cmd(b"me "), cmd(b"me a"), cmd(b"me a b"), cmd(b"me a v q k"),
    cmd(b"me nope"), cmd(b"me " + K250), cmd(b"me " + K251), cmd(b"me YQ== b"),
    cmd(b"me a\x00"), cmd(b"me  a  "),
    # -- NUL and control bytes in lines
    cmd(b"mg a\x00 v"), cmd(b"mg a v\x00"), cmd(b"mg \x00"), cmd(b"ms a\x00 1") + b"x\r\n",
    cmd(b"ms a 1\x00") + b"x\r\n", cmd(b"md a\x01"), cmd(b"mg a\rv"),
    cmd(b"mg a v\r"),
]


@pytest.fixture
def pair(cluster):
    """(direct memcached address, proxy address over three backends)."""
    direct, = cluster.memcached(1)
    proxy = cluster.pool(cluster.memcached(3), item_size_max="2m")
    yield ("127.0.0.1", direct.port), ("127.0.0.1", proxy.port)


def test_hostile_meta_lines_answer_as_memcached_does(pair):
    direct, proxy = pair
    want = run_battery(direct, HOSTILE)
    got = run_battery(proxy, HOSTILE)
    for i, (g, w) in enumerate(zip(got, want)):
        assert normalise(g) == normalise(w), (
            "step %d %r: %r != %r" % (i, HOSTILE[i][:120], g[:300], w[:300]))


@pytest.mark.parametrize("split", ["every_byte", "each_boundary"])
def test_meta_commands_split_anywhere_answer_as_memcached_does(pair, split):
    direct, proxy = pair
    data = (ms(b"sp", b"hello\r\nworld", b"T0 F3 k") + cmd(b"mg sp v f k O7") +
            cmd(b"mg sp q v") + cmd(b"ma spn N0 J3 v") + cmd(b"mn") +
            cmd(b"mg " + b64(b"sp") + b" b v k") + cmd(b"md sp q") + cmd(b"md spn q") +
            cmd(b"mn"))
    want = run_battery(direct, [data])[0]
    if split == "every_byte":
        with socket.create_connection(proxy, timeout=20) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for b in data:
                s.sendall(bytes([b]))
            s.sendall(b"version\r\n")
            got = b""
            while not got.endswith(b"\r\nVERSION 1.6.18 ringproxy-0.1.0\r\n"):
                chunk = s.recv(65536)
                assert chunk, got
                got += chunk
        assert normalise(got[:got.rindex(b"VERSION")]) == normalise(want)
        return
    with socket.create_connection(proxy, timeout=20) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(1, len(data)):
            # the second part only after the first was read off the socket:
            # answer the tail part by part with version as a fence
            s.sendall(data[:i])
            s.sendall(data[i:] + b"version\r\n")
            got = b""
            while not got.endswith(b"VERSION 1.6.18 ringproxy-0.1.0\r\n"):
                chunk = s.recv(65536)
                assert chunk, (i, got)
                got += chunk
            assert normalise(got[:got.rindex(b"VERSION")]) == normalise(want), i


def test_an_ms_past_item_size_max_is_refused_and_its_block_never_held(
        cluster, rss_faithful):
    """A 1,048,577-byte block answers as memcached does (after the block),
    and the 24 MB a client then streams into a 2,147,483,645-byte block
    (the largest length memcached reads) are swallowed as they arrive:
    the proxy's memory does not grow by what was sent."""
    direct, = cluster.memcached(1, item_max="1m")
    proxy = cluster.pool(cluster.memcached(3), item_size_max="1m")
    step = [ms(b"big", b"x" * 1048577, b"T0") + cmd(b"mg big v")]
    assert run_battery(("127.0.0.1", proxy.port), step) == (
        run_battery(("127.0.0.1", direct.port), step))
    with Wire(proxy.port) as w:
        w.send(b"ms big 2147483645 T0\r\n")
        assert w.read_line() == b"SERVER_ERROR object too large for cache\r\n"
        before = rss_kb(proxy.proc.pid)
        chunk = b"ms x 1\r\nx\r\n" * 10000
        for _ in range(200):
            w.send(chunk)
        grew = (rss_kb(proxy.proc.pid) - before) // MB
        assert grew < 16, grew
    with Wire(proxy.port) as w:
        assert w.call(b"mg x v\r\n") == b"EN\r\n"


def test_an_ms_whose_data_never_finishes_is_closed_at_value_timeout(cluster):
    proxy = cluster.pool(cluster.memcached(1), value_timeout=500)
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"ms slow 100 T0\r\n" + b"x" * 50)
        assert closed(s)
    wait_until(lambda: proxy_stats(proxy.port)["closed_value_timeout"] == "1"
               if "closed_value_timeout" in proxy_stats(proxy.port) else True)
    with Wire(proxy.port) as w:
        assert w.call(b"mg slow v\r\n") == b"EN\r\n"


def test_100k_quiet_meta_commands_never_read_stay_bounded(cluster, rss_faithful):
    """A client pipelines 100,000 quiet meta commands and reads nothing
    until it has sent them all: the proxy stops reading it at its queue
    limit (the kernel's buffers fill), its memory stays bounded, and every
    answer comes, in order, MN last."""
    proxy = cluster.pool(cluster.memcached(3), timeout=60000)
    pid = proxy.proc.pid
    base = rss_kb(pid)
    n = 100000
    parts = []
    for i in range(n):
        k = b"q%d" % ((i // 4) % 500)     # the mg reads what the ms wrote
        r = i % 4
        if r == 0:
            parts.append(ms(k, b"v%d" % i, b"q T0"))
        elif r == 1:
            parts.append(cmd(b"mg " + k + b" q v k O%d" % i))
        elif r == 2:
            parts.append(cmd(b"mg miss%d q v" % i))
        else:
            parts.append(cmd(b"md nope%d q" % i))
    data = b"".join(parts) + cmd(b"mn")
    import threading
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], rss_kb(pid))
            except Exception:
                return
            time.sleep(0.02)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    got = b""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=120) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sender = threading.Thread(target=s.sendall, args=(data,), daemon=True)
        sender.start()
        # Read nothing until the proxy has stopped reading (the sender is
        # blocked) or all is sent; then read everything.
        sender.join(5)
        while not got.endswith(b"MN\r\n"):
            chunk = s.recv(1 << 20)
            assert chunk, got[-200:]
            got += chunk
        sender.join(60)
    done.set()
    t.join(5)
    grew = (peak[0] - base) // MB
    print("100k quiet meta commands: rss +%d MB" % grew)
    assert grew < 64, grew
    lines = got.split(b"\r\n")
    opaques = [int(l.rsplit(b"O", 1)[1]) for l in lines if l.startswith(b"VA")
               or l.startswith(b"HD")]
    print("mg hits answered: %d of 25000; other lines: %r" % (len(opaques), sorted(set(l[:40] for l in lines if l and not l.startswith((b"VA", b"HD", b"v", b"MN"))))[:5]))
    # Every mg of a stored key hits: before the proxy's clock was monotonic
    # (src/clock.h), about 1 run in 5 timed requests out at once when
    # libevent's cached time stepped back, and thousands answered
    # SERVER_ERROR backend timeout / unavailable.
    assert len(opaques) == 25000 and opaques == sorted(opaques)
    assert b"SERVER_ERROR" not in got
    assert lines[-2] == b"MN" and got.count(b"MN\r\n") == 1


# --- hostile backends ------------------------------------------------------

@pytest.fixture
def fake_and_real(cluster):
    """A proxy over a FakeBackend (mc1) and a real memcached (mc2), item_size_max
    1k: (proxy, fake, a key of mc1, a key of mc2)."""
    fake = FakeBackend()
    real, = cluster.memcached(1)
    proxy = cluster.pool([fake, real], item_size_max="1k")
    keys = key_per_server(proxy.conf_path, "hb")
    yield proxy, fake, keys["mc1"].encode(), keys["mc2"].encode()
    fake.close()


BAD_REPLIES = {
    "mn_for_mg": b"MN\r\n",
    "text_reply": b"STORED\r\n",
    "text_value": b"VALUE k 0 1\r\nx\r\nEND\r\n",
    "va_longer_than_its_data": b"VA 10\r\nabc\r\nEN\r\nxyz",
    "va_without_crlf": b"VA 3\r\nabcXY",
    "va_past_item_size_max": b"VA 1025\r\n",
    "va_negative": b"VA -1\r\n",
    "va_not_a_number": b"VA x1\r\n",
    "hd_with_10k_of_flags": b"HD " + b" ".join([b"Oxxxxxxxx"] * 1000) + b"\r\n",
    "ne": b"NE\r\n",
    "ms_reply_to_mg": b"NS\r\n",
    "bare_lf_inside_a_line": b"EN\nHD\r\n",
    "line_past_4k_in_one_read": b"HD O" + b"x" * 5000 + b"\r\n",
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_a_garbage_meta_reply_fails_that_backend_connection_only(fake_and_real, case):
    proxy, fake, kfake, kreal = fake_and_real
    with Wire(proxy.port) as w, Wire(proxy.port) as other:
        assert other.call(b"ms " + kreal + b" 2 T0\r\nok\r\n") == b"HD\r\n"
        w.send(b"mg " + kfake + b" v\r\n")
        conn = fake.accept()
        assert FakeBackend.recv_until(conn, b"\r\n") == b"mg " + kfake + b" v\r\n"
        conn.sendall(BAD_REPLIES[case])
        assert w.read_line() == LOST
        wait_until(lambda: backend_stat(proxy, "mc1", "protocol_errors") == 1,
                   what="the protocol error counted")
        # the other backend, and this client, are undisturbed
        assert other.call(b"mg " + kreal + b" v\r\n") == b"VA 2\r\n"
        assert other.read_exact(4) == b"ok\r\n"
        assert w.call(b"mg " + kreal + b" s\r\n") == b"HD s2\r\n"
    assert backend_stat(proxy, "mc2", "protocol_errors") == 0


def test_an_unsolicited_mn_after_a_reply_fails_the_connection(fake_and_real):
    proxy, fake, kfake, _ = fake_and_real
    with Wire(proxy.port) as w:
        w.send(b"mg " + kfake + b" v\r\n")
        conn = fake.accept()
        FakeBackend.recv_until(conn, b"\r\n")
        conn.sendall(b"EN\r\nMN\r\n")
        assert w.read_line() == b"EN\r\n"
        wait_until(lambda: backend_stat(proxy, "mc1", "protocol_errors") == 1,
                   what="the protocol error counted")


def test_a_quiet_command_whose_fence_is_answered_twice_fails_the_connection(
        fake_and_real):
    """The proxy's fence MN is its own; a second one, or a reply after it,
    answers nothing that was asked."""
    proxy, fake, kfake, _ = fake_and_real
    with Wire(proxy.port) as w:
        w.send(b"mg " + kfake + b" q v\r\nmn\r\n")
        conn = fake.accept()
        assert FakeBackend.recv_until(conn, b"mn\r\n") == (
            b"mg " + kfake + b" q v\r\nmn\r\n")
        conn.sendall(b"MN\r\nMN\r\n")
        assert w.read_line() == b"MN\r\n"
        wait_until(lambda: backend_stat(proxy, "mc1", "protocol_errors") == 1,
                   what="the protocol error counted")


def test_two_answers_to_one_quiet_command_fail_the_connection(fake_and_real):
    proxy, fake, kfake, _ = fake_and_real
    with Wire(proxy.port) as w:
        w.send(b"mg " + kfake + b" q v\r\n")
        conn = fake.accept()
        FakeBackend.recv_until(conn, b"mn\r\n")
        conn.sendall(b"VA 1\r\nx\r\nVA 1\r\ny\r\nMN\r\n")
        wait_until(lambda: backend_stat(proxy, "mc1", "protocol_errors") == 1,
                   what="the protocol error counted")
        # the first answer stands or the command failed: one reply, never two
        w.send(b"mn\r\n")
        got = w.read_line()
        if got == b"VA 1\r\n":
            got += w.read_line() + w.read_line()
        assert got in (b"VA 1\r\nx\r\nMN\r\n", LOST), got


def test_an_mn_flood_never_read_pauses_its_sender(cluster):
    """mn is answered by the proxy itself: a client that sends millions and
    reads none is stopped being read at its memory budget, not buffered."""
    proxy = cluster.pool(cluster.memcached(1), client_max_memory="2m")
    base = rss_kb(proxy.proc.pid)
    sent = 0
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.settimeout(5)
        try:
            while sent < (80 << 20):
                s.sendall(b"mn\r\n" * 50000)
                sent += 200000
        except socket.timeout:
            pass
        assert sent < (80 << 20), "the proxy read 80 MB of mn nobody read answers to"
        assert (rss_kb(proxy.proc.pid) - base) // MB < 32
    with Wire(proxy.port) as w:
        assert w.call(b"mn\r\n") == b"MN\r\n"


def test_meta_replies_arriving_one_byte_at_a_time_are_delivered(fake_and_real):
    proxy, fake, kfake, _ = fake_and_real
    replies = [(b"mg %s v f k O9\r\n", b"VA 5 f3 k%s O9\r\nab\r\nc\r\n"),
               (b"mg %s q v\r\nmn\r\n", b"MN\r\n"),
               (b"mg %s q v\r\nmn\r\n", b"VA 1\r\nx\r\nMN\r\n"),
               (b"ms %s 1 T0\r\nz\r\n", b"HD\r\n"),
               (b"ma %s N0 v\r\n", b"VA 1\r\n0\r\n"),
               (b"md %s q\r\nmn\r\n", b"NF\r\nMN\r\n")]
    with Wire(proxy.port) as w:
        conn = None
        for request, reply in replies:
            request, reply = request.replace(b"%s", kfake), reply.replace(b"%s", kfake)
            w.send(request)
            if conn is None:
                conn = fake.accept()
            got = FakeBackend.recv_until(conn, b"\r\n")
            if b" q" in request:
                got += FakeBackend.recv_until(conn, b"mn\r\n") if not got.endswith(
                    b"mn\r\n") else b""
            elif request.startswith(b"ms"):
                got += FakeBackend.recv_until(conn, b"z\r\n") if not got.endswith(
                    b"z\r\n") else b""
            for b in reply:
                conn.sendall(bytes([b]))
            if request.endswith(b"mn\r\n"):
                want = reply             # the client's own mn follows
            else:
                want = reply
            w.send(b"version\r\n")
            out = b""
            while not out.endswith(b"VERSION 1.6.18 ringproxy-0.1.0\r\n"):
                out += w.read_line()
            assert out[:-len(b"VERSION 1.6.18 ringproxy-0.1.0\r\n")] == want, request
    assert backend_stat(proxy, "mc1", "protocol_errors") == 0


# --- during a resize -------------------------------------------------------

REFUSED = b"SERVER_ERROR ringproxy: meta command on a key moving in a resize\r\n"


def resize_steps(k, k2):
    """Hostile meta commands on two changing keys: (bytes, True if the
    step may be refused by docs/ARCHITECTURE.md's known limits)."""
    bk, bk2 = b64(k), b64(k2)
    flags15 = b"v s t k O8 u T0 R5 C1 F2 M3 J4 D5 P L"
    return [
        (cmd(b"mg " + bk + b" b v k " + OPQ[32]), False),
        (cmd(b"mg " + k + b" v " + OPQ[33]), False),
        (ms(bk, b"bv", b"b T0 k"), False), (cmd(b"mg " + k + b" v f"), False),
        (cmd(b"mg " + k + b" " + flags15), False),
        (cmd(b"mg " + k + b" " + flags15 + b" h"), True),
        (cmd(b"mg " + k + b" " + flags15 + b" h x"), False),
        (cmd(b"mg " + k + b"\x00 v"), False), (cmd(b"md " + k + b" \x00"), False),
        (cmd(b"ms " + k + b" 1") + b"xy\r\n", False), (cmd(b"mg " + k + b" v"), False),
        (cmd(b"ms " + k + b" 2097153 T0") + b"z" * 2097153 + b"\r\n", False),
        (cmd(b"mg " + k + b" v"), False),
        (ms(k, b"back", b"q T0") + cmd(b"get " + k + b" " + k2) + cmd(b"mg " + k2 + b" q v")
         + cmd(b"mn") + cmd(b"gets " + k2) + cmd(b"mg " + bk + b" b q v k") + cmd(b"mn"), False),
        (cmd(b"ma " + bk2 + b" b N0 J5 v"), False), (cmd(b"mg " + k2 + b" v"), False),
        (cmd(b"me " + bk + b" b"), True), (cmd(b"me " + k + b" x y"), True),
        (b"".join(ms(k if i % 2 else k2, b"p%d" % i, b"q T0") +
                  cmd(b"mg " + (k2 if i % 2 else k) + b" q v k O%d" % i)
                  for i in range(500)) + cmd(b"mn"), False),
        (cmd(b"md " + bk + b" b q") + cmd(b"mg " + k + b" v") + cmd(b"mn"), False),
    ]


@pytest.mark.parametrize("phase", ["prepared", "moving"])
def test_hostile_meta_commands_on_changing_keys_answer_as_one_server(cluster, phase):
    """While a 3->4 resize is held in a phase, the hostile commands on keys
    whose owner changes answer as one memcached does, or are refused where
    the known limits say so; nothing breaks the proxy's own connections."""
    import test_migration as tm
    env = tm.env.__wrapped__(cluster)
    mcs = env.servers(4)
    a = env.proxy(mcs[:3], rate=1)
    keys = ["k%d" % i for i in range(3000)]
    tm.fill(a.port, 3000)
    with open(a.conf_path + ".new", "w") as f:
        f.write(env.config(mcs, a.port))
    after = tm.locate(a.conf_path + ".new", keys)
    moving = [k.encode() for k in keys if after[k] == "mc4"][:4]
    assert len(moving) == 4
    direct, = cluster.memcached(1)
    for k in moving:
        run_battery(("127.0.0.1", direct.port), [ms(k, b"v-" + k, b"T0")])
    steps = resize_steps(moving[0], moving[1]) + resize_steps(moving[2], moving[3])
    wait_until(lambda: env.r.hlen("rp:cache:proxies") >= 1, what="a heartbeat")
    with tm.FakeProxy(env.r) as fake:
        tm.reload(a, env.config(mcs, a.port, rate=1))
        tm.wait_phase(a.port, "prepared")
        if phase == "moving":
            fake.ack = "switched"
            tm.wait_phase(a.port, "moving")
        got = run_battery(("127.0.0.1", a.port), [s for s, _ in steps])
        st = tm.proxy_stats(a.port)
        assert st["migration:phase"] == phase
        assert int(st["migration:client_commands"]) >= len(steps)   # by the rules
        fake.ack = "switched"
        tm.reload(a, env.config(mcs, a.port, rate=0))
        tm.wait_migrated(a.port, 2)
    want = run_battery(("127.0.0.1", direct.port), [s for s, _ in steps])
    for i, ((step, may_refuse), g, w) in enumerate(zip(steps, got, want)):
        if may_refuse and g == REFUSED:
            continue
        assert normalise(g) == normalise(w), (i, step[:100], g[:300], w[:300])
    final = [cmd(b"mg " + k + b" v f") for k in moving]
    assert run_battery(("127.0.0.1", a.port), final) == (
        run_battery(("127.0.0.1", direct.port), final))
    st = tm.proxy_stats(a.port)
    assert all(int(v) == 0 for n, v in st.items() if n.endswith("protocol_errors")), st


def test_me_of_a_key_holding_a_newline_is_refused_not_forwarded(cluster):
    """memcached 1.6.18 writes me's key raw for an item not stored by ms b:
    a b key decoding to "n\\n" would come back as two lines and break the
    backend connection other clients share. The proxy refuses that me and
    the other client's pipelined gets all answer."""
    proxy = cluster.pool(cluster.memcached(1))
    nl = base64.b64encode(b"n\n")
    with Wire(proxy.port) as a, Wire(proxy.port) as b:
        assert b.call(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
        assert a.call(b"ma " + nl + b" b N0 J7\r\n") == b"HD\r\n"
        b.send(b"get k\r\n" * 200)
        a.send(b"me " + nl + b" b\r\n")
        b.send(b"get k\r\n" * 200)
        assert a.read_line() == b"SERVER_ERROR ringproxy: me of a key holding CR or LF\r\n"
        got = [b.read_reply() for _ in range(400)]
        assert set(got) == {b"VALUE k 0 1\r\nv\r\nEND\r\n"}
        # the key itself is still served
        assert a.call(b"mg " + nl + b" b v\r\n") == b"VA 1\r\n"
        assert a.read_line() == b"7\r\n"
    assert proxy_stats(proxy.port).get("protocol_errors", "0") == "0"
