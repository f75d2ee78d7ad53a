"""SIGHUP with hostile, broken and partly impossible files (src/config.c's
limits, src/proxy.c's all-or-nothing reload): a client keeps getting answers
while the proxy reads the worst file the limits allow, a file it refuses
changes nothing, and only an applied reload is counted as one.

The file is read and its rings built off the event loop; the loop only
switches pools over. Each test prints what it saw: the slowest answer of a
client that kept asking during the reload (the stall), and the log's
SIGHUP-to-verdict time (the reload's own cost); run with `pytest -s` to read
them. Timings are never asserted: machines differ.
"""
import re
import signal
import threading
import time
from datetime import datetime

import socket

from harness import DEAD_PORT, Wire, admin_json, free_port, pool_yaml, wait_port, wait_until
from test_admin import metrics, value

GET_MISS = b"END\r\n"


class Asker(threading.Thread):
    """A client asking `get` in a loop; records how long each answer took."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.answers = 0
        self.slowest = 0.0
        self.error = None

    def run(self):
        try:
            with Wire(self.port, timeout=30) as w:
                while not self.stop.is_set():
                    t0 = time.monotonic()
                    reply = w.call(b"get reload-limits-key\r\n")
                    self.slowest = max(self.slowest, time.monotonic() - t0)
                    if reply != GET_MISS:
                        raise AssertionError("unexpected reply %r" % reply)
                    self.answers += 1
        except Exception as e:      # reported by finish()
            self.error = e

    def finish(self):
        self.stop.set()
        self.join(timeout=60)
        assert not self.is_alive(), "a request went unanswered"
        assert self.error is None, self.error
        return self


def stamp(line):
    return datetime.strptime(line.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%S.%fZ")


def reload_and_measure(proxy, text, verdict, what):
    """Write text, SIGHUP while a client asks; return the log's stall (s)."""
    before = proxy.log().count("SIGHUP: reloading")
    asker = Asker(proxy.port)
    asker.start()
    wait_until(lambda: asker.answers > 50, what="the client to be asking")
    proxy.write_config(text)
    start = asker.answers
    proxy.signal(signal.SIGHUP)
    wait_until(lambda: proxy.log().count("SIGHUP: reloading") > before and
               re.search(verdict, proxy.log().split("SIGHUP: reloading")[-1]),
               timeout=60, what="the reload's verdict")
    wait_until(lambda: asker.answers > start + 50, what="answers after the reload")
    asker.finish()
    tail = proxy.log().split("\n")
    hup = [i for i, l in enumerate(tail) if "SIGHUP: reloading" in l][-1]
    done = next(l for l in tail[hup:] if re.search(verdict, l))
    stall = (stamp(done) - stamp(tail[hup])).total_seconds()
    print("\n%s: reload took %.1f ms, slowest answer during it %.1f ms (%d answers)"
          % (what, stall * 1e3, asker.slowest * 1e3, asker.answers))
    return stall


def start(cluster, extra_pools=""):
    mc = cluster.memcached(1)[0]
    port, aport = free_port(), free_port()
    text = pool_yaml("cache", port, [(mc.addr, 1, "mc1")])
    proxy = cluster.proxy(text + extra_pools, port=port, admin_port=aport)
    wait_port(aport, proc=proxy.proc)
    return proxy, text


def counters(proxy):
    fam = metrics(proxy.admin_port)
    return (value(fam, "ringproxy_reloads_total"),
            value(fam, "ringproxy_reload_failures_total"))


def servers_block(n, first_port=DEAD_PORT):
    return "".join("    - 127.0.0.1:%d:1 s%d\n" % (first_port + i % 5000, i)
                   for i in range(n))


def hostile_files(good):
    """(what, text) for files each at a limit, every one to be refused."""
    four_mib = 4 << 20
    deep = "[" * 15             # with the pool's mapping: 16 levels, the limit
    flat = "x, " * ((four_mib - 64) // 3) + "x" + "]" * 15 + "\n"
    return [
        ("200 KB of '['", "[" * (200 << 10)),
        ("4 MiB nested 16 deep", "cache: " + deep + flat),
        ("4 MiB of invalid server lines", good + "".join(
            "    - bad%07d\n" % i for i in range(four_mib // 20))[:four_mib - len(good)]),
        ("4 MiB + 1 byte", "#" * (four_mib) + "\n"),
        ("4096 servers, then a bad key", good.replace("  servers:\n", "  servers:\n" +
                                                     servers_block(4095)) + "  bogus: 1\n"),
    ]


def test_hostile_files_are_refused_while_a_client_keeps_getting_answers(cluster):
    proxy, good = start(cluster)
    for i, (what, text) in enumerate(hostile_files(good)):
        reload_and_measure(proxy, text, r"is invalid, keeping", what)
        assert counters(proxy) == (0, i + 1)
    with Wire(proxy.port) as w:
        assert w.call(b"get k\r\n") == GET_MISS


def test_the_largest_ring_a_file_may_hold_is_applied_while_serving(cluster):
    proxy, good = start(cluster)
    # A second pool with every server the limit allows (never connected to:
    # nothing is preconnected and no request goes there).
    big = pool_yaml("big", free_port(), []) + servers_block(4095)
    reload_and_measure(proxy, good + big, r"applied", "4095-server ring added")
    assert counters(proxy) == (1, 0)


def ring_servers(proxy, pool="cache"):
    ring = next(p for p in admin_json(proxy.admin_port, "/ring")["pools"]
                if p["name"] == pool)
    return [s["identity"] for s in ring["servers"]]


def test_a_reload_one_pool_cannot_take_changes_no_pool(cluster):
    mc2 = cluster.memcached(1)[0]
    proxy, good = start(cluster)
    taken = socket.socket()             # another program's port
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    client = Wire(proxy.port)           # to show nothing was closed
    # cache gains a server, and a new pool wants a port in use: the second
    # can only fail when it binds, after cache's new ring was built.
    changed = good.replace("  servers:\n", "  servers:\n    - %s:1 mc2\n" % mc2.addr)
    text = changed + pool_yaml("clash", taken.getsockname()[1], [(mc2.addr, 1, "x")])
    reload_and_measure(proxy, text, r"nothing changed", "one pool cannot listen")
    verdict = proxy.log().split("SIGHUP: reloading")[-1]
    assert "pool clash: cannot listen on 127.0.0.1:%d" % taken.getsockname()[1] in verdict
    assert "applied" not in verdict and "servers, " not in verdict
    assert counters(proxy) == (0, 1)
    assert ring_servers(proxy) == ["mc1"]
    assert client.call(b"get k\r\n") == GET_MISS
    client.close()
    taken.close()
    # The same change without the clash is applied, and counted once.
    reload_and_measure(proxy, changed, r"applied", "the change alone")
    assert counters(proxy) == (1, 1)
    assert ring_servers(proxy) == ["mc2", "mc1"]


def test_a_truncated_file_is_refused_not_read_as_a_smaller_pool(cluster):
    mc2 = cluster.memcached(1)[0]
    proxy, good = start(cluster)
    whole = good + "    - %s:1 mc2\n" % mc2.addr
    cut = whole[:-3]        # "... mc" : a valid name, but no final newline
    reload_and_measure(proxy, cut, r"is invalid, keeping", "cut mid-entry")
    assert "the file ends inside the servers list" in proxy.log()
    reload_and_measure(proxy, whole[:whole.index("servers:") + 20].rstrip(),
                       r"is invalid, keeping", "cut inside an address")
    assert counters(proxy) == (0, 2)


def test_a_server_name_too_long_for_a_ring_record_is_refused(cluster):
    proxy, good = start(cluster)
    text = good.replace(" mc1\n", " " + "n" * 10000 + "\n")
    reload_and_measure(proxy, text, r"is invalid, keeping", "10,000-byte name")
    assert "the name is longer than 255 bytes" in proxy.log()
    assert counters(proxy) == (0, 1)
