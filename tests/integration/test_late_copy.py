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
import contextlib
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from harness import TcpRelay, locate, proxy_stats, stats_until, wait_until
from test_meta import run_battery
from test_fleet_races import indexed_members
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


QUICK = {"timeout": 500, "migration": {"rate": 0, "delete_source": True,
                                       "liveness": 2000}}


def wait_indexed(r, key, proxies=1):
    """Until key is in a v-node set and `proxies` heartbeats are in Redis."""
    wait_until(lambda: key.decode() in indexed_members(r) and r.hlen("rp:cache:proxies") >= proxies,
               timeout=10, what="the key indexed and the heartbeats written")


@contextlib.contextmanager
def copy_in_doubt(env, prefix, around=False):
    """Three servers and a proxy; one key k that moves to a fourth, mc4,
    behind a HoldRelay; the fleet (the proxy and a FakeProxy) resizes to
    four, and the mover's `ms k` to mc4 gets no answer: a copy in doubt,
    held in its connection. Yields what the test needs (t.copy: that
    connection; t.old: k's old owner; t.fake: the FakeProxy, acking
    "switched": the test lets the fleet end with t.fake.ack = "moving").
    around: k is written straight to its old owner (the index does not know
    it: the closing pass moves it), else through the proxy."""
    mcs = env.servers(4)
    relay = HoldRelay(mcs[3].port)
    n4 = SimpleNamespace(addr=relay.addr, ident=4)
    a = env.proxy(mcs[:3], extra=QUICK)
    names = ["%s%d" % (prefix, i) for i in range(200)]
    with open(a.conf_path + ".new", "w") as f:
        f.write(env.config(mcs[:3] + [n4], a.port, extra=QUICK))
    before, after = locate(a.conf_path, names), locate(a.conf_path + ".new", names)
    k = next(x for x in names if after[x] == "mc4").encode()
    old = mcs[int(before[k.decode()][2:]) - 1]
    value = b"v1-" + k
    # the only key that moves: the mover's first listing holds it
    store = b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value)
    assert raw(old.port if around else a.port, store) == b"STORED\r\n"
    if around:
        wait_until(lambda: env.r.hlen("rp:cache:proxies") >= 1, timeout=10,
                   what="the heartbeat in Redis")
    else:
        wait_indexed(env.r, k)
    try:
        with FakeProxy(env.r) as fake:
            reload(a, env.config(mcs[:3] + [n4], a.port, extra=QUICK))
            wait_phase(a.port, "prepared")
            fake.ack = "prepared"
            wait_phase(a.port, "switched")
            relay.hold()                            # mc4 stops (SIGSTOP)
            fake.ack = "switched"
            wait_phase(a.port, "moving")
            # the mover's ms N ME gets no answer: a copy in doubt
            stats_until(a.port, lambda st: int(st["migration:copies_in_doubt"]) >= 1,
                        timeout=30, what="the mover's copy to be in doubt")
            copy = [c for c in relay.held() if b"ms " + k + b" " in c.held]
            assert len(copy) == 1, [c.held[:80] for c in relay.held()]
            yield SimpleNamespace(a=a, k=k, value=value, old=old, mcs=mcs, relay=relay,
                                  copy=copy[0], fake=fake)
        wait_migrated(a.port, 2)
    finally:
        relay.close()


def gone_everywhere(t):
    """k reads as missing through the proxy and is on no server."""
    def read():
        got = raw(t.a.port, b"get %s\r\n" % t.k)
        # mc4's connections that the hold timed out are retried after a
        # pause, each thread its own (-T 2): until then, "unavailable"
        return None if got == b"SERVER_ERROR backend unavailable\r\n" else got
    got = wait_until(read, timeout=10, what="mc4 to be retried")
    assert got == b"END\r\n", "the deleted key is back"
    for m in t.mcs:
        assert raw(m.port, b"mg %s v\r\n" % t.k) == b"EN\r\n", m.ident


def wait_look_behind_copy(t, looks=0):
    """Until the mover comes back to k: it found O empty and ended the move
    (the code before 2026-12-03), or queued another look behind the copy."""
    look = b"mg %s v f c" % t.k
    stats_until(t.a.port, lambda st: int(st["migration:keys_stale"]) >= 1 or
                t.copy.held.count(look) > looks,
                timeout=30, what="the mover to look at the key again")


def test_a_late_copy_of_a_deleted_key_does_not_bring_it_back(env):
    with copy_in_doubt(env, "hk") as t:
        # 2. a delete: a tombstone on O, its md on N lost
        got = raw(t.a.port, b"delete %s\r\n" % t.k)
        assert got == b"SERVER_ERROR backend connection lost\r\n", got
        assert TOMB_VALUE in raw(t.old.port, b"mg %s v f\r\n" % t.k)
        # 3. a read misses (the tombstone; N is not asked)
        assert raw(t.a.port, b"gets %s\r\n" % t.k) == b"END\r\n"
        # 4. mc4 resumes, but runs the connection holding the copy last:
        # every other one first (the delete's md among them)
        t.relay.release_all_but(t.copy)
        # 5. the mover looks at mc4 again: on another connection (whose
        # answer cannot tell whether the copy will run), or behind the
        # copy on its own (mconn.c keeps a socket past a timeout)
        look = b"mg %s " % t.k
        wait_until(lambda: t.relay.passed(look) or
                   t.relay.holds(t.copy, look, after=b"ms %s " % t.k),
                   timeout=30, what="the mover's look at the new owner")
        time.sleep(0.2)     # an answer reaches the proxy
        # 6. then memcached reaches the copy
        t.relay.release(t.copy)
        t.fake.ack = "moving"
    # step 2's delete may have applied, and step 3 said it did: gone for
    # good (through the relay: mc4's address in the ring)
    assert raw(t.a.port, b"delete %s\r\n" % t.k) == b"NOT_FOUND\r\n"
    gone_everywhere(t)


def test_a_late_copy_after_the_old_owner_lost_the_key_does_not_outlive_a_delete(env):
    """The copy is in doubt and the old owner then loses the key (memcached
    evicted it): the mover's next look at O finds nothing. It used to end
    the key's move there ("stale") and keep the doubt without ever looking
    at N again, and the migration could end with it. A client then writes
    the key (on N) and deletes it, and the copy, delivered late (a TCP flow
    behind a partition, retransmitted after the others), lands on the
    emptied N: the deleted key read back with the value written before.
    Now the mover settles the doubt on N before it lets the key go (move.c,
    on_fetch, on_doubt_look), and the migration waits for every doubt."""
    with copy_in_doubt(env, "sk") as t:
        assert raw(t.old.port, b"md %s\r\n" % t.k) == b"HD\r\n"     # evicted
        t.relay.release_all_but(t.copy)
        wait_look_behind_copy(t)
        v2 = b"v2-" + t.k
        assert raw(t.a.port, b"set %s 0 0 %d\r\n%s\r\n" % (t.k, len(v2), v2)) == b"STORED\r\n"
        assert raw(t.a.port, b"delete %s\r\n" % t.k) == b"DELETED\r\n"
        assert raw(t.a.port, b"get %s\r\n" % t.k) == b"END\r\n"
        t.relay.release(t.copy)     # the copy lands on the emptied N
        t.fake.ack = "moving"
    gone_everywhere(t)


def test_a_client_write_of_the_copy_s_bytes_is_not_taken_for_the_copy(env):
    """A client writes the key again with the very bytes of the copy in
    doubt (a cache refilled): on N, and the old owner cleared. The mover
    then finds O empty and N holding those bytes. Compared by value, that
    was its own late copy, removed: an acknowledged write lost. The copy's
    late answer (NS: refused, the client's value was there), which mconn
    keeps for the look sent behind it, tells them apart (move.c,
    doubt_is_ours)."""
    with copy_in_doubt(env, "rk") as t:
        t.relay.release_all_but(t.copy)
        store = b"set %s 0 0 %d\r\n%s\r\n" % (t.k, len(t.value), t.value)
        assert raw(t.a.port, store) == b"STORED\r\n"
        assert raw(t.old.port, b"mg %s v\r\n" % t.k) == b"EN\r\n"
        wait_look_behind_copy(t, looks=t.copy.held.count(b"mg %s v f c" % t.k))
        t.relay.release(t.copy)     # the copy: NS (the client's value is there)
        t.fake.ack = "moving"
    got = raw(t.a.port, b"get %s\r\n" % t.k)
    assert t.value in got, ("the client's acknowledged set was deleted", got)


def test_a_copy_in_doubt_of_the_closing_pass_is_settled_before_the_end(env):
    """A key the index never knew (written around the proxy), copied by
    the closing pass while mc4 holds its connection, then written and
    deleted by a client: no later listing finds it (O is empty, the index
    has no entry). The migration must not end before the doubt is settled
    (move.c, doubts_pump), and the late copy must not survive."""
    with copy_in_doubt(env, "ck", around=True) as t:
        t.relay.release_all_but(t.copy)
        v2 = b"v2-" + t.k
        assert raw(t.a.port, b"set %s 0 0 %d\r\n%s\r\n" % (t.k, len(v2), v2)) == b"STORED\r\n"
        assert raw(t.a.port, b"delete %s\r\n" % t.k) == b"DELETED\r\n"
        t.fake.ack = "moving"
        # the passes end soon (the closing pass's listing of O finds the
        # key no more): the end waits for the held copy
        time.sleep(3)
        st = proxy_stats(t.a.port)
        assert st["migration:state"] != "idle", "ended with a copy in doubt"
        assert int(st["migration:copies_in_doubt"]) >= 1, st
        t.relay.release(t.copy)
    gone_everywhere(t)


def test_the_copy_s_late_answer_counts_after_its_socket_closed(env):
    """As the test above, but the copy's late answer comes while no look
    waits behind it: every look queued there has timed out. The mover's
    socket then idles out and closes (mconn.c), and its next look goes on
    a new one. mconn kept the answer by socket and opaque, so the client's
    write of the same bytes is still not taken for the copy (it was when
    only a look on the copy's own socket consulted the answer)."""
    with copy_in_doubt(env, "ik") as t:
        t.relay.release_all_but(t.copy)
        look = b"mg %s v f c" % t.k
        # until two looks wait behind the copy and no new one comes for a
        # while: they have timed out, and the arc waits out its backoff
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "the mover kept looking"
            wait_look_behind_copy(t, looks=t.copy.held.count(look))
            n = t.copy.held.count(look)
            time.sleep(0.7)
            if n >= 2 and t.copy.held.count(look) == n:
                break
        t.relay.release(t.copy)         # the copy lands: HD, its own CAS
        wait_until(lambda: t.copy.closed, timeout=10,
                   what="the mover's socket to close once idle")
        if int(proxy_stats(t.a.port)["migration:copies_in_doubt"]) < 1:
            pytest.skip("the mover's next look came before the socket closed")
        store = b"set %s 0 0 %d\r\n%s\r\n" % (t.k, len(t.value), t.value)
        assert raw(t.a.port, store) == b"STORED\r\n"
        assert raw(t.old.port, b"mg %s v\r\n" % t.k) == b"EN\r\n"
        t.fake.ack = "moving"
    got = raw(t.a.port, b"get %s\r\n" % t.k)
    assert t.value in got, ("the client's acknowledged set was deleted", got)


@pytest.mark.parametrize("timed_out", [True, False], ids=["timed-out", "in-flight"])
def test_a_new_coordinator_settles_the_copies_its_predecessor_left_in_doubt(env, timed_out):
    """Two proxies resize together; the one moving the keys sends a copy
    to mc4, which holds it, and is killed: after the copy's timeout (a copy
    in doubt) or before it (a copy still waiting for its answer). A delete
    through the other leaves a tombstone on O (its md on mc4 finds
    nothing). The survivor takes the lease over and moves the key. Knowing
    nothing of the copy, it found mc4 empty and cleared the tombstone; the
    copy then landed and the deleted key was back (docs/ARCHITECTURE.md,
    Known limits, before 2026-12-03). Each copy is recorded in Redis before
    it is sent, until answered, and the new holder settles the records as
    its own doubts (move.c, move_copy, mig_doubts_load)."""
    extra = QUICK if timed_out else dict(QUICK, timeout=1500)
    mcs = env.servers(4)
    relay = HoldRelay(mcs[3].port)
    n4 = SimpleNamespace(addr=relay.addr, ident=4)
    proxies = [env.proxy(mcs[:3], extra=extra) for _ in range(2)]
    names = ["lk%d" % i for i in range(200)]
    for p in proxies:
        with open(p.conf_path + ".new", "w") as f:
            f.write(env.config(mcs[:3] + [n4], p.port, extra=extra))
    a = proxies[0]
    before, after = locate(a.conf_path, names), locate(a.conf_path + ".new", names)
    k = next(x for x in names if after[x] == "mc4").encode()
    old = mcs[int(before[k.decode()][2:]) - 1]
    value = b"v1-" + k
    assert raw(a.port, b"set %s 0 0 %d\r\n%s\r\n" % (k, len(value), value)) == b"STORED\r\n"
    wait_indexed(env.r, k, proxies=2)
    try:
        relay.hold()
        for p in proxies:
            reload(p, env.config(mcs[:3] + [n4], p.port, extra=extra))

        def held():
            return [c for c in relay.held() if b"ms " + k + b" " in c.held]
        wait_until(lambda: held(), timeout=30, what="the copy to be held")
        first = next(p for p in proxies if proxy_stats(p.port)["migration:lease"] == "1")
        heir = proxies[1] if first is proxies[0] else proxies[0]
        in_doubt = int(proxy_stats(first.port)["migration:copies_in_doubt"])
        if timed_out:
            stats_until(first.port, lambda st: int(st["migration:copies_in_doubt"]) >= 1,
                        timeout=30, what="the holder's copy to be in doubt")
        else:
            assert in_doubt == 0, "the copy timed out before the kill"
        copy = held()
        assert len(copy) == 1, [c.held[:80] for c in relay.held()]
        # records nobody should trust: not a key, not a record
        to = env.r.hget("rp:cache:migration", "to").decode()
        env.r.hset("rp:cache:migration:doubts:" + to,
                   mapping={b"no key": b"0123 1", b"k\x00": b"0123 1", b"ok": b"x y",
                            b"ok2": b"%016x 5 trailing" % 1})
        first.kill()
        relay.release_all_but(copy[0])
        assert raw(heir.port, b"delete %s\r\n" % k) == b"DELETED\r\n"
        assert TOMB_VALUE in raw(old.port, b"mg %s v f\r\n" % k)
        # the heir takes the lease over and looks at mc4 for the key
        wait_until(lambda: relay.passed(b"mg %s " % k), timeout=30,
                   what="the new holder's look at the new owner")
        time.sleep(0.2)     # its answer reaches the proxy
        relay.release(copy[0])      # the dead holder's copy lands
        wait_migrated(heir.port, 2)
        gone_everywhere(SimpleNamespace(a=heir, k=k, mcs=mcs))
        with open(heir.log_path, errors="replace") as f:
            assert "copies in doubt recorded by an earlier holder: 1, settled before " \
                   "the end; 4 records skipped" in f.read()
        assert not env.r.exists("rp:cache:migration:doubts:" + to)
    finally:
        relay.close()
