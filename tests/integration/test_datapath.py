"""The data path: every memcached command through the proxy to real servers.

Exact bytes are checked on a raw socket (Wire) where order or framing
matters; pymemcache and python-memcache check that real clients work. Most
tests run a proxy over three memcached servers, named mc1..mc3, so that
multi-key commands really are split and merged.
"""
import random
import socket
import time

import memcache
import pytest
from pymemcache.client.base import Client as PymemcacheClient

from harness import Wire, key_per_server, proxy_stats, stat_becomes

VERSION = b"VERSION 1.6.18 ringproxy-0.1.0\r\n"
MIB = 1 << 20


@pytest.fixture
def three(cluster):
    """A proxy over three memcached servers: (proxy, [mc1, mc2, mc3])."""
    mcs = cluster.memcached(3)
    return cluster.pool(mcs), mcs


def one_key_per_server(proxy, prefix="k"):
    """A key owned by each server: {name: key}."""
    return key_per_server(proxy.conf_path, prefix)


def value_block(key, flags, data, cas=None):
    head = b"VALUE %s %d %d" % (key, flags, len(data))
    if cas is not None:
        head += b" %d" % cas
    return head + b"\r\n" + data + b"\r\n"


def direct_get(mc, key):
    """What one memcached server itself holds for key (bytes or None)."""
    with Wire(mc.port) as w:
        reply = w.call(b"get " + key + b"\r\n")
    if reply == b"END\r\n":
        return None
    head, rest = reply.split(b"\r\n", 1)
    return rest[:int(head.split()[3])]


# --- storage and retrieval ------------------------------------------------

def test_set_then_get_returns_the_value_and_its_flags(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"set greeting 42 0 5\r\nhello\r\n") == b"STORED\r\n"
        assert w.call(b"get greeting\r\n") == value_block(b"greeting", 42, b"hello") + b"END\r\n"
        assert w.call(b"get nothing-here\r\n") == b"END\r\n"


def test_each_key_is_stored_on_the_server_the_ring_names(three):
    proxy, mcs = three
    per_server = one_key_per_server(proxy)
    assert sorted(per_server) == ["mc1", "mc2", "mc3"]
    with Wire(proxy.port) as w:
        for name, key in per_server.items():
            assert w.call(b"set %s 0 0 3\r\n%s\r\n" % (key.encode(), name.encode())) == b"STORED\r\n"
    for i, mc in enumerate(mcs):
        for name, key in per_server.items():
            held = direct_get(mc, key.encode())
            assert held == (name.encode() if name == "mc%d" % (i + 1) else None)


def test_add_stores_only_a_missing_key_and_replace_only_an_existing_one(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"replace k 0 0 1\r\na\r\n") == b"NOT_STORED\r\n"
        assert w.call(b"add k 0 0 1\r\nb\r\n") == b"STORED\r\n"
        assert w.call(b"add k 0 0 1\r\nc\r\n") == b"NOT_STORED\r\n"
        assert w.call(b"replace k 7 0 1\r\nd\r\n") == b"STORED\r\n"
        assert w.call(b"get k\r\n") == value_block(b"k", 7, b"d") + b"END\r\n"


def test_append_and_prepend_extend_an_existing_value_only(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"append k 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
        assert w.call(b"prepend k 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
        assert w.call(b"set k 3 0 3\r\nmid\r\n") == b"STORED\r\n"
        assert w.call(b"append k 0 0 4\r\n-end\r\n") == b"STORED\r\n"
        assert w.call(b"prepend k 0 0 6\r\nstart-\r\n") == b"STORED\r\n"
        assert w.call(b"get k\r\n") == value_block(b"k", 3, b"start-mid-end") + b"END\r\n"


def test_gets_returns_a_cas_unique_that_cas_accepts_exactly_once(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"cas k 0 0 1 1\r\nx\r\n") == b"NOT_FOUND\r\n"
        assert w.call(b"set k 0 0 2\r\nv1\r\n") == b"STORED\r\n"
        head = w.call(b"gets k\r\n").split(b"\r\n")[0]
        assert head.startswith(b"VALUE k 0 2 ")
        cas = int(head.split()[4])
        assert w.call(b"cas k 5 0 2 %d\r\nv2\r\n" % cas) == b"STORED\r\n"
        assert w.call(b"cas k 0 0 2 %d\r\nv3\r\n" % cas) == b"EXISTS\r\n"
        reply = w.call(b"gets k\r\n")
        assert reply.startswith(b"VALUE k 5 2 ") and reply.endswith(b"\r\nv2\r\nEND\r\n")
        assert int(reply.split(b"\r\n")[0].split()[4]) != cas


def test_incr_and_decr_count_and_miss_on_a_missing_key(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"incr n 1\r\n") == b"NOT_FOUND\r\n"
        assert w.call(b"decr n 1\r\n") == b"NOT_FOUND\r\n"
        assert w.call(b"set n 0 0 2\r\n10\r\n") == b"STORED\r\n"
        assert w.call(b"incr n 5\r\n") == b"15\r\n"
        assert w.call(b"decr n 20\r\n") == b"0\r\n"
        assert w.call(b"incr n 18446744073709551615\r\n") == b"18446744073709551615\r\n"
        assert w.call(b"incr n 1\r\n") == b"0\r\n"       # wraps like memcached
        assert w.call(b"set s 0 0 3\r\nabc\r\n") == b"STORED\r\n"
        assert w.call(b"incr s 1\r\n") == (
            b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")


def test_touch_gat_and_gats_reset_the_expiry(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"touch k 0\r\n") == b"NOT_FOUND\r\n"
        assert w.call(b"gat 0 k\r\n") == b"END\r\n"
        assert w.call(b"set k 9 0 1\r\nv\r\n") == b"STORED\r\n"
        assert w.call(b"touch k 3600\r\n") == b"TOUCHED\r\n"
        assert w.call(b"gat 3600 k\r\n") == value_block(b"k", 9, b"v") + b"END\r\n"
        reply = w.call(b"gats 3600 k\r\n")
        assert reply.startswith(b"VALUE k 9 1 ") and reply.endswith(b"\r\nv\r\nEND\r\n")
        # A negative exptime expires the item at once: the touch really ran.
        assert w.call(b"gat -1 k\r\n") == value_block(b"k", 9, b"v") + b"END\r\n"
        assert w.call(b"get k\r\n") == b"END\r\n"
        assert w.call(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
        assert w.call(b"touch k -1\r\n") == b"TOUCHED\r\n"
        assert w.call(b"get k\r\n") == b"END\r\n"


def test_delete_removes_a_key_and_accepts_the_legacy_zero_time(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"delete k\r\n") == b"NOT_FOUND\r\n"
        assert w.call(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
        assert w.call(b"delete k\r\n") == b"DELETED\r\n"
        assert w.call(b"get k\r\n") == b"END\r\n"
        assert w.call(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
        assert w.call(b"delete k 0\r\n") == b"DELETED\r\n"
        assert w.call(b"delete k 0\r\n") == b"NOT_FOUND\r\n"


def test_flush_all_empties_every_backend(three):
    proxy, mcs = three
    per_server = one_key_per_server(proxy)
    with Wire(proxy.port) as w:
        for key in per_server.values():
            assert w.call(b"set %s 0 0 1\r\nv\r\n" % key.encode()) == b"STORED\r\n"
        assert all(direct_get(mc, per_server["mc%d" % (i + 1)].encode()) == b"v"
                   for i, mc in enumerate(mcs))
        assert w.call(b"flush_all\r\n") == b"OK\r\n"
        for key in per_server.values():
            assert w.call(b"get %s\r\n" % key.encode()) == b"END\r\n"
        assert all(direct_get(mc, per_server["mc%d" % (i + 1)].encode()) is None
                   for i, mc in enumerate(mcs))
        for key in per_server.values():
            assert w.call(b"set %s 0 0 1\r\nv\r\n" % key.encode()) == b"STORED\r\n"
        w.send(b"flush_all noreply\r\n")
        assert w.call(b"get " + " ".join(per_server.values()).encode() + b"\r\n") == b"END\r\n"


# --- commands the proxy answers itself ------------------------------------

def test_version_names_the_memcached_version_and_the_proxy(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"version\r\n") == VERSION


def test_verbosity_answers_ok_and_nothing_with_noreply(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"verbosity 1\r\n") == b"OK\r\n"
        assert w.call(b"verbosity 0 noreply\r\nversion\r\n") == VERSION


def test_stats_reports_pool_and_per_backend_counters(three):
    proxy, _ = three
    per_server = one_key_per_server(proxy)
    with Wire(proxy.port) as w:
        assert w.call(b"set %s 0 0 1\r\nv\r\n" % per_server["mc2"].encode()) == b"STORED\r\n"
        w.call(b"get %s %s\r\n" % (per_server["mc2"].encode(), per_server["mc3"].encode()))
        reply = w.call(b"stats\r\n")
    assert reply.startswith(b"STAT pid ") and reply.endswith(b"END\r\n")
    # The stats connection alone: w's close is counted, and so is all it did
    # (with -T N, on another thread as of the end of its last loop turn).
    stats = stat_becomes(proxy.port, "curr_connections", 1)  # the stats connection itself
    assert stats["version"] == "0.1.0"
    assert stats["pool"] == "cache" and stats["servers"] == "3"
    assert stats["cmd_set"] == "1" and stats["cmd_get"] == "2"
    assert stats["get_hits"] == "1" and stats["get_misses"] == "1"
    for name in ("mc1", "mc2", "mc3"):
        for counter in ("addr", "state", "requests", "errors", "timeouts",
                        "connects", "connect_failures", "ejections", "inflight"):
            assert "backend:%s:%s" % (name, counter) in stats
        assert stats["backend:%s:state" % name] == "up"
        assert stats["backend:%s:errors" % name] == "0"
    assert stats["backend:mc1:requests"] == "0"
    assert stats["backend:mc2:requests"] == "2"    # the set and its get share
    assert stats["backend:mc3:requests"] == "1"


def test_stats_reset_zeroes_the_counters_and_other_arguments_are_errors(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        w.call(b"get a\r\nget b\r\n", replies=2)
        assert proxy_stats(proxy.port)["cmd_get"] == "2"
        assert w.call(b"stats reset\r\n") == b"RESET\r\n"
        assert w.call(b"stats nonsense\r\n") == b"ERROR\r\n"
    # w's close counted: a gauge survives the reset
    stats = stat_becomes(proxy.port, "curr_connections", 1)
    assert stats["cmd_get"] == "0" and stats["get_misses"] == "0"


def test_quit_closes_the_connection_after_the_replies_before_it(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        w.send(b"set k 0 0 1\r\nv\r\nget k\r\nquit\r\nversion\r\n")
        assert w.read_reply() == b"STORED\r\n"
        assert w.read_reply() == value_block(b"k", 0, b"v") + b"END\r\n"
        assert w.closed_by_peer()


def test_unknown_command_answers_error_and_the_connection_stays_open(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"frobnicate k\r\n") == b"ERROR\r\n"
        assert w.call(b"version\r\n") == VERSION


# --- multi-key retrieval --------------------------------------------------

def test_multiget_of_1000_keys_over_3_backends_answers_in_request_order(three):
    proxy, mcs = three
    rng = random.Random(1)
    stored = {b"key:%04d" % i: b"value-%d-" % i + b"x" * rng.randrange(0, 300)
              for i in range(1000)}
    with Wire(proxy.port) as w:
        w.send(b"".join(b"set %s %d 0 %d noreply\r\n%s\r\n" % (k, i, len(v), v)
                        for i, (k, v) in enumerate(stored.items())))
        # Shuffled, with misses and repeated keys mixed in.
        asked = list(stored) + [b"missing:%d" % i for i in range(100)] + \
            [b"key:0007", b"key:0500", b"key:0007"]
        rng.shuffle(asked)
        flags = {k: i for i, k in enumerate(stored)}
        expected = b"".join(value_block(k, flags[k], stored[k])
                            for k in asked if k in stored) + b"END\r\n"
        assert w.call(b"get " + b" ".join(asked) + b"\r\n") == expected
    held = [mc.keys() for mc in mcs]
    assert sum(len(h) for h in held) == 1000
    assert all(len(h) >= 100 for h in held), "the keys should spread over all 3"


def test_gets_and_gats_multigets_answer_in_request_order(three):
    proxy, mcs = three
    keys = [b"k%d" % i for i in range(60)]
    with Wire(proxy.port) as w:
        for k in keys:
            assert w.call(b"set %s 1 0 %d\r\n%s\r\n" % (k, len(k), k)) == b"STORED\r\n"
        asked = keys[::-1]
        for command in (b"gets", b"gats 3600"):
            reply = w.call(command + b" " + b" ".join(asked) + b"\r\n")
            lines = reply.split(b"\r\n")
            heads = lines[0:-2:2]
            assert [h.split()[1] for h in heads] == asked
            assert lines[1:-2:2] == asked
            assert lines[-2:] == [b"END", b""]
            # Each cas unique is the one its own server gives for the key.
            for head in heads:
                key, cas = head.split()[1], int(head.split()[4])
                owners = [mc for mc in mcs if direct_get(mc, key) is not None]
                assert len(owners) == 1
                with Wire(owners[0].port) as d:
                    assert d.call(b"gets %s\r\n" % key).split()[4] == b"%d" % cas


def test_gat_multiget_touches_every_backends_share(three):
    proxy, _ = three
    keys = [b"t%d" % i for i in range(30)]
    with Wire(proxy.port) as w:
        for k in keys:
            assert w.call(b"set %s 0 0 1\r\nv\r\n" % k) == b"STORED\r\n"
        reply = w.call(b"gat -1 " + b" ".join(keys) + b"\r\n")
        assert reply == b"".join(value_block(k, 0, b"v") for k in keys) + b"END\r\n"
        assert w.call(b"get " + b" ".join(keys) + b"\r\n") == b"END\r\n"


def test_pipelined_commands_get_their_replies_in_order(three):
    proxy, _ = three
    keys = [b"p%d" % i for i in range(200)]
    request = b"".join(b"set %s 0 0 %d\r\n%s\r\nget %s %s\r\n" % (k, len(k), k, k, keys[0])
                       for k in keys)
    with Wire(proxy.port) as w:
        w.send(request)
        for k in keys:
            assert w.read_reply() == b"STORED\r\n"
            expected = value_block(k, 0, k)
            if k != keys[0]:
                expected += value_block(keys[0], 0, keys[0])
            else:
                expected += expected
            assert w.read_reply() == expected + b"END\r\n"


def test_a_client_that_pipelines_more_than_it_reads_gets_every_reply(three):
    proxy, _ = three
    value = bytes(range(256)) * 16          # 4 KiB
    n = 5000                                # ~20 MiB of replies, unread at first
    with Wire(proxy.port, timeout=60) as w:
        assert w.call(b"set v 1 0 %d\r\n%s\r\n" % (len(value), value)) == b"STORED\r\n"
        request = b"".join(b"get v\r\nincr n%d 1\r\n" % (i % 7) for i in range(n))
        w.send(request)          # the proxy must stop reading, then resume
        expected = value_block(b"v", 1, value) + b"END\r\n"
        for i in range(n):
            assert w.read_reply() == expected, i
            assert w.read_reply() == b"NOT_FOUND\r\n", i
        assert w.call(b"version\r\n") == VERSION


def test_a_client_that_half_closes_still_gets_its_replies(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        w.send(b"set k 0 0 1\r\nv\r\nget k\r\n")
        w.sock.shutdown(socket.SHUT_WR)
        assert w.read_reply() == b"STORED\r\n"
        assert w.read_reply() == value_block(b"k", 0, b"v") + b"END\r\n"
        assert w.closed_by_peer()


# --- values ---------------------------------------------------------------

def test_an_empty_value_round_trips(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"set empty 3 0 0\r\n\r\n") == b"STORED\r\n"
        assert w.call(b"get empty\r\n") == b"VALUE empty 3 0\r\n\r\nEND\r\n"
    client = PymemcacheClient(("127.0.0.1", proxy.port))
    assert client.set("empty2", b"") is True
    assert client.get("empty2") == b""
    assert client.get_many(["empty", "empty2"]) == {"empty": b"", "empty2": b""}
    client.close()


def test_a_value_of_exactly_1_mib_round_trips(three):
    proxy, _ = three
    value = bytes(random.Random(2).getrandbits(8) for _ in range(256)) * (MIB // 256)
    assert len(value) == MIB
    with Wire(proxy.port) as w:
        assert w.call(b"set big 0 0 %d\r\n%s\r\n" % (MIB, value)) == b"STORED\r\n"
        assert w.call(b"get big\r\n") == value_block(b"big", 0, value) + b"END\r\n"
    client = PymemcacheClient(("127.0.0.1", proxy.port))
    assert client.set("big2", value) is True
    assert client.get_many(["big", "big2"]) == {"big": value, "big2": value}
    client.close()


def test_a_multiget_of_1_mib_values_from_every_backend_round_trips(three):
    proxy, _ = three
    per_server = one_key_per_server(proxy, "huge")
    values = {k.encode(): bytes([i]) * MIB for i, k in enumerate(sorted(per_server.values()))}
    with Wire(proxy.port) as w:
        for k, v in values.items():
            assert w.call(b"set %s 0 0 %d\r\n%s\r\n" % (k, MIB, v)) == b"STORED\r\n"
        asked = list(values)[::-1]
        assert w.call(b"get " + b" ".join(asked) + b"\r\n") == (
            b"".join(value_block(k, 0, values[k]) for k in asked) + b"END\r\n")


def test_a_value_over_1_mib_is_refused_and_its_bytes_swallowed(three):
    proxy, _ = three
    over = b"v" * (MIB + 1)
    with Wire(proxy.port) as w:
        assert w.call(b"set big 0 0 3\r\nold\r\n") == b"STORED\r\n"
        # The value's bytes must not be read as commands: they contain one.
        body = b"get big\r\n" + over[9:]
        w.send(b"set big 0 0 %d\r\n%s\r\nversion\r\n" % (len(body), body))
        assert w.read_reply() == b"SERVER_ERROR object too large for cache\r\n"
        assert w.read_reply() == VERSION
        # As in memcached, a refused set removes the old value: no stale read.
        assert w.call(b"get big\r\n") == b"END\r\n"
        w.send(b"set big 0 0 %d noreply\r\n%s\r\nversion\r\n" % (len(over), over))
        assert w.read_reply() == VERSION


def test_item_size_max_sets_the_largest_value_a_pool_takes(cluster):
    mcs = cluster.memcached(2)
    proxy = cluster.pool(mcs, item_size_max=4096)
    with Wire(proxy.port) as w:
        assert w.call(b"set k 0 0 4096\r\n%s\r\n" % (b"a" * 4096)) == b"STORED\r\n"
        assert w.call(b"get k\r\n") == value_block(b"k", 0, b"a" * 4096) + b"END\r\n"
        assert w.call(b"append k 0 0 4097\r\n%s\r\n" % (b"b" * 4097)) == (
            b"SERVER_ERROR object too large for cache\r\n")
        assert w.call(b"get k\r\n") == value_block(b"k", 0, b"a" * 4096) + b"END\r\n"
        # memcached drops the old value when a set is refused; so does the proxy
        assert w.call(b"set k 0 0 4097\r\n%s\r\n" % (b"b" * 4097)) == (
            b"SERVER_ERROR object too large for cache\r\n")
        assert w.call(b"get k\r\n") == b"END\r\n"


BINARY = bytes(range(256)) + b"\r\nEND\r\nVALUE k 0 1\r\nx\r\n\r\n" + bytes(range(255, -1, -1))


def test_values_are_binary_safe(three):
    proxy, _ = three
    keys = [b"bin%d" % i for i in range(20)]
    with Wire(proxy.port) as w:
        for i, k in enumerate(keys):
            v = BINARY[i:] + BINARY[:i]
            assert w.call(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v)) == b"STORED\r\n"
        for i, k in enumerate(keys):
            assert w.call(b"get %s\r\n" % k) == value_block(k, 0, BINARY[i:] + BINARY[:i]) + b"END\r\n"
        # Merged from three servers, still framed by length, not by lines.
        expected = b"".join(value_block(k, 0, BINARY[i:] + BINARY[:i])
                            for i, k in reversed(list(enumerate(keys))))
        assert w.call(b"get " + b" ".join(reversed(keys)) + b"\r\n") == expected + b"END\r\n"
    client = PymemcacheClient(("127.0.0.1", proxy.port))
    client.set("crlf", b"\r\n")
    assert client.get("crlf") == b"\r\n"
    assert client.get_many(["bin%d" % i for i in range(20)]) == {
        "bin%d" % i: BINARY[i:] + BINARY[:i] for i in range(20)}
    client.close()


# --- noreply --------------------------------------------------------------

def test_noreply_sets_sent_in_one_write_all_land(three):
    proxy, mcs = three
    keys = [b"nr%d" % i for i in range(2000)]
    with Wire(proxy.port) as w:
        w.send(b"".join(b"set %s 0 0 %d noreply\r\n%s\r\n" % (k, len(k), k) for k in keys))
        assert w.call(b"get " + b" ".join(keys) + b"\r\n") == (
            b"".join(value_block(k, 0, k) for k in keys) + b"END\r\n")
    assert sum(len(mc.keys()) for mc in mcs) == 2000


def test_noreply_commands_answer_nothing_and_later_replies_stay_in_order(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        w.send(b"set a 0 0 1 noreply\r\n1\r\n"
               b"get a\r\n"
               b"add a 0 0 1 noreply\r\n2\r\n"         # fails, silently
               b"replace a 0 0 1 noreply\r\n3\r\n"
               b"append a 0 0 1 noreply\r\n4\r\n"
               b"prepend a 0 0 1 noreply\r\n5\r\n"
               b"incr a 10 noreply\r\n"
               b"decr a 1 noreply\r\n"
               b"touch a 3600 noreply\r\n"
               b"get a\r\n"
               b"set c 0 0 1 noreply\r\n0\r\n"
               b"gets c\r\n"
               b"delete a noreply\r\n"
               b"delete a 0 noreply\r\n"                # NOT_FOUND, silently
               b"get a\r\n"
               b"verbosity 1 noreply\r\n"
               b"flush_all noreply\r\n"
               b"get c\r\n"
               b"version\r\n")
        assert w.read_reply() == value_block(b"a", 0, b"1") + b"END\r\n"
        assert w.read_reply() == value_block(b"a", 0, b"543") + b"END\r\n"
        gets = w.read_reply()
        assert gets.startswith(b"VALUE c 0 1 ") and gets.endswith(b"\r\n0\r\nEND\r\n")
        assert w.read_reply() == b"END\r\n"
        assert w.read_reply() == b"END\r\n"
        assert w.read_reply() == VERSION


def test_noreply_cas_stores_without_a_reply(three):
    proxy, _ = three
    with Wire(proxy.port) as w:
        assert w.call(b"set k 0 0 1\r\na\r\n") == b"STORED\r\n"
        cas = int(w.call(b"gets k\r\n").split()[4])
        w.send(b"cas k 0 0 1 %d noreply\r\nb\r\n" % cas)
        w.send(b"cas k 0 0 1 %d noreply\r\nc\r\n" % cas)   # EXISTS, silently
        assert w.call(b"get k\r\n") == value_block(b"k", 0, b"b") + b"END\r\n"


# --- real clients ---------------------------------------------------------

def test_pymemcache_drives_every_command_it_has(three):
    proxy, _ = three
    c = PymemcacheClient(("127.0.0.1", proxy.port), default_noreply=False)
    assert c.version() == b"1.6.18 ringproxy-0.1.0"
    assert c.set("a", b"1", expire=0) is True
    assert c.get("a") == b"1"
    assert c.add("a", b"2") is False
    assert c.add("b", b"2") is True
    assert c.replace("a", b"3") is True
    assert c.replace("zz", b"3") is False
    assert c.append("a", b"4") is True
    assert c.prepend("a", b"5") is True
    assert c.get("a") == b"534"
    assert c.incr("a", 1) == 535
    assert c.decr("a", 35) == 500
    assert c.incr("missing", 1) is None
    value, cas = c.gets("a")
    assert value == b"500"
    assert c.cas("a", b"cas1", cas) is True
    assert c.cas("a", b"cas2", cas) is False
    assert c.touch("a", 3600) is True
    assert c.touch("missing") is False
    many = {"m%d" % i: b"%d" % i for i in range(300)}
    assert c.set_many(many) == []
    assert c.get_many(list(many) + ["missing"]) == many
    got = c.gets_many(["a", "b"])
    assert got["a"][0] == b"cas1" and got["b"][0] == b"2"
    assert c.delete("a") is True
    assert c.delete("a") is False
    assert c.delete_many(["m%d" % i for i in range(100)]) is True
    assert c.get_many(list(many)) == {k: v for k, v in many.items()
                                      if int(k[1:]) >= 100}
    stats = c.stats()
    assert stats[b"pool"] == b"cache"
    assert c.flush_all() is True
    assert c.get_many(list(many) + ["b"]) == {}
    # noreply (pymemcache's default) lands too
    assert c.set("q", b"quiet", noreply=True) is True
    assert c.get("q") == b"quiet"
    c.quit()


def test_python_memcache_drives_every_command_it_has(three):
    proxy, _ = three
    mc = memcache.Client(["127.0.0.1:%d" % proxy.port], cache_cas=True)
    try:
        assert mc.set("a", "1")
        assert mc.get("a") == "1"
        assert not mc.add("a", "2")
        assert mc.add("b", "2")
        assert mc.replace("a", "3")
        assert not mc.replace("zz", "3")
        assert mc.append("a", "4")
        assert mc.prepend("a", "5")
        assert mc.get("a") == "534"
        assert mc.incr("a", 1) == 535
        assert mc.decr("a", 35) == 500
        assert mc.incr("missing") is None
        assert mc.gets("a") == "500"
        stale = mc.cas_ids[b"a"]
        assert mc.cas("a", "cas1")
        mc.cas_ids[b"a"] = stale
        assert not mc.cas("a", "cas2")
        assert mc.get("a") == "cas1"
        assert mc.touch("a", 3600)
        values = {"m%d" % i: i for i in range(300)}   # ints: flags say so
        assert mc.set_multi(values) == []
        assert mc.get_multi(list(values) + ["missing"]) == values
        assert mc.set("obj", {"a": [1, 2]})           # pickled, flags 1
        assert mc.get("obj") == {"a": [1, 2]}
        assert mc.delete("a")
        assert mc.delete_multi(["m%d" % i for i in range(100)])
        assert mc.get_multi(list(values)) == {k: v for k, v in values.items() if v >= 100}
        (server, stats), = mc.get_stats()
        assert stats["pool"] == "cache"
        assert mc.flush_all() is None
        assert mc.get_multi(list(values) + ["b", "obj"]) == {}
    finally:
        mc.disconnect_all()


def test_a_value_arriving_in_pieces_is_one_request(three):
    proxy, _ = three
    before = int(proxy_stats(proxy.port)["requests"])
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"set slow 0 0 30000\r\n")
        for _ in range(3):
            time.sleep(0.05)
            s.sendall(b"x" * 10000)
        s.sendall(b"\r\n")
        assert s.recv(100) == b"STORED\r\n"
    # the set and the stats command reading the counter
    assert int(proxy_stats(proxy.port)["requests"]) == before + 2
