"""A copy the mover sent to a stopped new owner, in doubt, must not come
back after the key was deleted (chaos scenario h, "h-dest-stalls": a delete
in doubt, a read that missed, then DELETED).

The mover's `ms N ME` to a stopped new owner N times out: the copy is in
doubt (move.c, doubt_add) and stays in N's socket buffer. A delete then
leaves a tombstone on the old owner O and loses its md on N; reads miss.
When N resumes, memcached runs one connection's commands in order, but not
connections in the order they were written. The proxy used to close the
socket at the timeout and look again on a new one: the look could be
answered "nothing here" before the copy ran, the mover forgot the doubt
and cleared O's tombstone, and the copy landed after: the deleted value was
back. Now the socket is kept past a timeout (mconn.c), so the look runs
behind the copy; a doubt whose socket was closed anyway is forgotten only
once N has answered for 2 x timeout + 1 s (move.c, doubt_drained).

A relay in front of N plays the stopped server: it holds every byte the
proxy sends, then lets every connection through but the one holding the
copy, which it releases only after the mover looked at N again.
"""
import socket
import threading
import time
from types import SimpleNamespace

from harness import TcpRelay, locate, stats_until, wait_until
from test_meta import run_battery
from test_migration import (FakeProxy, TOMB_VALUE, env, reload,  # noqa: F401
                            wait_migrated, wait_phase)


class HoldRelay(TcpRelay):
    """A relay in front of a memcached server. While holding, bytes from the
    proxy are kept per connection (as a stopped server's socket buffers keep
    them, also after the proxy closed the connection) and nothing is
    answered; release() delivers what a connection holds, in the order the
    test picks."""

    def __init__(self, target_port):
        self.lock = threading.Lock()
        self.holding = False
        self.conns = []
        super().__init__(target_port)

    def attach(self, client, server):
        with self.lock:
            c = SimpleNamespace(client=client, server=server, held=b"",
                                passing=not self.holding, closed=False,
                                replayed=False, sent=b"")
            self.conns.append(c)
        threading.Thread(target=self.up, args=(c,), daemon=True).start()
        threading.Thread(target=self.down, args=(c,), daemon=True).start()

    def up(self, c):
        while True:
            try:
                chunk = c.client.recv(65536)
            except OSError:
                chunk = b""
            with self.lock:
                if not chunk:
                    c.closed = True
                    if c.passing:
                        c.server.shutdown(socket.SHUT_WR)
                    return
                if c.passing:
                    c.server.sendall(chunk)
                    c.sent += chunk
                else:
                    c.held += chunk

    def down(self, c):
        while True:
            try:
                chunk = c.server.recv(65536)
            except OSError:
                return
            if not chunk:
                try:
                    c.client.close()
                except OSError:
                    pass
                return
            try:
                c.client.sendall(chunk)     # a closed proxy socket: dropped
            except OSError:
                pass

    def hold(self):
        with self.lock:
            self.holding = True
            for c in self.conns:
                c.passing = False

    def held(self):
        """The connections whose bytes are held, newest first."""
        with self.lock:
            return [c for c in reversed(self.conns) if not c.passing and not c.replayed]

    def release(self, c):
        """Deliver what c holds; an open one is relayed from then on, a
        closed one is hung up after (the server reads the EOF last)."""
        with self.lock:
            c.server.sendall(c.held)
            c.held = b""
            if c.closed:
                c.server.shutdown(socket.SHUT_WR)
                c.replayed = True
            else:
                c.passing = True

    def release_all_but(self, keep):
        """Every held connection but `keep`, newest first, and new ones
        from now on."""
        with self.lock:
            self.holding = False
        for c in self.held():
            if c is not keep:
                self.release(c)

    def passed(self, data):
        """Has `data` gone to the server on a connection since it was let through?"""
        with self.lock:
            return any(data in c.sent for c in self.conns)

    def holds(self, c, data, after):
        """Does c hold `data` behind `after`?"""
        with self.lock:
            at = c.held.find(after)
            return at >= 0 and c.held.find(data, at + len(after)) >= 0


def raw(port, line):
    """One command's answer, read as test_meta reads a battery's."""
    return run_battery(("127.0.0.1", port), [line])[0]


def test_a_late_copy_of_a_deleted_key_does_not_bring_it_back(env):
    mcs = env.servers(4)
    relay = HoldRelay(mcs[3].port)
    n4 = SimpleNamespace(addr=relay.addr, ident=4)
    quick = {"timeout": 500, "migration": {"rate": 0, "delete_source": True,
                                           "liveness": 2000}}
    a = env.proxy(mcs[:3], extra=quick)
    names = ["hk%d" % i for i in range(200)]
    with open(a.conf_path + ".new", "w") as f:
        f.write(env.config(mcs[:3] + [n4], a.port, extra=quick))
    before, after = locate(a.conf_path, names), locate(a.conf_path + ".new", names)
    k = next(x for x in names if after[x] == "mc4").encode()
    old = mcs[int(before[k.decode()][2:]) - 1]
    value = b"v-" + k
    # the only key that moves: the mover's first listing holds it
    assert raw(a.port, b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value)) == b"STORED\r\n"
    time.sleep(1.2)     # indexed, and the heartbeat is in Redis
    try:
        with FakeProxy(env.r) as fake:
            reload(a, env.config(mcs[:3] + [n4], a.port, extra=quick))
            wait_phase(a.port, "prepared")
            fake.ack = "prepared"
            wait_phase(a.port, "switched")
            relay.hold()                            # mc4 stops (SIGSTOP)
            fake.ack = "switched"
            wait_phase(a.port, "moving")
            # 1. the mover's ms N ME gets no answer: a copy in doubt
            stats_until(a.port, lambda st: int(st["migration:copies_in_doubt"]) >= 1,
                        timeout=30, what="the mover's copy to be in doubt")
            # 2. a delete: a tombstone on O, its md on N lost
            got = raw(a.port, b"delete %s\r\n" % k)
            assert got == b"SERVER_ERROR backend connection lost\r\n", got
            assert TOMB_VALUE in raw(old.port, b"mg %s v f\r\n" % k)
            # 3. a read misses (the tombstone; N is not asked)
            assert raw(a.port, b"gets %s\r\n" % k) == b"END\r\n"
            # 4. mc4 resumes, but runs the connection holding the copy last:
            # every other one first (the delete's md among them)
            copy = [c for c in relay.held() if b"ms " + k + b" " in c.held]
            assert len(copy) == 1, [c.held[:80] for c in relay.held()]
            relay.release_all_but(copy[0])
            # 5. the mover looks at mc4 again: on another connection (whose
            # answer cannot tell whether the copy will run), or behind the
            # copy on its own (mconn.c keeps a socket past a timeout)
            look = b"mg %s " % k
            wait_until(lambda: relay.passed(look) or
                       relay.holds(copy[0], look, after=b"ms %s " % k),
                       timeout=30, what="the mover's look at the new owner")
            time.sleep(0.2)     # an answer reaches the proxy
            # 6. then memcached reaches the copy
            relay.release(copy[0])
            fake.ack = "moving"
        wait_migrated(a.port, 2)
        # step 2's delete may have applied, and step 3 said it did: gone
        # for good (through the relay: mc4's address in the ring)
        assert raw(a.port, b"get %s\r\n" % k) == b"END\r\n", "the deleted value is back"
        assert raw(a.port, b"delete %s\r\n" % k) == b"NOT_FOUND\r\n"
        for m in mcs:
            assert raw(m.port, b"mg %s v\r\n" % k) == b"EN\r\n", m.ident
    finally:
        relay.close()


def test_a_late_copy_after_the_old_owner_lost_the_key_does_not_outlive_a_delete(env):
    """The copy is in doubt, and the old owner then loses the key (memcached
    evicted it): the mover's next look at O finds nothing. It used to end
    the key's move there ("stale") and keep the doubt without ever looking
    at N again; the migration could end with it. A client then writes the
    key (on N) and deletes it, and the copy, delivered late (a TCP flow
    behind a partition, retransmitted after the others), lands on the
    emptied N: the deleted key read back with the value written before.
    Now the mover settles the doubt on N before it lets the key go, and the
    migration waits for every doubt (move.c, doubt_settle)."""
    mcs = env.servers(4)
    relay = HoldRelay(mcs[3].port)
    n4 = SimpleNamespace(addr=relay.addr, ident=4)
    quick = {"timeout": 500, "migration": {"rate": 0, "delete_source": True,
                                           "liveness": 2000}}
    a = env.proxy(mcs[:3], extra=quick)
    names = ["sk%d" % i for i in range(200)]
    with open(a.conf_path + ".new", "w") as f:
        f.write(env.config(mcs[:3] + [n4], a.port, extra=quick))
    before, after = locate(a.conf_path, names), locate(a.conf_path + ".new", names)
    k = next(x for x in names if after[x] == "mc4").encode()
    old = mcs[int(before[k.decode()][2:]) - 1]
    value = b"v1-" + k
    assert raw(a.port, b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value)) == b"STORED\r\n"
    time.sleep(1.2)     # indexed, and the heartbeat is in Redis
    try:
        with FakeProxy(env.r) as fake:
            reload(a, env.config(mcs[:3] + [n4], a.port, extra=quick))
            wait_phase(a.port, "prepared")
            fake.ack = "prepared"
            wait_phase(a.port, "switched")
            relay.hold()
            fake.ack = "switched"
            wait_phase(a.port, "moving")
            # 1. the copy gets no answer: in doubt, held in its flow
            stats_until(a.port, lambda st: int(st["migration:copies_in_doubt"]) >= 1,
                        timeout=30, what="the mover's copy to be in doubt")
            copy = [c for c in relay.held() if b"ms " + k + b" " in c.held]
            assert len(copy) == 1, [c.held[:80] for c in relay.held()]
            # 2. O loses the key; every other flow to N gets through
            assert raw(old.port, b"md %s\r\n" % k) == b"HD\r\n"
            relay.release_all_but(copy[0])
            # 3. the mover comes back to the key and finds O empty
            stats_until(a.port, lambda st: int(st["migration:keys_stale"]) >= 1 or
                        relay.holds(copy[0], b"mg %s " % k, after=b"ms %s " % k),
                        timeout=30, what="the mover to look at the key again")
            # 4. a client writes the key (N) and deletes it
            v2 = b"v2-" + k
            assert raw(a.port, b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v2), v2)) == b"STORED\r\n"
            assert raw(a.port, b"delete %s\r\n" % k) == b"DELETED\r\n"
            assert raw(a.port, b"get %s\r\n" % k) == b"END\r\n"
            # 5. the copy's flow is delivered at last
            relay.release(copy[0])
            fake.ack = "moving"
        wait_migrated(a.port, 2)
        assert raw(a.port, b"get %s\r\n" % k) == b"END\r\n", "the deleted key is back"
        for m in mcs:
            assert raw(m.port, b"mg %s v\r\n" % k) == b"EN\r\n", m.ident
    finally:
        relay.close()
