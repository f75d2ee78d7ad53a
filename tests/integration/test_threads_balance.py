"""How many threads serve (docs/ARCHITECTURE.md, "Threads: how many serve"):
`threads_active` (auto, all or a count; --threads-active overrides it). A
thread that does not serve hands its clients, and the connections its
listener accepts, to one that does; a client moves only once nothing it
sent is in flight, with the bytes it sent after them. The rule that picks
the count in `auto` is unit-tested (tests/unit/test_balance.c); these tests
check what it drives, on real memcached."""
import random
import signal
import socket
import threading
import time

import pytest

from harness import Wire, admin_get, free_port, pool_yaml, proxy_stats, stats_until, wait_until


def conf(port, mcs, active=None, **kw):
    text = pool_yaml("cache", port, [(m.addr, 1, "mc%d" % (i + 1))
                                     for i, m in enumerate(mcs)], **kw)
    return text + ("threads_active: %s\n" % active if active is not None else "")


def proxy_conns(mc):
    """Connections memcached has from others than this probe."""
    with Wire(mc.port) as w:
        return w.call(b"stats conns\r\n").count(b":listen_addr ") - 1


def set_active(proxy, port, mcs, active, serving=None):
    proxy.write_config(conf(port, mcs, active))
    proxy.signal(signal.SIGHUP)
    want = str(serving or active)
    stats_until(port, lambda st: st.get("threads:active") == want,
                what="threads:active %s" % want)


class Writer(threading.Thread):
    """One client, the only writer of its keys: pipelines batches of sets
    and gets of its own keys and checks every reply, in order, against what
    it wrote."""

    def __init__(self, port, n):
        super().__init__(daemon=True)
        self.port, self.n = port, n
        self.stop = threading.Event()
        self.model, self.errors, self.batches, self.commands = {}, [], 0, 0

    def run(self):
        rnd = random.Random(self.n)
        try:
            w = Wire(self.port)
            while not self.stop.is_set():
                out, want = [], []
                for _ in range(rnd.randint(1, 40)):
                    k = b"w%d-%d" % (self.n, rnd.randint(0, 30))
                    if rnd.random() < 0.5:
                        v = b"%d-%d" % (self.n, self.commands)
                        out.append(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v))
                        want.append(b"STORED\r\n")
                        self.model[k] = v
                    else:
                        out.append(b"get %s\r\n" % k)
                        v = self.model.get(k)
                        want.append(b"END\r\n" if v is None else
                                    b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(v), v))
                    self.commands += 1
                # Sent in pieces, so that a move finds half a command too.
                data = b"".join(out)
                cut = rnd.randint(0, len(data))
                w.send(data[:cut])
                w.send(data[cut:])
                for i, exp in enumerate(want):
                    got = w.read_reply()
                    if got != exp:
                        self.errors.append((i, exp, got))
                        return
                self.batches += 1
            w.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))


def start_writers(cluster, n):
    """A proxy on two threads, both serving, and n Writers through it."""
    mcs = cluster.memcached(2)
    port = free_port()
    proxy = cluster.proxy(conf(port, mcs, 2), port=port, extra=["-T", "2"])
    writers = [Writer(port, i) for i in range(n)]
    for w in writers:
        w.start()
    wait_until(lambda: all(w.batches > 0 for w in writers), what="every client served")
    return mcs, port, proxy, writers


def test_clients_moved_back_and_forth_lose_no_command_and_keep_their_order(cluster):
    mcs, port, proxy, writers = start_writers(cluster, 12)
    try:
        for i in range(10):
            set_active(proxy, port, mcs, 1 if i % 2 == 0 else 2)
            time.sleep(0.3)
    finally:
        for w in writers:
            w.stop.set()
        for w in writers:
            w.join(20)
    assert [w.errors for w in writers if w.errors] == []
    st = proxy_stats(port)
    # Every second reload moves every client of thread 1 (about half), the
    # others about half of thread 0's.
    assert int(st["threads:clients_moved"]) >= 12, st["threads:clients_moved"]
    assert st["threads:trials"] == "0"
    # No client was closed on the way (a dropped one fails its writer too).
    assert int(st["closed_bad_clients"]) + int(st["closed_slow_clients"]) == 0
    assert "handed over finds no such pool" not in proxy.log()


def test_one_serving_thread_holds_every_client_and_a_second_takes_half(cluster):
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = cluster.proxy(conf(port, mcs, 1, server_connections=1), port=port,
                          admin_port=free_port(), extra=["-T", "2"])
    wires = [Wire(port) for _ in range(16)]
    try:
        for i, w in enumerate(wires):
            assert w.call(b"get k%d\r\n" % i) == b"END\r\n"
        # Every client on the home thread: one connection to memcached.
        assert proxy_conns(mcs[0]) == 1
        st = proxy_stats(port)
        assert st["threads:active"] == "1"
        # The kernel spreads the connections over both listeners: those the
        # second thread accepted were handed over (16 on one listener has a
        # chance of 2**-15).
        assert int(st["threads:clients_moved"]) >= 1

        set_active(proxy, port, mcs, 2)
        # Each client, idle, moves at the second thread's next tick.
        wait_until(lambda: int(proxy_stats(port)["threads:clients_moved"]) >=
                   int(st["threads:clients_moved"]) + 7, what="half the clients moved")
        for i, w in enumerate(wires):
            assert w.call(b"get k%d\r\n" % i) == b"END\r\n"
        assert proxy_conns(mcs[0]) == 2

        # And back: the second thread's clients come home, at once.
        set_active(proxy, port, mcs, 1)
        for i, w in enumerate(wires):
            v = b"v%d" % i
            assert w.call(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(v), v)) == b"STORED\r\n"
            assert w.call(b"get k%d\r\n" % i) == b"VALUE k%d 0 %d\r\n%s\r\nEND\r\n" % (
                i, len(v), v)
        stats_until(port, lambda st: st["curr_connections"] == "17",   # and this one
                    what="every client still open")
        # /metrics says the same.
        status, _, body = admin_get(proxy.admin_port, "/metrics")
        assert status == 200
        assert "\nringproxy_threads 2\n" in body
        assert "\nringproxy_threads_active 1\n" in body
        moved = int(body.split("\nringproxy_thread_clients_moved_total ")[1].split()[0])
        assert moved >= int(st["threads:clients_moved"]) + 8
    finally:
        for w in wires:
            w.close()


def test_auto_keeps_a_light_load_on_one_thread(cluster):
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = cluster.proxy(conf(port, mcs, server_connections=1), port=port,
                          extra=["-T", "2", "--threads-active", "auto"])
    wires = [Wire(port) for _ in range(16)]
    try:
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            for i, w in enumerate(wires):
                assert w.call(b"get k%d\r\n" % i) == b"END\r\n"
            time.sleep(0.05)
        st = proxy_stats(port)
        assert (st["threads:active"], st["threads:trials"]) == ("1", "0")
        assert proxy_conns(mcs[0]) == 1
        assert "threads: 2 of 2 serve" not in proxy.log()
    finally:
        for w in wires:
            w.close()


def test_a_bad_threads_active_is_refused_and_a_reload_of_it_applies(cluster):
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = cluster.proxy(conf(port, mcs, 2), port=port, extra=["-T", "2"])
    proxy.write_config(conf(port, mcs, "most"))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "threads_active: expected auto, all or an integer from 1 to 64, "
               "got 'most'" in proxy.log(), what="the reload refused")
    assert proxy_stats(port)["threads:active"] == "2"
    set_active(proxy, port, mcs, 1)
    set_active(proxy, port, mcs, "all", serving=2)
    set_active(proxy, port, mcs, 1)
    proxy.write_config(conf(port, mcs, 5))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "threads_active: 5, but 2 threads run" in proxy.log(),
               what="the warning")
    assert proxy_stats(port)["threads:active"] == "2"


def test_sigterm_while_clients_move_ends_each_one_between_replies(cluster):
    mcs, port, proxy, writers = start_writers(cluster, 8)
    proxy.write_config(conf(port, mcs, 1))
    proxy.signal(signal.SIGHUP)
    time.sleep(0.05)
    proxy.signal(signal.SIGTERM)
    assert proxy.proc.wait(15) == 0
    for w in writers:
        w.stop.set()
        w.join(20)
    # A client ends with an end of stream between batches (EOFError from its
    # next read), never with a wrong or missing reply before it.
    for w in writers:
        assert all(isinstance(e, str) and "EOFError" in e or
                   isinstance(e, str) and "ConnectionResetError" in e
                   for e in w.errors), w.errors


def test_no_client_sees_too_many_connections_when_a_parked_thread_passes_it_at_sigterm(cluster):
    """A connection a parked thread accepted and passed to the home thread
    just before SIGTERM, taken there after the stop began, is served and
    closed once idle, not refused with 'ERROR Too many open connections'
    (client_take)."""
    mcs = cluster.memcached(1)
    bad = []
    for rnd in range(15):
        port = free_port()
        proxy = cluster.proxy(conf(port, mcs, 1), port=port, extra=["-T", "2"])
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                except OSError:
                    continue
                try:
                    s.sendall(b"get k\r\n")
                    buf = b""
                    while b"\r\n" not in buf:
                        c = s.recv(100)
                        if not c:
                            break
                        buf += c
                    if buf.startswith(b"ERROR"):
                        bad.append(buf)
                except OSError:
                    pass
                finally:
                    s.close()
        ths = [threading.Thread(target=hammer) for _ in range(6)]
        for t in ths:
            t.start()
        time.sleep(0.5)
        proxy.stop()
        stop.set()
        for t in ths:
            t.join()
        if bad:
            break
    assert bad == [], "round %d: %r" % (rnd, bad)


def test_threads_that_all_serve_do_not_reshuffle_evenly_spread_connections(cluster):
    """Serving threads are not reshuffled: a burst of connections the kernel
    spread over both listeners stays where it landed (worker_balance moves
    a serving thread's clients only when the serving count grows)."""
    mcs = cluster.memcached(1)
    port = free_port()
    cluster.proxy(conf(port, mcs, "all"), port=port, extra=["-T", "2"])
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(1000)]
    time.sleep(1.5)
    moved = int(proxy_stats(port)["threads:clients_moved"])
    for s in socks:
        s.close()
    # SO_REUSEPORT spreads 1000 connections about 500/500: a handful of
    # moves at most would even them out.
    assert moved < 100, moved


def test_clients_are_not_handed_to_a_thread_that_lacks_their_pool(cluster):
    """A worker whose reload failed ('this thread keeps the previous config':
    here EADDRINUSE when reuseport goes false -> true) does not serve the
    pool, so no client of it is handed to that thread (tstats_pool_servers)."""
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = cluster.proxy(conf(port, mcs, "all", reuseport=False), port=port,
                          extra=["-T", "2"])
    proxy.write_config(conf(port, mcs, "all"))
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: "keeps the previous config" in proxy.log(), what="the worker's refusal")
    wires = [Wire(port) for _ in range(16)]
    time.sleep(1.5)
    alive = 0
    for w in wires:
        try:
            alive += w.call(b"get k\r\n") == b"END\r\n"
        except (EOFError, OSError):
            pass
    assert alive == 16, (alive, proxy.log().count("finds no such pool"))


def test_a_moving_client_that_sends_a_too_large_value_is_still_read(cluster):
    """Marked moving while a get is in flight, a client then sends a value
    over item_size_max: it reads on while it swallows the value (a moving
    client pauses only between commands), then moves, and every reply
    comes."""
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = cluster.proxy(conf(port, mcs, 2, value_timeout=3000), port=port, extra=["-T", "2"])
    wires = [Wire(port, timeout=15) for _ in range(8)]
    for w in wires:
        assert w.call(b"get k\r\n") == b"END\r\n"
    mcs[0].proc.send_signal(signal.SIGSTOP)
    try:
        for w in wires:
            w.send(b"get k\r\n")
        time.sleep(0.1)
        proxy.write_config(conf(port, mcs, 1, value_timeout=3000))
        proxy.signal(signal.SIGHUP)
        time.sleep(0.5)
        big = 2 << 20
        for w in wires:
            w.send(b"set big 0 0 %d\r\n" % big + b"x" * 1000)
        time.sleep(0.2)
    finally:
        mcs[0].proc.send_signal(signal.SIGCONT)
    errors = []

    def finish(w):
        try:
            w.send(b"x" * (big - 1000) + b"\r\nget k\r\n")
            got = [w.read_reply() for _ in range(3)]
            if got != [b"END\r\n", b"SERVER_ERROR object too large for cache\r\n", b"END\r\n"]:
                errors.append(got)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    ths = [threading.Thread(target=finish, args=(w,)) for w in wires]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert errors == [], (errors, proxy_stats(port)["closed_stalled_clients"])


@pytest.mark.parametrize("nclients", [2, 3, 4])
def test_a_second_serving_thread_gets_its_share_of_a_few_clients(cluster, nclients):
    """A serving count that grows moves the clients past the new even share,
    rounded up, however few they are (one multiplexed connection per
    application server): 2, 3 or 4 clients all on the home thread, then two
    serving, and memcached sees a connection from each thread."""
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = cluster.proxy(conf(port, mcs, 1, server_connections=1), port=port,
                          extra=["-T", "2"])
    wires = [Wire(port) for _ in range(nclients)]
    try:
        for w in wires:
            assert w.call(b"get k\r\n") == b"END\r\n"
        assert proxy_conns(mcs[0]) == 1
        proxy.write_config(conf(port, mcs, 2, server_connections=1))
        proxy.signal(signal.SIGHUP)
        # No stats probe meanwhile: it would be a client too.
        wait_until(lambda: "2 of 2 threads serve now" in proxy.log(), what="the reload")
        time.sleep(0.3)
        for w in wires:
            assert w.call(b"get k\r\n") == b"END\r\n"
        assert proxy_conns(mcs[0]) == 2
    finally:
        for w in wires:
            w.close()


def test_a_third_serving_thread_gets_its_share_of_eight_clients(cluster):
    mcs = cluster.memcached(1)
    port = free_port()
    proxy = cluster.proxy(conf(port, mcs, 1, server_connections=1), port=port,
                          extra=["-T", "3"])
    wires = [Wire(port) for _ in range(8)]
    try:
        for w in wires:
            assert w.call(b"get k\r\n") == b"END\r\n"
        for active in (2, 3):
            proxy.write_config(conf(port, mcs, active, server_connections=1))
            proxy.signal(signal.SIGHUP)
            wait_until(lambda: "%d of 3 threads serve now" % active in proxy.log(),
                       what="the reload")
            time.sleep(0.3)
            for w in wires:
                assert w.call(b"get k\r\n") == b"END\r\n"
            assert proxy_conns(mcs[0]) == active
    finally:
        for w in wires:
            w.close()


def still_open(s):
    s.setblocking(False)
    try:
        return s.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


@pytest.mark.parametrize("what", ["client_timeout", "value_timeout"])
def test_timeouts_go_on_counting_across_moves(cluster, what):
    """A client idle (client_timeout) or stalled in the middle of a value
    (value_timeout) is closed on time even when it is handed from thread to
    thread more often than that: its last byte's time goes with it."""
    mcs = cluster.memcached(1)
    port = free_port()
    kw = {what: 2000}
    proxy = cluster.proxy(conf(port, mcs, 2, **kw), port=port, extra=["-T", "2"])
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
    try:
        for s in socks:
            if what == "value_timeout":
                s.sendall(b"set k 0 0 100000\r\n" + b"x" * 50000)   # stalls mid-value
        end = time.monotonic() + 6
        n = 0
        while time.monotonic() < end:
            proxy.write_config(conf(port, mcs, 1 if n % 2 == 0 else 2, **kw))
            proxy.signal(signal.SIGHUP)
            n += 1
            time.sleep(0.4)
        st = proxy_stats(port)
        assert int(st["threads:clients_moved"]) >= 16
        assert sum(still_open(s) for s in socks) == 0
        closed = "closed_idle_clients" if what == "client_timeout" else "closed_stalled_clients"
        assert st[closed] == "16"
    finally:
        for s in socks:
            s.close()
