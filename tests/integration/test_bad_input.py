"""Bad input gets memcached's own answers, and the connection stays usable
wherever memcached keeps it open.

The table of malformed lines is test_proto_memcached.CASES, which pins what
memcached 1.6.18 itself answers; here the same cases run against the proxy
(over three memcached servers), so the proxy is held to memcached's words.
"""
import pytest

from harness import Wire
from test_proto_memcached import CASES, case_id, exchange

VERSION = b"VERSION 1.6.18 ringproxy-0.1.0\r\n"
FORMAT = b"CLIENT_ERROR bad command line format\r\n"
TOO_LONG = b"CLIENT_ERROR line too long\r\n"
BINARY = b"CLIENT_ERROR binary protocol is not supported\r\n"


@pytest.fixture(scope="module")
def shared_proxy(module_cluster):
    """One proxy over three memcached servers for the whole table."""
    return module_cluster.pool(module_cluster.memcached(3))


# The cases share one proxy and run in order (flush_all, verbosity).
@pytest.mark.parametrize("line,data,reply,outcome", CASES,
                         ids=[case_id(c) for c in CASES])
def test_proxy_answers_like_memcached(shared_proxy, line, data, reply, outcome):
    got, closed = exchange(("127.0.0.1", shared_proxy.port), line, data)
    assert (got, closed) == (reply, outcome == "close")


@pytest.fixture
def proxy(cluster):
    return cluster.pool(cluster.memcached(3))


def test_a_key_over_250_bytes_is_a_client_error_and_the_connection_stays_open(proxy):
    long_key, longest = b"k" * 251, b"k" * 250
    with Wire(proxy.port) as w:
        assert w.call(b"get %s\r\n" % long_key) == FORMAT
        assert w.call(b"get a %s b\r\n" % long_key) == FORMAT
        assert w.call(b"delete %s\r\n" % long_key) == FORMAT
        assert w.call(b"incr %s 1\r\n" % long_key) == FORMAT
        assert w.call(b"touch %s 1\r\n" % long_key) == FORMAT
        # memcached does not swallow the value of a refused set: the block
        # is read as a command line.
        assert w.call(b"set %s 0 0 1\r\nx\r\n" % long_key, replies=2) == FORMAT + b"ERROR\r\n"
        assert w.call(b"version\r\n") == VERSION
        assert w.call(b"set %s 0 0 1\r\nx\r\n" % longest) == b"STORED\r\n"
        assert w.call(b"get %s\r\n" % longest) == b"VALUE %s 0 1\r\nx\r\nEND\r\n" % longest


def test_a_bad_data_chunk_is_a_client_error_and_nothing_is_stored(proxy):
    with Wire(proxy.port) as w:
        # 5 bytes where 3 were announced: the block does not end in "\r\n";
        # like memcached, what follows the announced length and its two
        # bytes is read as the next line (here an empty one: ERROR).
        assert w.call(b"set k 0 0 3\r\nabcde\r\n", replies=2) == (
            b"CLIENT_ERROR bad data chunk\r\nERROR\r\n")
        assert w.call(b"get k\r\n") == b"END\r\n"
        assert w.call(b"set k 0 0 3 noreply\r\nabcde\r\nversion\r\n", replies=2) == (
            b"ERROR\r\n" + VERSION)
        assert w.call(b"set k 0 0 3\r\nabc\r\n") == b"STORED\r\n"
        assert w.call(b"get k\r\n") == b"VALUE k 0 3\r\nabc\r\nEND\r\n"


def test_a_line_over_2048_bytes_without_newline_is_refused_then_closed(proxy):
    for start in (b"set k 0 0 1 ", b"frobnicate ", b"delete "):
        with Wire(proxy.port) as w:
            w.send(b"get k\r\n" + start + b"x" * 3000)
            assert w.read_reply() == b"END\r\n"
            assert w.read_reply() == TOO_LONG
            assert w.closed_by_peer()


def test_an_http_request_closes_the_connection_after_the_replies_owed(proxy):
    with Wire(proxy.port) as w:
        w.send(b"set k 0 0 1\r\nv\r\nget k\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert w.read_reply() == b"STORED\r\n"
        assert w.read_reply() == b"VALUE k 0 1\r\nv\r\nEND\r\n"
        assert w.closed_by_peer()


def test_a_long_get_line_is_read_to_its_end(proxy):
    keys = [b"long-get-key-%05d" % i for i in range(6000)]     # ~120 KB
    with Wire(proxy.port) as w:
        assert w.call(b"set %s 0 0 1\r\nv\r\n" % keys[-1]) == b"STORED\r\n"
        assert w.call(b"get " + b" ".join(keys) + b"\r\n") == (
            b"VALUE %s 0 1\r\nv\r\nEND\r\n" % keys[-1])
        assert w.call(b"version\r\n") == VERSION


def test_the_binary_protocol_is_refused_then_closed(proxy):
    get_request = bytes([0x80, 0x00, 0x00, 0x01]) + bytes(8) + bytes([0, 0, 0, 1]) + \
        bytes(8) + b"k"
    with Wire(proxy.port) as w:
        w.send(get_request)
        assert w.read_reply() == BINARY
        assert w.closed_by_peer()
    with Wire(proxy.port) as w:
        w.send(b"version\r\n" + get_request)
        assert w.read_reply() == VERSION
        assert w.read_reply() == BINARY
        assert w.closed_by_peer()


def test_an_unknown_command_is_an_error_and_the_connection_stays_open(proxy):
    with Wire(proxy.port) as w:
        assert w.call(b"frobnicate k\r\nGET k\r\n\r\n", replies=3) == b"ERROR\r\n" * 3
        assert w.call(b"version\r\n") == VERSION
