"""The meta protocol (issue 12): a battery of meta commands against real
memcached, the differential test of src/meta.c's parser, and (once the
proxy serves meta commands) the same battery through the proxy.

BATTERY is a list of steps, run in order on one connection per target. A
step is the bytes of one or more commands (lines and ms data blocks); after
each step the runner sends "version" and reads replies (VA values by their
length) up to the "VERSION ..." line: that is the step's answer. "{cas}" in
a step is replaced by the last CAS value a `c` flag returned on that
connection, "{oldcas}" by one less.

Answers are compared after normalise(): CAS values (c flag, ME's cas=) and
the clock's readings (t and l flags, ME's exp= and la=) are masked; every
other byte must be identical.

- test_battery_is_deterministic: two fresh memcached, same battery, same
  answers: the battery and normalise() are sound.
- test_parser_agrees_with_memcached: for every single-command step,
  meta.c's verdict (tests/integration/meta_verdict.c) against what
  memcached answered: the same error line, the ms data block swallowed or
  not, the reply kinds q suppresses, the decoded base64 key; and the
  backend line meta_format_request() builds, sent to a second memcached in
  place of the client's line, gets the same answer.
- test_battery_through_the_proxy[1|3]: the battery through ringproxy over
  one and three backends against a direct memcached.
"""
import base64
import os
import random
import re
import socket
import subprocess

import pytest

from harness import Memcached

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")


def b64(raw):
    return base64.b64encode(raw)


# ---- the battery -------------------------------------------------------------

def ms(key, data, flags=b""):
    line = b"ms " + key + b" %d" % len(data) + (b" " + flags if flags else b"")
    return line + b"\r\n" + data + b"\r\n"


def cmd(line):
    return line + b"\r\n"


K250 = b"k" * 250
K251 = b"k" * 251
OPQ31 = b"O" + b"o" * 31            # the longest opaque token: 32 bytes
OPQ32 = b"O" + b"o" * 32


def quiet_pipeline(n, seed):
    """n mixed quiet meta commands over many keys, then mn."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        k = b"pipe%d" % rnd.randrange(60)
        op = rnd.randrange(7)
        if op == 0:
            out.append(ms(k, b"v%d" % i, b"q T0 F%d" % (i % 7)))
        elif op == 1:
            out.append(cmd(b"mg " + k + b" q v f k O%d" % i))
        elif op == 2:
            out.append(cmd(b"md " + k + b" q O%d" % i))
        elif op == 3:
            out.append(cmd(b"ma " + k + b"n q N0 J5 D3 v"))
        elif op == 4:
            out.append(cmd(b"mg " + k + b" q s"))
        elif op == 5:
            out.append(ms(k, b"%d" % i, b"q ME k"))
        else:
            out.append(cmd(b"ma " + k + b"n q MD v O%d" % i))
    out.append(cmd(b"mn"))
    return b"".join(out)


BATTERY = [
    # -- not meta, or not a known meta command
    cmd(b"mx k"), cmd(b"MG k"), cmd(b"mG k"), cmd(b"mgg k"), cmd(b"m k"),
    cmd(b"mg"), cmd(b"mg "), cmd(b"ms"), cmd(b"md"), cmd(b"ma"),
    cmd(b"mg\x00k"),
    # -- mn
    cmd(b"mn"), cmd(b"mn x y"), cmd(b" mn"), cmd(b"mn\x00 x"),
    # -- mg on misses
    cmd(b"mg miss"), cmd(b"mg miss v"), cmd(b"mg miss q"), cmd(b"mg miss q v k"),
    cmd(b"mg miss k"), cmd(b"mg miss O123"), cmd(b"mg miss k O123 q"),
    cmd(b"mg miss v f t c s k O1 h l u"), cmd(b"mg miss O"),
    cmd(b"mg  miss  v "), cmd(b"mg miss\tv"), cmd(b"mg miss vfoo"),
    cmd(b"mg miss P L"), cmd(b"mg miss Pfoo/ Lbar"),
    # -- ms
    ms(b"a", b"hello"), ms(b"a", b"hello", b"q"), ms(b"a", b"hi", b"c k O9"),
    ms(b"b", b"", b"T0 F7"), ms(b"c", b"12", b"F4294967295 T100"),
    ms(b"c2", b"x", b"F4294967296"), ms(b"a", b"new", b"ME"), ms(b"a", b"new", b"ME q"),
    ms(b"fresh", b"v", b"ME"), ms(b"a", b"-app", b"MA"), ms(b"a", b"pre-", b"MP"),
    ms(b"nokey", b"v", b"MR"), ms(b"nokey", b"v", b"MR q"), ms(b"a", b"r", b"MR"),
    ms(b"a", b"s", b"MS k"), ms(b"nokey2", b"v", b"MA"), ms(b"nokey2", b"v", b"MP q"),
    ms(b"a", b"x", b"C1"), ms(b"a", b"x", b"C1 q"), ms(b"nokey3", b"x", b"C1 q"),
    ms(b"a", b"x", b"c"), ms(b"a", b"y", b"C{cas} c"), ms(b"a", b"z", b"C{cas} q"),
    ms(b"a", b"w", b"C{cas} q c"),
    cmd(b"ms a 5 T0") + b"hello\r\n", cmd(b"ms a  5") + b"hello\r\n",
    cmd(b"ms a +1") + b"x\r\n", cmd(b"ms a 1\tjunk") + b"x\r\n",
    cmd(b"ms a 4294967297") + b"x\r\n", cmd(b"ms a 0") + b"\r\n",
    cmd(b"ms a 1") + b"xy\r\n", cmd(b"ms a 1") + b"x\r\r\n",
    cmd(b"ms a 2 q") + b"xyz\r\n",
    ms(K250, b"long"), ms(b"bin", b"x", b"I"),
    # -- ms errors: the data block is swallowed once the length was read
    cmd(b"ms a"), cmd(b"ms a x") + b"x\r\n", cmd(b"ms a -1") + b"x\r\n",
    cmd(b"ms a 1a") + b"x\r\n", cmd(b"ms a 0x1") + b"x\r\n",
    cmd(b"ms a 2147483646") + b"x\r\n", cmd(b"ms a 3 zz") + b"xyz\r\n",
    cmd(b"ms " + K251 + b" 1") + b"x\r\n",
    cmd(b"ms a 1 " + b" ".join(b"%c" % c for c in b"abcdefghijklmnopq")) + b"x\r\n",
    cmd(b"ms a 1 " + b" ".join(b"%c" % c for c in b"abcdefghijklmnop")) + b"x\r\n",
    cmd(b"ms a 1 zz") + b"x\r\n", cmd(b"ms a 1 v v") + b"x\r\n",
    cmd(b"ms a 1 F-1") + b"x\r\n", cmd(b"ms a 1 Fx") + b"x\r\n",
    cmd(b"ms a 1 F") + b"x\r\n", cmd(b"ms a 1 Tx") + b"x\r\n",
    cmd(b"ms a 1 Tx Fx") + b"x\r\n", cmd(b"ms a 1 Fx Tx") + b"x\r\n",
    cmd(b"ms a 1 Fx T1 Tx") + b"x\r\n", cmd(b"ms a 1 C") + b"x\r\n",
    cmd(b"ms a 1 Cx") + b"x\r\n", cmd(b"ms a 1 Mz") + b"x\r\n",
    cmd(b"ms a 1 M") + b"x\r\n", cmd(b"ms a 1 MEE") + b"x\r\n",
    cmd(b"ms a 1 " + OPQ32) + b"x\r\n", cmd(b"ms a 1 " + OPQ31) + b"x\r\n",
    cmd(b"ms a 1 " + OPQ32 + b" Mz") + b"x\r\n",
    cmd(b"ms a 1 q zz") + b"x\r\n", cmd(b"ms a 1 b") + b"x\r\n",
    cmd(b"ms !!!! 1 b") + b"x\r\n", cmd(b"ms a 1 \x80") + b"x\r\n",
    cmd(b"ms a 1 Dx") + b"x\r\n", cmd(b"ms a 1 Jx") + b"x\r\n",
    # a block that reads as a command: dropped once the length was read
    cmd(b"ms a 2 zz") + b"mn\r\n", cmd(b"ms a x") + b"mn\r\n",
    cmd(b"ms a 2 q") + b"mn\r\n", cmd(b"ms " + K251 + b" 2") + b"mn\r\n",
    cmd(b"ms a 2097153") + b"x" * 2097153 + b"\r\n",
    # -- mg on hits
    cmd(b"mg a v"), cmd(b"mg a"), cmd(b"mg a q"), cmd(b"mg a q v"), cmd(b"mg a k"),
    cmd(b"mg a v f s k O1 h"), cmd(b"mg a c"), cmd(b"mg a t"), cmd(b"mg b t f"),
    cmd(b"mg c t f v"), cmd(b"mg c2 f v"), cmd(b"mg a h"), cmd(b"mg a l u"),
    cmd(b"mg a T100 t"), cmd(b"mg a T0 t v"), cmd(b"mg " + K250 + b" v k"),
    cmd(b"mg a F5 C5 D5 J5 MZ I"), cmd(b"mg a " + OPQ31 + b" v"),
    cmd(b"mg fresh v q k c"),
    # -- mg errors
    cmd(b"mg " + K251), cmd(b"mg " + K251 + b" v"), cmd(b"mg a zz"),
    cmd(b"mg a x"), cmd(b"mg a 1"), cmd(b"mg a E5"), cmd(b"mg a ~"),
    cmd(b"mg a \x01"), cmd(b"mg a \x7f"), cmd(b"mg a \x80"), cmd(b"mg a v v"),
    cmd(b"mg a qq q"), cmd(b"mg a T"), cmd(b"mg a N"), cmd(b"mg a R"),
    cmd(b"mg a Nx"), cmd(b"mg a T99999999999999999999"), cmd(b"mg a Fx"),
    cmd(b"mg a Cx"), cmd(b"mg a C-1"), cmd(b"mg a Dx"), cmd(b"mg a Jx"),
    cmd(b"mg a MZZ"), cmd(b"mg a " + OPQ32), cmd(b"mg miss " + OPQ32),
    cmd(b"mg miss q " + OPQ32), cmd(b"mg a Tx Fx"), cmd(b"mg a Fx Tx"),
    cmd(b"mg a Ofoo bar"),
    cmd(b"mg a " + b" ".join(b"%c" % c for c in b"abcdefghijklmnopqr")),
    cmd(b"mg a " + b" ".join(b"P%d" % i for i in range(17))),
    cmd(b"mg a " + b" ".join(b"v P" for _ in range(1)) + b" " +
        b" ".join(b"L%d" % i for i in range(16))),
    cmd(b"mg a " + b" ".join(b"x%d" % i for i in range(30))),
    cmd(b"mg lim v f t c s k O1 q u h l N1 T1 R1 P L I"),
    cmd(b"mg lim v f t c s k O1 q u h l N1 T1 R1 P L I E"),
    cmd(b"ms lim 1 v f t c s k O1 u h l N1 T1 R1 P L") + b"x\r\n",
    cmd(b"ms lim 1 v f t c s k O1 u h l N1 T1 R1 P L I") + b"x\r\n",
    # -- base64 keys
    ms(b64(b"foo"), b"bar", b"b"), cmd(b"mg foo v"), cmd(b"mg Zm9v b v k"),
    cmd(b"mg Zm9v! b v"), cmd(b"mg !Zm9v b v k"), cmd(b"mg Zm 9v b v"),
    cmd(b"mg Zm9 b v"), cmd(b"mg A=== b"), cmd(b"mg ==== b"),
    cmd(b"mg AA== b k"), cmd(b"mg A=AA b k"), cmd(b"mg AAAA= b k"),
    cmd(b"mg AA==AAAA b k"), cmd(b"mg !!!! b"), cmd(b"mg Zm9vYmFy b k"),
    cmd(b"mg a b"), cmd(b"mg a Tx b"), cmd(b"mg !!!! b Tx"), cmd(b"mg !!!! b zz"),
    cmd(b"mg Zm9v bxyz v"), cmd(b"mg Zm9v b b"),
    ms(b64(b"with space\r\n"), b"sp", b"b k"), cmd(b"mg " + b64(b"with space\r\n") + b" b v k"),
    ms(b64(bytes(range(1, 180))), b"bin", b"b"),
    cmd(b"mg " + b64(bytes(range(1, 180))) + b" b v k s"),
    cmd(b"mg " + b64(bytes(range(1, 188))) + b" b v"),
    cmd(b"mg " + b64(bytes(range(0, 187))) + b" b v"),
    cmd(b"md " + b64(b"foo") + b" b q"), cmd(b"mg foo v"),
    cmd(b"md !!!! b"), cmd(b"ma !!!! b"), cmd(b"ma " + b64(b"cnt") + b" b N0 v"),
    cmd(b"ma cnt v"),
    # -- md
    ms(b"d1", b"x"), cmd(b"md d1"), cmd(b"md d1"), cmd(b"md d1 q"),
    ms(b"d2", b"x"), cmd(b"md d2 q"), cmd(b"mg d2 v"), ms(b"d3", b"x"),
    cmd(b"md d3 C1"), cmd(b"md d3 C1 q"), cmd(b"md d3 k O5"), cmd(b"md miss k O5 q"),
    ms(b"d4", b"x", b"c"), cmd(b"md d4 C{cas} q"), cmd(b"md d4"),
    cmd(b"md " + K251), cmd(b"md d1 v v"), cmd(b"md d1 zz"), cmd(b"md d1 Tx"),
    cmd(b"md d1 Cx"), cmd(b"md d1 " + OPQ32), cmd(b"md d1 MZZ"),
    cmd(b"md d1 " + b" ".join(b"%c" % c for c in b"abcdefghijklmnopqr")),
    cmd(b"md d1 MZ"), cmd(b"md d1 x"),
    # -- stale-while-revalidate: I, W, X, Z
    ms(b"sw", b"old", b"T100"), cmd(b"md sw I T30"), cmd(b"mg sw v c"),
    cmd(b"mg sw v"), cmd(b"mg sw v q"), ms(b"sw", b"new", b"C{oldcas} I"),
    cmd(b"mg sw v"), ms(b"sw", b"newer", b"T100"), cmd(b"mg sw v"),
    cmd(b"md sw I q"), cmd(b"mg sw v"), cmd(b"mg sw s"),
    ms(b"sw2", b"v", b"T100"), cmd(b"mg sw2 R30 v"), cmd(b"mg sw2 R200 v"),
    cmd(b"mg sw2 R200 v"), cmd(b"md sw2 I"), cmd(b"mg sw2 R200 v"),
    cmd(b"mg sw2 v"),
    # -- N: autovivify
    cmd(b"mg viv N30 v"), cmd(b"mg viv N30 v"), cmd(b"mg viv v t"),
    cmd(b"mg viv2 N30 q"), cmd(b"mg viv2 q"), cmd(b"mg viv3 N30 q v k O1"),
    ms(b"viv", b"filled", b"C1"), ms(b"viv", b"filled"), cmd(b"mg viv v N30"),
    # -- ma
    cmd(b"ma n0"), cmd(b"ma n0 q"), cmd(b"ma n0 N0"), cmd(b"ma n0 v"),
    cmd(b"ma n0 q"), cmd(b"ma n0 v q"), cmd(b"ma n0 v"), cmd(b"ma n0 D10 v"),
    cmd(b"ma n0 MD D5 v"), cmd(b"ma n0 M- D100 v"), cmd(b"ma n0 M+ v"),
    cmd(b"ma n0 MI v"), cmd(b"ma n0 D18446744073709551615 v"), cmd(b"ma n0 v"),
    cmd(b"ma n1 N0 J42 v"), cmd(b"ma n1 N0 J42 v"), cmd(b"ma n2 N0 J7 q"),
    cmd(b"ma n2 v"), cmd(b"ma n3 N0 q v"), cmd(b"ma n3 q v"), cmd(b"ma n1 t v"),
    cmd(b"ma n1 T100 t"), cmd(b"ma n1 C1"), cmd(b"ma n1 C1 q"),
    cmd(b"ma n1 c"), cmd(b"ma n1 C{cas} v"), cmd(b"ma n1 k O2 v"),
    cmd(b"ma miss k O2 q"), cmd(b"ma a v"), cmd(b"ma a q"),
    cmd(b"ma n1 Dx"), cmd(b"ma n1 D-1"), cmd(b"ma n1 D-0 v"), cmd(b"ma n1 Jx N0"),
    cmd(b"ma n1 MX"), cmd(b"ma n1 MXX"), cmd(b"ma n1 Cx"), cmd(b"ma n1 C-1"),
    cmd(b"ma n1 " + OPQ32), cmd(b"ma n1 MX " + OPQ32), cmd(b"ma " + K251),
    cmd(b"ma n1 v v"), cmd(b"ma n1 zz"),
    cmd(b"ma n1 " + b" ".join(b"%c" % c for c in b"abcdefghijklmnopqr")),
    # -- me
    cmd(b"me a"), cmd(b"me miss"), cmd(b"me"), cmd(b"me " + K251),
    cmd(b"me " + K250), cmd(b"me a x"), cmd(b"me Zm9v b"), cmd(b"me !!!! b"),
    cmd(b"me a b x"), cmd(b"me foo q"), cmd(b"me Zm9v bb"),
    ms(b64(b"meb"), b"x", b"b"), cmd(b"me " + b64(b"meb") + b" bb"),
    cmd(b"me " + b64(b"meb") + b" b"), cmd(b"me meb"), cmd(b"me " + b64(b"meb")),
    cmd(b"me " + b64(b"meb") + b" x b"), cmd(b"me " + b64(b"meb") + b" b x"),
    # -- pipelines, quiet ones ending in mn
    cmd(b"mg a v") + cmd(b"mg miss v") + cmd(b"mn"),
    cmd(b"mg a q v k") + cmd(b"mg miss q v k") + cmd(b"mg b q v k") + cmd(b"mn"),
    ms(b"p1", b"1", b"q") + ms(b"p2", b"2", b"q") + ms(b"p1", b"x", b"q ME") +
    cmd(b"mg p1 v q") + cmd(b"mg p2 v q") + cmd(b"mg p3 v q") + cmd(b"mn"),
    cmd(b"md p1 q") + cmd(b"md p1 q") + cmd(b"md p2 q O7") + cmd(b"mn"),
    cmd(b"mn") + cmd(b"mn") + cmd(b"mg miss q") + cmd(b"mn"),
    cmd(b"mg a q zz") + cmd(b"mg a q v") + cmd(b"mn"),
    cmd(b"ms p4 1 q zz") + b"x\r\n" + cmd(b"mg p4 q v") + cmd(b"mn"),
    cmd(b"get a") + cmd(b"mg a v q") + cmd(b"set t 0 0 1") + b"t\r\n" +
    cmd(b"mg t v q k") + cmd(b"delete t") + cmd(b"mn"),
    quiet_pipeline(1000, 12),
    quiet_pipeline(200, 13),
]


# ---- running it --------------------------------------------------------------

class Conn:
    def __init__(self, addr, timeout=20.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""
        self.cas = 0

    def close(self):
        self.sock.close()

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise EOFError("closed; unread %r" % self.buf[:200])
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def subst(self, data):
        data = data.replace(b"{cas}", b"%d" % self.cas)
        return data.replace(b"{oldcas}", b"%d" % max(self.cas - 1, 0))

    def step(self, data):
        """Send one step, return its answer (everything before VERSION)."""
        data = self.subst(data)
        self.sock.sendall(data + b"version\r\n")
        out = b""
        while True:
            line = self._line()
            if line.startswith(b"VERSION "):
                return out
            out += line
            m = re.search(rb"(?:^| )c(\d+)(?= |\r)", line)
            if m and line[:2] in (b"HD", b"VA", b"EN", b"NF", b"NS", b"EX"):
                self.cas = int(m.group(1))
            if line.startswith(b"VA "):
                out += self._exact(int(line.split()[1]) + 2)


def normalise(answer):
    """Mask CAS values and the clock's readings."""
    out = []
    for line in answer.split(b"\r\n"):
        if line[:2] in (b"HD", b"VA", b"EN", b"NF", b"NS", b"EX"):
            line = re.sub(rb"(?<= )c\d+(?= |$)", b"c*", line)
            line = re.sub(rb"(?<= )t\d+(?= |$)", b"t*", line)
            line = re.sub(rb"(?<= )l\d+(?= |$)", b"l*", line)
        elif line.startswith(b"ME "):
            line = re.sub(rb" cas=\d+", b" cas=*", line)
            line = re.sub(rb" la=\d+", b" la=*", line)
            line = re.sub(rb" exp=\d+", b" exp=*", line)
        out.append(line)
    return b"\r\n".join(out)


def run_battery(addr, steps=BATTERY):
    c = Conn(addr)
    try:
        return [c.step(s) for s in steps]
    finally:
        c.close()


def assert_same_answers(got, want, steps=BATTERY):
    for i, (g, w) in enumerate(zip(got, want)):
        assert normalise(g) == normalise(w), (
            "step %d %r: %r != %r" % (i, steps[i][:120], g[:300], w[:300]))
    assert len(got) == len(want)


def test_battery_is_large_enough():
    singles = [s for s in BATTERY if single_command(s) is not None]
    commands = sum(s.count(b"\r\n") for s in BATTERY)
    assert len(BATTERY) >= 200 and len(singles) >= 200 and commands >= 1200


def test_battery_is_deterministic(cluster):
    a, b = cluster.memcached(2)
    got_a = run_battery(("127.0.0.1", a.port))
    got_b = run_battery(("127.0.0.1", b.port))
    assert_same_answers(got_a, got_b)
    # the normaliser masks only what varies: most answers are byte-equal
    assert sum(x == y for x, y in zip(got_a, got_b)) > len(BATTERY) // 2


# ---- the parser's verdicts ---------------------------------------------------

@pytest.fixture(scope="module")
def verdict_tool(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("meta") / "meta_verdict")
    subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                    "-O1", "-g", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined", "-I", os.path.join(ROOT, "src"),
                    "-o", out, os.path.join(HERE, "meta_verdict.c"),
                    os.path.join(ROOT, "src", "meta.c")], check=True)
    return out


class Verdicts:
    """meta_verdict as a coprocess: one line in, its verdict out."""

    def __init__(self, tool):
        self.proc = subprocess.Popen([tool], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)

    def __call__(self, line):
        self.proc.stdin.write(line.hex().encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode("latin-1").rstrip("\n")

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


def single_command(step):
    """(line, data) if the step is one command line, or one ms line and the
    block after it (data, whatever memcached makes of it); else None."""
    line, _, rest = step.partition(b"\r\n")
    if not rest:
        return line, None
    if line.lstrip(b" ").startswith(b"ms ") and rest.count(b"\r\n") == 1 and \
            rest.endswith(b"\r\n"):
        return line, rest
    return None


KINDS = {"mg": {b"VA", b"HD", b"EN"}, "ms": {b"HD", b"NS", b"EX", b"NF"},
         "md": {b"HD", b"NF", b"EX"}, "ma": {b"HD", b"VA", b"NF", b"NS", b"EX"},
         "me": {b"ME", b"EN"}, "mn": {b"MN"}}
RSP_BITS = [b"HD", b"VA", b"EN", b"NF", b"NS", b"EX", b"MN", b"ME"]
ITEM_ERRORS = (b"CLIENT_ERROR cannot increment or decrement non-numeric value",
               b"SERVER_ERROR object too large for cache")


def parse_ok(verdict):
    _, name, quiet, drops, datalen, hkey, fmt = verdict.split(" ")
    return (name, quiet == "1", int(drops), int(datalen),
            bytes.fromhex(hkey) if hkey != "-" else b"",
            bytes.fromhex(fmt) if fmt != "-" else None)


def without_q(backend_line):
    """The backend line with its q flag left out."""
    words = backend_line.split(b" ")
    start = 3 if words[0] == b"ms" else 2
    return b" ".join(words[:start] + [w for w in words[start:] if w[:1] != b"q"])


def check_verdict(line, data, verdict, answer, loud):
    """One step's verdict against memcached's answer. loud: the answer to
    the same command without q (from a server in the same state), for a
    quiet command."""
    v = verdict.split(" ", 3)
    if v[0] == "notmeta":
        assert answer == b"ERROR\r\n"
        return
    if v[0] == "err":
        swallow, error = v[1] == "1", v[3].encode("latin-1")
        first = answer.split(b"\r\n", 1)[0]
        assert first == error, (line[:80], verdict, answer[:200])
        if data is not None:
            # a swallowed block adds nothing; else it is read as a command
            assert (answer == error + b"\r\n") == swallow, (line[:80], verdict, answer)
        else:
            assert answer == error + b"\r\n"
        return
    name, quiet, drops, datalen, hkey, _ = parse_ok(verdict)
    assert quiet == (loud is not None)
    first = answer.split(b"\r\n", 1)[0]
    if first.startswith(ITEM_ERRORS):
        return
    if data is not None and data[datalen:datalen + 2] != b"\r\n":
        assert first == b"CLIENT_ERROR bad data chunk", (line, answer)
        return
    assert not first.startswith((b"CLIENT_ERROR", b"ERROR")), (line[:80], verdict, answer)
    if quiet:
        # q drops exactly the kinds in the table; ma's N on a miss answers
        loud_kind = loud[:2]
        vivify = name == "ma" and any(w[:1] == b"N" for w in line.split(b" ")[2:])
        if answer:
            assert normalise(answer) == normalise(loud), (line[:80], answer, loud)
            assert vivify or not drops & (1 << RSP_BITS.index(loud_kind)), (line[:80], answer)
        else:
            assert drops & (1 << RSP_BITS.index(loud_kind)), (line[:80], verdict, loud)
            return
    kind = first[:2]
    assert kind in KINDS[name], (line[:80], answer)
    # the key memcached stores: k returns it (base64 again for b)
    m = re.search(rb" k(\S*)( b(?= |$))?", first)
    if m and name in ("mg", "ms", "md", "ma"):
        assert (b64(hkey) if m.group(2) else hkey) == m.group(1), (line, answer)


def test_parser_agrees_with_memcached(cluster, verdict_tool):
    """a: the client's lines; b: the backend lines meta.c builds; c: the
    backend lines without q. b and c run the same commands as a, so the
    three stay in the same state."""
    servers = cluster.memcached(3)
    ca, cb, cc = (Conn(("127.0.0.1", m.port)) for m in servers)
    verdict = Verdicts(verdict_tool)
    checked = {"ok": 0, "err": 0, "notmeta": 0, "quiet": 0}
    try:
        for step in BATTERY:
            single = single_command(step)
            if single is None:
                want = ca.step(step)
                assert_same_answers([cb.step(step), cc.step(step)], [want, want],
                                    [step, step])
                continue
            step = ca.subst(step)
            line, data = single_command(step)
            v = verdict(line)
            checked[v.split(" ")[0]] += 1
            backend = loud = None
            if v.startswith("ok "):
                backend = parse_ok(v)[5]
            tail = b"\r\n" + (data or b"")
            if backend is not None:
                got_b = cb.step(backend + tail)
                got_c = cc.step(without_q(backend) + tail)
                if parse_ok(v)[1]:
                    loud = got_c
                    checked["quiet"] += 1
            else:
                got_b, got_c = cb.step(step), cc.step(step)
            answer = ca.step(step)
            check_verdict(line, data, v, answer, loud)
            # the backend line gets the answer the client's line got
            assert normalise(got_b) == normalise(answer), (step[:100], backend)
            if loud is None:
                assert normalise(got_c) == normalise(answer), (step[:100], backend)
    finally:
        for c in (ca, cb, cc):
            c.close()
        verdict.close()
    assert checked["ok"] >= 100 and checked["err"] >= 80 and checked["quiet"] >= 30, \
        checked


# ---- through the proxy -------------------------------------------------------

@pytest.mark.parametrize("nbackends", [1, 3])
def test_battery_through_the_proxy(cluster, nbackends):
    direct, = cluster.memcached(1)
    backends = cluster.memcached(nbackends)
    proxy = cluster.pool(backends)
    want = run_battery(("127.0.0.1", direct.port))
    got = run_battery(("127.0.0.1", proxy.port))
    assert_same_answers(got, want)


def test_a_quiet_pipeline_over_three_backends_answers_in_order(cluster):
    """1,000 mixed quiet meta commands on keys spread over three backends,
    then mn: every reply memcached sends is there, in the order of the
    commands (the O tokens say which command each answers), and MN last."""
    direct, = cluster.memcached(1)
    backends = cluster.memcached(3)
    proxy = cluster.pool(backends)
    data = quiet_pipeline(1000, 99)
    want, = run_battery(("127.0.0.1", direct.port), [data])
    got, = run_battery(("127.0.0.1", proxy.port), [data])
    assert normalise(got) == normalise(want)
    lines = [l for l in got.split(b"\r\n") if l[:2] in
             (b"HD", b"VA", b"EN", b"NF", b"NS", b"EX", b"MN")]
    assert lines[-1] == b"MN" and lines.count(b"MN") == 1
    opaques = [int(m) for m in re.findall(rb"(?<= )O(\d+)(?= |\r|$)", got)]
    assert len(opaques) >= 100 and opaques == sorted(opaques)
    # the keys were spread: every backend holds some of them
    for b in backends:
        assert any(k.startswith(b"pipe") for k in b.keys()), b.port
