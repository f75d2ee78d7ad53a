"""The proxy as a process: many clients, the client limit, signals."""
import os
import resource
import selectors
import signal
import socket

import pytest

from harness import (FakeBackend, Wire, free_port, pool_yaml, proxy_stats,
                     wait_until)

VERSION = b"VERSION 1.6.18 ringproxy-0.1.0\r\n"
TOO_MANY = b"ERROR Too many open connections\r\n"


def refuses_connections(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:             # reset: the listener went as we connected
        return False


def test_1000_concurrent_clients_each_set_and_get_their_own_key(cluster):
    clients = 1000
    need = 2 * clients + 256        # this process and the proxy each hold them
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, need))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))  # inherited
    mcs = cluster.memcached(3)
    proxy = cluster.pool(mcs, backlog=2048)
    socks = [socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
             for _ in range(clients)]
    try:
        # Every client has its request in flight before any reply is read.
        expected = {}
        for i, s in enumerate(socks):
            key, data = b"client-%d" % i, b"value of client %d" % i
            s.sendall(b"set %s %d 0 %d\r\n%s\r\nget %s\r\n" % (key, i, len(data), data, key))
            expected[s] = b"STORED\r\nVALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, i, len(data), data)
        sel = selectors.DefaultSelector()
        got = {}
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            got[s] = b""
        pending = set(socks)

        def read_some():
            for key, _ in sel.select(timeout=1):
                s = key.fileobj
                chunk = s.recv(65536)
                assert chunk, "the proxy closed a client"
                got[s] += chunk
                if len(got[s]) >= len(expected[s]):
                    pending.discard(s)
                    sel.unregister(s)
            return not pending

        wait_until(read_some, timeout=60, interval=0, what="every client's replies")
        assert all(got[s] == expected[s] for s in socks)
        # (with -T N another thread's counts show as of its last loop turn)
        wait_until(lambda: (lambda st: st["curr_connections"] == str(clients + 1) and
                            st["cmd_set"] == str(clients) and
                            st["get_hits"] == str(clients))(proxy_stats(proxy.port)),
                   what="every client counted")
        assert sum(len(mc.keys()) for mc in mcs) == clients
    finally:
        for s in socks:
            s.close()


def test_client_connections_refuses_clients_over_the_limit(cluster):
    proxy = cluster.pool(cluster.memcached(1), client_connections=3)
    admitted = [Wire(proxy.port)]
    try:
        # A client that has gone holds its slot until the proxy reads its
        # end (as in memcached): let the harness's start-up probe go first.
        wait_until(lambda: b"STAT curr_connections 1\r\n" in admitted[0].call(b"stats\r\n"),
                   what="only this client to be connected")
        admitted += [Wire(proxy.port), Wire(proxy.port)]
        for w in admitted:
            assert w.call(b"version\r\n") == VERSION
        with Wire(proxy.port) as extra:
            assert extra.read_line() == TOO_MANY
            assert extra.closed_by_peer()
        # (with -T N the refusal may be another thread's, whose counts show
        # as of its last loop turn)
        want = (b"STAT curr_connections 3\r\n", b"STAT rejected_connections 1\r\n")
        wait_until(lambda: (lambda st: all(line in st for line in want))(
                       admitted[0].call(b"stats\r\n")),
                   what="three clients connected and one refused")
        # A client that leaves makes room for another.
        admitted.pop().close()

        def admitted_again():
            w = Wire(proxy.port)
            w.send(b"version\r\n")
            if w.read_line() == VERSION:
                admitted.append(w)
                return True
            w.close()
            return False

        wait_until(admitted_again, what="a free client slot")
    finally:
        for w in admitted:
            w.close()


def test_sigterm_sends_the_replies_in_flight_then_exits_0_and_removes_the_pid_file(cluster):
    fake = FakeBackend()
    try:
        proxy = cluster.pool([fake])
        idle = Wire(proxy.port)
        assert idle.call(b"version\r\n") == VERSION
        busy = Wire(proxy.port)
        busy.send(b"get k\r\n")
        conn = fake.accept()
        FakeBackend.recv_until(conn, b"get k\r\n")       # in flight now
        assert os.path.exists(proxy.pid_path)

        proxy.signal(signal.SIGTERM)
        wait_until(lambda: refuses_connections(proxy.port),
                   what="the proxy to stop listening")
        assert idle.closed_by_peer()        # nothing owed: closed at once
        assert proxy.proc.poll() is None    # still waiting for the backend
        conn.sendall(b"VALUE k 5 2\r\nok\r\nEND\r\n")
        assert busy.read_reply() == b"VALUE k 5 2\r\nok\r\nEND\r\n"
        assert busy.closed_by_peer()
        assert proxy.proc.wait(timeout=10) == 0
        assert not os.path.exists(proxy.pid_path)
        idle.close()
        busy.close()
    finally:
        fake.close()


def test_sigusr1_reopens_the_log_file(cluster):
    mc = cluster.memcached(1)[0]
    log_path = os.path.join(cluster.workdir, "ringproxy.log")
    port = free_port()
    proxy = cluster.proxy(pool_yaml("cache", port, [(mc.addr, 1, "mc1")]),
                          port=port, extra=["-o", log_path])

    def read(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    wait_until(lambda: "started" in read(log_path), what="the start in the log")
    os.rename(log_path, log_path + ".1")        # what logrotate does
    proxy.signal(signal.SIGUSR1)
    wait_until(lambda: os.path.exists(log_path) and "log reopened" in read(log_path),
               what="a new log file")
    with Wire(proxy.port) as w:                 # connecting to mc1 logs a line
        assert w.call(b"get k\r\n") == b"END\r\n"
    wait_until(lambda: "connected to mc1" in read(log_path),
               what="new lines in the new file")
    assert "connected to mc1" not in read(log_path + ".1")
