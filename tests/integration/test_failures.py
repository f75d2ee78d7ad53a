"""Backend failures: what clients are told, and how the proxy recovers.

Dead servers are real memcached processes killed with SIGKILL and started
again on the same port. Servers that hang or die mid-request are
FakeBackends (harness): listening sockets the test answers by hand, so
"the request reached the server and then..." is a fact, not a race.
Waiting is done by polling for a state (wait_until), never by sleeping for
a guessed time.
"""
import math
import socket
import struct
import time

from harness import (FakeBackend, Wire, client_on, free_port, key_per_server, locate,
                     pool_yaml, proxy_stats, stat_becomes, wait_until)

UNAVAILABLE = b"SERVER_ERROR backend unavailable\r\n"
LOST = b"SERVER_ERROR backend connection lost\r\n"
TIMEOUT = b"SERVER_ERROR backend timeout\r\n"
VERSION = b"VERSION 1.6.18 ringproxy-0.1.0\r\n"


def value(key, data, flags=0):
    return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data)


def backend_stat(proxy, name, counter):
    return proxy_stats(proxy.port)["backend:%s:%s" % (name, counter)]


def single_key_commands(key):
    """Every single-key command, as (request bytes) for key."""
    return [b"get %s\r\n" % key, b"gets %s\r\n" % key, b"gat 0 %s\r\n" % key,
            b"gats 0 %s\r\n" % key, b"set %s 0 0 1\r\nx\r\n" % key,
            b"add %s 0 0 1\r\nx\r\n" % key, b"replace %s 0 0 1\r\nx\r\n" % key,
            b"append %s 0 0 1\r\nx\r\n" % key, b"prepend %s 0 0 1\r\nx\r\n" % key,
            b"cas %s 0 0 1 1\r\nx\r\n" % key, b"delete %s\r\n" % key,
            b"incr %s 1\r\n" % key, b"decr %s 1\r\n" % key, b"touch %s 0\r\n" % key]


def test_a_dead_backend_fails_its_keys_and_serves_again_when_it_returns(cluster):
    mcs = cluster.memcached(3)
    proxy = cluster.pool(mcs, server_retry_timeout=1000)   # backoff <= 1 s
    keys = {name: k.encode() for name, k in key_per_server(proxy.conf_path).items()}
    k1, k2, k3 = keys["mc1"], keys["mc2"], keys["mc3"]
    with Wire(proxy.port) as w:
        for k in (k1, k2, k3):
            assert w.call(b"set %s 0 0 2\r\nv1\r\n" % k) == b"STORED\r\n"

        mcs[1].kill()
        wait_until(lambda: backend_stat(proxy, "mc2", "state") == "down",
                   what="the proxy to see mc2 go")
        for request in single_key_commands(k2):
            assert w.call(request) == UNAVAILABLE, request
        # noreply stays silent even when it fails
        assert w.call(b"set %s 0 0 1 noreply\r\nx\r\nversion\r\n" % k2) == VERSION
        # A multi-get with a key on the dead server fails whole (as
        # twemproxy's does): a miss would say the key is not cached.
        assert w.call(b"get %s %s %s\r\n" % (k1, k2, k3)) == UNAVAILABLE
        assert w.call(b"get %s %s\r\n" % (k1, k3)) == (
            value(k1, b"v1") + value(k3, b"v1") + b"END\r\n")
        # The other servers' keys are unaffected.
        assert w.call(b"incr %s 1\r\n" % k1) == b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        assert w.call(b"set %s 0 0 2\r\nv2\r\n" % k3) == b"STORED\r\n"

        restarted = cluster.memcached(port=mcs[1].port)[0]
        wait_until(lambda: w.call(b"set %s 0 0 2\r\nv3\r\n" % k2) == b"STORED\r\n",
                   what="the proxy to reconnect to mc2")
        assert w.call(b"get %s %s %s\r\n" % (k1, k2, k3)) == (
            value(k1, b"v1") + value(k2, b"v3") + value(k3, b"v2") + b"END\r\n")
    assert restarted.keys() == {k2}
    assert backend_stat(proxy, "mc2", "state") == "up"
    assert int(proxy_stats(proxy.port)["server_errors"]) >= len(single_key_commands(k2))


def test_flush_all_reports_a_dead_backend_and_flushes_the_others(cluster):
    mcs = cluster.memcached(3)
    proxy = cluster.pool(mcs)
    keys = {name: k.encode() for name, k in key_per_server(proxy.conf_path).items()}
    with Wire(proxy.port) as w:
        for k in keys.values():
            assert w.call(b"set %s 0 0 1\r\nv\r\n" % k) == b"STORED\r\n"
        mcs[2].kill()
        wait_until(lambda: backend_stat(proxy, "mc3", "state") == "down",
                   what="the proxy to see mc3 go")
        assert w.call(b"flush_all\r\n") == UNAVAILABLE
        assert w.call(b"get %s %s\r\n" % (keys["mc1"], keys["mc2"])) == b"END\r\n"


def test_requests_in_flight_when_a_backend_dies_fail_with_connection_lost(cluster):
    fake = FakeBackend()
    real = cluster.memcached(1)[0]
    try:
        proxy = cluster.pool([fake, real])
        keys = {name: k.encode() for name, k in key_per_server(proxy.conf_path).items()}
        on_fake, on_real = keys["mc1"], keys["mc2"]
        with Wire(proxy.port) as w:
            assert w.call(b"set %s 0 0 1\r\nr\r\n" % on_real) == b"STORED\r\n"
            w.send(b"get %s\r\nset %s 0 0 1\r\nx\r\nget %s %s\r\n"
                   % (on_fake, on_fake, on_fake, on_real))
            conn = fake.accept()
            FakeBackend.recv_until(conn, b"get %s\r\n" % on_fake)
            conn.close()        # the server dies holding three requests
            assert w.read_reply() == LOST
            assert w.read_reply() == LOST
            assert w.read_reply() == LOST   # the multi-get fails whole
            assert w.call(b"get %s\r\n" % on_real) == value(on_real, b"r") + b"END\r\n"
            assert w.call(b"version\r\n") == VERSION
    finally:
        fake.close()


def test_replies_keep_request_order_when_a_later_request_is_answered_first(cluster):
    fake = FakeBackend()
    real = cluster.memcached(1)[0]
    try:
        proxy = cluster.pool([fake, real])
        keys = {name: k.encode() for name, k in key_per_server(proxy.conf_path).items()}
        on_fake, on_real = keys["mc1"], keys["mc2"]
        with Wire(proxy.port) as w:
            assert w.call(b"set %s 0 0 1\r\nr\r\n" % on_real) == b"STORED\r\n"
            w.send(b"get %s\r\nget %s\r\nget %s %s\r\n"
                   % (on_fake, on_real, on_real, on_fake))
            conn = fake.accept()
            FakeBackend.recv_until(conn, b"get %s\r\nget %s\r\n" % (on_fake, on_fake))
            # mc2 has answered by now (its reply to the set came back on the
            # same connection earlier); the proxy must hold its replies back.
            conn.sendall(value(on_fake, b"f") + b"END\r\n" + value(on_fake, b"f") + b"END\r\n")
            assert w.read_reply() == value(on_fake, b"f") + b"END\r\n"
            assert w.read_reply() == value(on_real, b"r") + b"END\r\n"
            assert w.read_reply() == value(on_real, b"r") + value(on_fake, b"f") + b"END\r\n"
    finally:
        fake.close()


def test_a_client_that_leaves_with_requests_in_flight_does_not_disturb_others(cluster):
    fake = FakeBackend()
    try:
        proxy = cluster.pool([fake])
        leaver = Wire(proxy.port)
        leaver.send(b"get a\r\nget b c\r\nset d 0 0 1\r\nx\r\n")
        conn = fake.accept()
        FakeBackend.recv_until(conn, b"set d 0 0 1\r\nx\r\n")
        # Reset, not a FIN (which would read as a half-close, and the proxy
        # would keep the connection to deliver the replies).
        leaver.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        leaver.close()
        wait_until(lambda: proxy_stats(proxy.port)["curr_connections"] == "1",
                   what="the proxy to see the client go")
        # A client whose requests share that backend connection (so on the
        # leaver's thread).
        stayer, _ = client_on(proxy.port, fake, conn, b"get e\r\n")
        with stayer:
            # The replies owed to the client that left come first on the
            # backend connection; they must be read and dropped.
            conn.sendall(value(b"a", b"1") + b"END\r\n" + value(b"c", b"3") + b"END\r\n"
                         + b"STORED\r\n" + value(b"e", b"5") + b"END\r\n")
            assert stayer.read_reply() == value(b"e", b"5") + b"END\r\n"
    finally:
        fake.close()


def test_a_backend_that_does_not_answer_times_out(cluster):
    fake = FakeBackend()           # accepts (in the backlog), never answers
    real = cluster.memcached(1)[0]
    try:
        proxy = cluster.pool([fake, real], timeout=200)
        keys = {name: k.encode() for name, k in key_per_server(proxy.conf_path).items()}
        on_fake, on_real = keys["mc1"], keys["mc2"]
        with Wire(proxy.port) as w:
            assert w.call(b"set %s 0 0 1\r\nr\r\n" % on_real) == b"STORED\r\n"
            w.send(b"get %s\r\nget %s %s\r\n" % (on_fake, on_fake, on_real))
            assert w.read_reply() == TIMEOUT
            # a multi-get with a share on the hung server fails whole
            assert w.read_reply() == TIMEOUT
        stat_becomes(proxy.port, "backend:mc1:timeouts", 1)
        assert backend_stat(proxy, "mc2", "timeouts") == "0"
    finally:
        fake.close()


def test_requests_to_a_dead_backend_do_not_each_try_to_connect(cluster):
    dead = cluster.memcached(1)[0]
    dead.kill()
    proxy = cluster.pool([dead])
    with Wire(proxy.port) as w:
        # 300 requests read in one go: one connection attempt, not 300
        assert w.call(b"get k\r\n" * 300, replies=300) == UNAVAILABLE * 300
    stat_becomes(proxy.port, "backend:mc1:connect_failures", 1)


def test_reconnection_attempts_back_off_exponentially(cluster):
    dead = cluster.memcached(1)[0]
    dead.kill()
    proxy = cluster.pool([dead])
    start = time.monotonic()
    with Wire(proxy.port) as w:

        def retried_enough():
            assert w.call(b"get k\r\n") == UNAVAILABLE
            elapsed = time.monotonic() - start
            return elapsed > 1.0 and int(backend_stat(proxy, "mc1", "connect_failures")) >= 3

        wait_until(retried_enough, interval=0.01, what="three connection attempts")
        elapsed_ms = (time.monotonic() - start) * 1000
    attempts = int(backend_stat(proxy, "mc1", "connect_failures"))
    # Attempts at 0, 100, 300, 700, 1500 ms... (100 ms doubling): by time T
    # at most 1 + log2(T/100 + 1) of them. A fixed 100 ms retry would make
    # T/100 of them; a request-driven one, one per request (~100/s).
    bound = 2 + math.floor(math.log2(elapsed_ms / 100 + 1))   # 1 of slack
    assert attempts <= bound, (attempts, elapsed_ms)


def test_auto_eject_routes_a_dead_servers_keys_to_the_others_until_it_returns(cluster):
    mcs = cluster.memcached(3)
    retry_ms = 1500
    proxy = cluster.pool(mcs, auto_eject_hosts=True, server_failure_limit=2,
                         server_retry_timeout=retry_ms)
    # Where keys go while mc2 is out: the ring of the two others.
    without_mc2 = pool_yaml("cache", free_port(),
                            [(mcs[0].addr, 1, "mc1"), (mcs[2].addr, 1, "mc3")])
    conf2 = proxy.conf_path + ".without-mc2"
    with open(conf2, "w") as f:
        f.write(without_mc2)
    keys = ["ej-%d" % i for i in range(300)]
    owner = locate(proxy.conf_path, keys)
    fallback = locate(conf2, keys)
    mc2_keys = [k.encode() for k in keys if owner[k] == "mc2"][:20]
    mc1_key = next(k.encode() for k in keys if owner[k] == "mc1")
    assert len(mc2_keys) == 20

    with Wire(proxy.port) as w:
        assert w.call(b"set %s 0 0 1\r\na\r\n" % mc1_key) == b"STORED\r\n"
        assert w.call(b"set %s 0 0 1\r\na\r\n" % mc2_keys[0]) == b"STORED\r\n"
        mcs[1].kill()
        # Requests fail until mc2 has failed server_failure_limit times...
        wait_until(lambda: w.call(b"set %s 0 0 1\r\nb\r\n" % mc2_keys[0]) == b"STORED\r\n",
                   what="mc2 to be ejected")
        stats = proxy_stats(proxy.port)
        assert stats["backend:mc2:state"] == "ejected"
        assert stats["backend:mc2:ejections"] == "1"
        # ...then its keys go where the ring without mc2 puts them.
        w.send(b"".join(b"set %s 0 0 1\r\nb\r\n" % k for k in mc2_keys))
        assert [w.read_reply() for _ in mc2_keys] == [b"STORED\r\n"] * len(mc2_keys)
        held = {"mc1": mcs[0].keys(), "mc3": mcs[2].keys()}
        for k in mc2_keys:
            assert k in held[fallback[k.decode()]], k
        assert mc1_key in held["mc1"]        # others' keys do not move
        assert w.call(b"get %s\r\n" % mc1_key) == value(mc1_key, b"a") + b"END\r\n"

        # mc2 returns; after server_retry_timeout its keys go to it again.
        restarted = cluster.memcached(port=mcs[1].port)[0]
        wait_until(lambda: backend_stat(proxy, "mc2", "state") == "up",
                   timeout=retry_ms / 1000 + 10, what="mc2 back in routing")
        # The copies written elsewhere while it was out are not seen.
        assert w.call(b"get %s\r\n" % mc2_keys[1]) == b"END\r\n"
        assert w.call(b"set %s 0 0 1\r\nc\r\n" % mc2_keys[1]) == b"STORED\r\n"
        assert w.call(b"get %s\r\n" % mc2_keys[1]) == value(mc2_keys[1], b"c") + b"END\r\n"
    assert restarted.keys() == {mc2_keys[1]}
