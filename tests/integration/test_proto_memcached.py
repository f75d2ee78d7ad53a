"""What real memcached answers to malformed and borderline request lines.

CASES pins memcached 1.6.18's answer to each line; this test checks them
against /usr/bin/memcached, and tests/unit/test_proto.c checks that
src/proto.c reaches the same verdicts (its table is generated from CASES:
`/usr/bin/python3 tests/integration/test_proto_memcached.py --emit-c`, and
test_unit_table_is_current fails when the two drift apart).

Each case runs on a fresh connection: send `line` + "\\r\\n", then `data` (the
value block, for storage lines), then "version\\r\\n" as a sentinel; the reply
is everything before the sentinel's "VERSION ..." line. Outcome says what the
parser must return: "ok" (PROTO_OK), "err" (PROTO_ERR; reply is the error
line, empty when noreply silenced it) or "close" (PROTO_ERR, connection
closed without a reply).

Replies that depend on stored data use keys no case ever stores ("k"), or
noreply. To run against another server (the proxy), call exchange() with
its address.
"""
import os
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)    # run as a script (--emit-c) too
from harness import free_port  # noqa: E402

MEMCACHED = "/usr/bin/memcached"
UNIT_TEST = os.path.join(HERE, "..", "unit", "test_proto.c")

ERROR = b"ERROR\r\n"
FORMAT = b"CLIENT_ERROR bad command line format\r\n"
DELETE_USAGE = (b"CLIENT_ERROR bad command line format.  "
                b"Usage: delete <key> [noreply]\r\n")
EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
X = b"x\r\n"            # a one-byte value block
Y250 = b"y" * 250       # longest key
Y251 = b"y" * 251       # one byte too long
Z250 = b"z" * 250       # longest key, never stored

CASES = [
    # line, data, reply, outcome
    # -- not a command
    (b"", None, ERROR, "err"),
    (b" ", None, ERROR, "err"),
    (b"x", None, ERROR, "err"),
    (b"foo", None, ERROR, "err"),
    (b"\x00get k", None, ERROR, "err"),
    (b"SET s 0 0 1", None, ERROR, "err"),
    (b"GET k", None, ERROR, "err"),
    (b"Get k", None, ERROR, "err"),
    (b"gets\tk", None, ERROR, "err"),
    (b"gxx / HTTP/1.1", None, ERROR, "err"),
    (b"GET / HTTP/1.1", None, b"", "close"),
    (b"foo HTTP/1.0", None, b"", "close"),
    (b"HTTP/1.0", None, b"", "close"),
    (b"foo xHTTP/", None, ERROR, "err"),
    (b"foo " + b"x " * 21 + b"HTTP/1.1 y z", None, b"", "close"),
    (b"foo " + b"x " * 22 + b"HTTP/1.1 y z", None, ERROR, "err"),
    (b"watch HTTP/1.0", None, ERROR, "err"),
    (b"lru_crawler HTTP/1.0", None, ERROR, "err"),
    (b"shutdown", None, b"ERROR: shutdown not enabled\r\n", "err"),
    (b"shutdown graceful", None, b"ERROR: shutdown not enabled\r\n", "err"),
    # -- get, gets, gat, gats
    (b"get", None, ERROR, "err"),
    (b"get ", None, ERROR, "err"),
    (b"gets", None, ERROR, "err"),
    (b"gat", None, ERROR, "err"),
    (b"gats", None, ERROR, "err"),
    (b"get k", None, b"END\r\n", "ok"),
    (b"gets k", None, b"END\r\n", "ok"),
    (b"bget k", None, b"END\r\n", "ok"),
    (b"   get k", None, b"END\r\n", "ok"),
    (b"get k  k2   ", None, b"END\r\n", "ok"),
    (b"get k noreply", None, b"END\r\n", "ok"),
    (b"get / HTTP/1.1", None, b"END\r\n", "ok"),
    (b"get a\tb\x01c\x7f", None, b"END\r\n", "ok"),
    (b"get k\x00b c", None, b"END\r\n", "ok"),
    (b"get " + b" ".join(b"k%d" % i for i in range(30)), None,
     b"END\r\n", "ok"),
    (b"get " + b" ".join(b"k%d" % i for i in range(1000)), None,
     b"END\r\n", "ok"),
    (b"get " + Y250, None, b"END\r\n", "ok"),
    (b"get " + Y251, None, FORMAT, "err"),
    (b"get k " + Y251 + b" k2", None, FORMAT, "err"),
    (b"gat 10", None, b"END\r\n", "ok"),
    (b"gat 10 ", None, b"END\r\n", "ok"),
    (b"gat 10 k", None, b"END\r\n", "ok"),
    (b"gats 10 k k2", None, b"END\r\n", "ok"),
    (b"gat -1 k", None, b"END\r\n", "ok"),
    (b"gat 99999999999 k", None, b"END\r\n", "ok"),
    (b"gat x k", None, EXPTIME, "err"),
    (b"gat k", None, EXPTIME, "err"),
    (b"gat 10 " + Y251, None, FORMAT, "err"),
    (b"gat x " + Y251, None, EXPTIME, "err"),
    # -- set, add, replace, append, prepend
    (b"set s 0 0 1", X, b"STORED\r\n", "ok"),
    (b"set s  0   0  1", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 1 noreply", X, b"", "ok"),
    (b"set s 0 0 1 junk", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 1 noreply junk", None, ERROR, "err"),
    (b"set", None, ERROR, "err"),
    (b"set s", None, ERROR, "err"),
    (b"set s 0 0", None, ERROR, "err"),
    (b"set s 0 0 1 2 3", None, ERROR, "err"),
    (b"set " + Y250 + b" 0 0 1", X, b"STORED\r\n", "ok"),
    (b"set " + Y251 + b" 0 0 1", None, FORMAT, "err"),
    (b"set " + Y251 + b" 0 0 1 noreply", None, b"", "err"),
    (b"set " + Y251 + b" x 0 1", None, FORMAT, "err"),
    (b"set a\tb\x01c\x7f 0 0 1", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 1\r", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 1\x00junk", X, b"STORED\r\n", "ok"),
    (b"set s abc 0 1", None, FORMAT, "err"),
    (b"set s -1 0 1", None, FORMAT, "err"),
    (b"set s -0 0 1", X, b"STORED\r\n", "ok"),
    (b"set s 5- 0 1", None, FORMAT, "err"),
    (b"set s 0x1 0 1", None, FORMAT, "err"),
    (b"set s \x0b5 0 1", X, b"STORED\r\n", "ok"),
    (b"set s 5\x0cz 0 1", X, b"STORED\r\n", "ok"),
    (b"set s 4294967295 0 1", X, b"STORED\r\n", "ok"),
    (b"set s 4294967296 0 1", X, b"STORED\r\n", "ok"),
    (b"set s 18446744073709551615 0 1", X, b"STORED\r\n", "ok"),
    (b"set s 18446744073709551616 0 1", None, FORMAT, "err"),
    (b"set s -9223372036854775808 0 1", None, FORMAT, "err"),
    (b"set s -9223372036854775809 0 1", X, b"STORED\r\n", "ok"),
    (b"set s 0 abc 1", None, FORMAT, "err"),
    (b"set s 0 -1 1", X, b"STORED\r\n", "ok"),
    (b"set s 0 9999999999 1", X, b"STORED\r\n", "ok"),
    (b"set s 0 -9223372036854775808 1", X, b"STORED\r\n", "ok"),
    (b"set s 0 -9223372036854775809 1", None, FORMAT, "err"),
    (b"set s 0 9223372036854775808 1", None, FORMAT, "err"),
    (b"set s 0 0 abc", None, FORMAT, "err"),
    (b"set s 0 0 abc noreply", None, b"", "err"),
    (b"set s 0 0 noreply", None, b"", "err"),
    (b"set s 0 0 -1", None, FORMAT, "err"),
    (b"set s 0 0 -1", X, FORMAT + ERROR, "err"),   # the block is a command
    (b"set s 0 0 +1", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 0x1", None, FORMAT, "err"),
    (b"set s 0 0 1\tjunk", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 \t1", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 4294967297", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 -4294967295", X, b"STORED\r\n", "ok"),
    (b"set s 0 0 2147483648", None, FORMAT, "err"),
    (b"set s 0 0 2147483646", None, FORMAT, "err"),
    (b"add", None, ERROR, "err"),
    (b"add s 0 0", None, ERROR, "err"),
    (b"add a 0 0 1 noreply", X, b"", "ok"),
    (b"replace k 0 0 1", X, b"NOT_STORED\r\n", "ok"),
    (b"replace k 0 0 -1", None, FORMAT, "err"),
    (b"append k 0 0 1", X, b"NOT_STORED\r\n", "ok"),
    (b"append k 0 0 1 2 3", None, ERROR, "err"),
    (b"prepend k 0 0 1", X, b"NOT_STORED\r\n", "ok"),
    (b"prepend k x 0 1 noreply", None, b"", "err"),
    # -- cas
    (b"cas k 0 0 1 5", X, b"NOT_FOUND\r\n", "ok"),
    (b"cas k 0 0 1 5 noreply", X, b"", "ok"),
    (b"cas k 0 0 1 5 junk", X, b"NOT_FOUND\r\n", "ok"),
    (b"cas k 0 0 1 18446744073709551615", X, b"NOT_FOUND\r\n", "ok"),
    (b"cas k 0 0 1", None, ERROR, "err"),
    (b"cas k 0 0 1 noreply", None, b"", "err"),
    (b"cas k 0 0 1 -5", None, FORMAT, "err"),
    (b"cas k 0 0 1 x", None, FORMAT, "err"),
    (b"cas k 0 0 1 18446744073709551616", None, FORMAT, "err"),
    (b"cas k 0 0 1 5 noreply junk", None, ERROR, "err"),
    (b"cas k 0 0 -1 5", None, FORMAT, "err"),
    # -- delete
    (b"delete", None, ERROR, "err"),
    (b"delete k", None, b"NOT_FOUND\r\n", "ok"),
    (b"delete k 0", None, b"NOT_FOUND\r\n", "ok"),
    (b"delete k noreply", None, b"", "ok"),
    (b"delete k  noreply", None, b"", "ok"),
    (b"delete k 0 noreply", None, b"", "ok"),
    (b"delete k 5", None, DELETE_USAGE, "err"),
    (b"delete k 00", None, DELETE_USAGE, "err"),
    (b"delete k -0", None, DELETE_USAGE, "err"),
    (b"delete k 5 noreply", None, b"", "err"),
    (b"delete k noreply 0", None, DELETE_USAGE, "err"),
    (b"delete k 0 0", None, DELETE_USAGE, "err"),
    (b"delete k 0 0 0", None, ERROR, "err"),
    (b"delete " + Z250, None, b"NOT_FOUND\r\n", "ok"),
    (b"delete " + Y251, None, FORMAT, "err"),
    (b"delete " + Y251 + b" noreply", None, b"", "err"),
    (b"delete " + Y251 + b" 5", None, DELETE_USAGE, "err"),
    # -- incr, decr
    (b"incr k 1", None, b"NOT_FOUND\r\n", "ok"),
    (b"decr k 1", None, b"NOT_FOUND\r\n", "ok"),
    (b"incr k 1 junk", None, b"NOT_FOUND\r\n", "ok"),
    (b"incr k 1 noreply", None, b"", "ok"),
    (b"decr k -0", None, b"NOT_FOUND\r\n", "ok"),
    (b"incr k 18446744073709551615", None, b"NOT_FOUND\r\n", "ok"),
    (b"incr k 18446744073709551616", None, DELTA, "err"),
    (b"incr k abc", None, DELTA, "err"),
    (b"incr k -1", None, DELTA, "err"),
    (b"incr k 1x", None, DELTA, "err"),
    (b"incr k noreply", None, b"", "err"),
    (b"incr k", None, ERROR, "err"),
    (b"decr k", None, ERROR, "err"),
    (b"decr k 1 2 3", None, ERROR, "err"),
    (b"incr " + Y251 + b" 1", None, FORMAT, "err"),
    (b"incr " + Y251 + b" abc", None, FORMAT, "err"),
    # -- touch
    (b"touch k 10", None, b"NOT_FOUND\r\n", "ok"),
    (b"touch k 10 junk", None, b"NOT_FOUND\r\n", "ok"),
    (b"touch k 10 noreply", None, b"", "ok"),
    (b"touch k 99999999999", None, b"NOT_FOUND\r\n", "ok"),
    (b"touch k abc", None, EXPTIME, "err"),
    (b"touch k noreply", None, b"", "err"),
    (b"touch k", None, ERROR, "err"),
    (b"touch k 1 2 3", None, ERROR, "err"),
    (b"touch " + Y251 + b" x", None, FORMAT, "err"),
    # -- flush_all
    (b"flush_all", None, b"OK\r\n", "ok"),
    (b"flush_all 0", None, b"OK\r\n", "ok"),
    (b"flush_all -1", None, b"OK\r\n", "ok"),
    (b"flush_all 10", None, b"OK\r\n", "ok"),
    (b"flush_all 99999999999", None, b"OK\r\n", "ok"),
    (b"flush_all noreply", None, b"", "ok"),
    (b"flush_all 10 noreply", None, b"", "ok"),
    (b"flush_all 10 junk", None, b"OK\r\n", "ok"),
    (b"flush_all abc", None, EXPTIME, "err"),
    (b"flush_all abc noreply", None, b"", "err"),
    (b"flush_all noreply 10", None, EXPTIME, "err"),
    (b"flush_all noreply noreply", None, b"", "err"),
    (b"flush_all 999999999999999999999", None, EXPTIME, "err"),
    (b"flush_all 1 2 3", None, ERROR, "err"),
    (b"flush_all 0", None, b"OK\r\n", "ok"),  # undo the delayed flushes
    # -- verbosity
    (b"verbosity", None, ERROR, "err"),
    (b"verbosity 1", None, b"OK\r\n", "ok"),
    (b"verbosity 1 noreply", None, b"", "ok"),
    (b"verbosity 1 2", None, b"OK\r\n", "ok"),
    (b"verbosity 4294967296", None, b"OK\r\n", "ok"),
    (b"verbosity abc", None, FORMAT, "err"),
    (b"verbosity -1", None, FORMAT, "err"),
    (b"verbosity noreply", None, b"", "err"),
    (b"verbosity 1 2 3", None, ERROR, "err"),
    (b"verbosity 0", None, b"OK\r\n", "ok"),
]


def exchange(addr, line, data, timeout=5.0):
    """Send one case on a fresh connection; return (reply, closed)."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(line + b"\r\n" + (data or b"") + b"version\r\n")
        buf = b""
        while True:
            if buf.endswith(b"\r\n"):
                last = buf.rfind(b"\r\n", 0, len(buf) - 2)
                start = last + 2 if last >= 0 else 0
                if buf[start:].startswith(b"VERSION "):
                    return buf[:start], False
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return buf, True
            buf += chunk




def start_memcached():
    port = free_port()
    argv = [MEMCACHED, "-p", str(port), "-U", "0", "-l", "127.0.0.1"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, ("127.0.0.1", port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError("memcached did not start on port %d" % port)
            time.sleep(0.02)


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def memcached():
    if not os.access(MEMCACHED, os.X_OK):
        pytest.skip("no %s" % MEMCACHED)
    proc, addr = start_memcached()
    yield addr
    stop(proc)


def case_id(case):
    line = case[0]
    text = repr(line[:40])[2:-1] + ("...%d" % len(line) if len(line) > 40 else "")
    return text + ("+data" if case[1] else "")


# Cases share one server and run in order (flush_all, verbosity).
@pytest.mark.parametrize("line,data,reply,outcome", CASES,
                         ids=[case_id(c) for c in CASES])
def test_memcached_answers(memcached, line, data, reply, outcome):
    got, closed = exchange(memcached, line, data)
    assert (got, closed) == (reply, outcome == "close")


# A line still without "\n" past 2048 bytes closes the connection unless it
# is a get/gets (proto_line_may_grow); the same prefixes are in test_proto.c.
LONG_LINES = [
    (b"get ", True),
    (b"gets ", True),
    (b" " * 100 + b"get ", True),
    (b" " * 101 + b"get ", False),
    (b"gat 1 ", False),
    (b"bget ", False),
    (b"get\t", False),
    (b"set ", False),
]


@pytest.mark.parametrize("prefix,grows", LONG_LINES,
                         ids=[case_id((p, None)) for p, _ in LONG_LINES])
def test_memcached_lets_only_get_lines_grow(memcached, prefix, grows):
    line = prefix + b" ".join(b"k%d" % i for i in range(600))
    assert len(line) > 2048
    with socket.create_connection(memcached, timeout=5) as s:
        s.sendall(line)
        time.sleep(0.2)         # let the server see the unfinished line
        try:
            s.sendall(b"\r\nversion\r\n")
            buf = b""
            while b"VERSION " not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except (BrokenPipeError, ConnectionResetError):
            buf = b""
    assert (buf.startswith(b"END\r\nVERSION ")) == grows


# ---- the C table in tests/unit/test_proto.c --------------------------------

def c_string(b):
    """A C string literal for bytes b, split into lines of at most ~64 bytes."""
    out, piece = [], ""
    for c in b:
        if c == 0x0d:
            piece += "\\r"
        elif c == 0x0a:
            piece += "\\n"
        elif c == 0x09:
            piece += "\\t"
        elif c in (0x22, 0x5c):
            piece += "\\" + chr(c)
        elif 0x20 <= c < 0x7f:
            piece += chr(c)
        else:
            piece += "\\%03o" % c
        if len(piece) >= 64:
            out.append(piece)
            piece = ""
    out.append(piece)
    return "\n          ".join('"%s"' % p for p in out)


C_LINE_MAX = 1000   # longer lines get their own tests in test_proto.c


def emit_c():
    rows = []
    for line, data, reply, outcome in CASES:
        if len(line) > C_LINE_MAX:
            continue
        args = (c_string(line), "NULL" if data is None else c_string(data),
                c_string(reply), "MC_" + outcome.upper())
        row = "    V(%s, %s, %s, %s)," % args
        if len(row) > 79 or "\n" in row[:-1]:
            row = "    V(%s,\n      %s, %s, %s)," % args
        rows.append(row)
    return ("/* BEGIN memcached vectors: generated by\n"
            " * /usr/bin/python3 tests/integration/test_proto_memcached.py"
            " --emit-c\n"
            " * from the cases it checks against memcached 1.6.18 (lines up"
            " to %d bytes).\n"
            " * Do not edit. */\n"
            "static const struct mc_vector mc_vectors[] = {\n"
            % C_LINE_MAX
            + "\n".join(rows) + "\n};\n/* END memcached vectors */\n")


def test_unit_table_is_current():
    with open(UNIT_TEST, encoding="utf-8") as f:
        assert emit_c() in f.read(), (
            "tests/unit/test_proto.c is stale: regenerate its table with "
            "--emit-c")


if __name__ == "__main__":
    if sys.argv[1:] == ["--emit-c"]:
        sys.stdout.write(emit_c())
    else:
        sys.exit(pytest.main([__file__] + sys.argv[1:]))
