"""ringproxy as a drop-in for nutcracker: its command line (Debian's unit
file and init script run as they are), twemproxy's `listen: /path mode`, the
stats port's JSON next to a real nutcracker's, `stats settings`, and
counters that a client's `stats reset` does not move backwards."""
import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess

import pytest

from harness import (RINGPROXY, Nutcracker, Wire, check_sanitizers, free_port,
                     locate, pool_yaml, recv_to_eof, run_cli, stats_port_json, wait_port,
                     wait_until)
from test_admin import metrics, value

UNIT = "/lib/systemd/system/nutcracker.service"
DEFAULTS = "/etc/default/nutcracker"
INIT = "/etc/init.d/nutcracker"
STATS_DEFAULT, ADMIN_DEFAULT = 22222, 22223

needs_nutcracker = pytest.mark.skipif(not Nutcracker.installed(),
                                      reason="nutcracker is not installed")


def read_stats(port, host="127.0.0.1"):
    """What a twemproxy monitor does: connect, read to EOF, parse."""
    return stats_port_json(port, host)


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def unit_exec_start():
    """ExecStart of Debian's nutcracker.service, as a list of words."""
    with open(UNIT) as f:
        for line in f:
            if line.startswith("ExecStart="):
                return shlex.split(line.split("=", 1)[1])
    raise AssertionError("no ExecStart in " + UNIT)


def expand_unit(words, env):
    """systemd's expansion: $VAR (unbraced) splits into words, the binary is
    replaced by ringproxy."""
    out = [RINGPROXY]
    for w in words[1:]:
        m = re.fullmatch(r"\$(\w+)", w)
        out += env.get(m.group(1), "").split() if m else [w]
    return out


def debian_daemon_opts():
    """DAEMON_OPTS as /etc/default/nutcracker sets it (a shell file)."""
    res = subprocess.run(["sh", "-c", '. "$1"; printf %s "$DAEMON_OPTS"', "sh", DEFAULTS],
                         capture_output=True, text=True, check=True)
    return res.stdout


def one_pool(port, mcs, extra=""):
    return pool_yaml("alpha", port, [(m.addr, 1, "mc%d" % (i + 1))
                                     for i, m in enumerate(mcs)]) + extra


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


# --- the command line -----------------------------------------------------------

@pytest.mark.skipif(not os.path.exists(UNIT) or not os.path.exists(DEFAULTS),
                    reason="Debian's nutcracker package is not installed")
def test_debian_unit_file_runs_ringproxy_as_it_runs_nutcracker(cluster, tmp_path):
    """The unit's ExecStart with the package's own DAEMON_OPTS (empty: every
    default), from a directory holding conf/ringproxy.yml; then with every
    flag nutcracker takes."""
    mcs = cluster.memcached(2)
    port = free_port()
    os.makedirs(tmp_path / "conf")
    (tmp_path / "conf" / "ringproxy.yml").write_text(one_pool(port, mcs))
    words = unit_exec_start()
    assert os.path.basename(words[0]) == "nutcracker" and "$DAEMON_OPTS" in words

    if not (port_free(STATS_DEFAULT) and port_free(ADMIN_DEFAULT)):
        pytest.skip("ports 22222/22223 are taken on this machine")
    argv = expand_unit(words, {"DAEMON_OPTS": debian_daemon_opts()})
    log = open(tmp_path / "defaults.log", "wb")
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc=proc)
        wait_port(STATS_DEFAULT, proc=proc)
        wait_port(ADMIN_DEFAULT, proc=proc)
        assert set(read_stats(STATS_DEFAULT)["alpha"]) >= {"mc1", "mc2"}
    finally:
        stop(proc)
    check_sanitizers((tmp_path / "defaults.log").read_text())

    sport, lport = free_port(), str(tmp_path / "rp.log")
    opts = ("-c %s -v 11 -o %s -s %d -a 127.0.0.1 -i 10000 -p %s -m 16384"
            % (tmp_path / "conf" / "ringproxy.yml", lport, sport, tmp_path / "rp.pid"))
    argv = expand_unit(words, {"DAEMON_OPTS": opts}) + ["-P", "0"]
    proc = subprocess.Popen(argv, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(sport, proc=proc)
        with Wire(port) as w:
            assert w.call(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
        assert int(open(tmp_path / "rp.pid").read()) == proc.pid
    finally:
        stop(proc)
    text = open(lport).read()
    check_sanitizers(text)
    assert " debug " in text                         # -v 11: the most verbose
    assert "-m 16384: accepted for nutcracker's command line" in text
    assert "-i 10000: accepted for nutcracker's command line" in text


@pytest.mark.skipif(not os.path.exists(INIT), reason="no nutcracker init script")
def test_debian_init_script_command_lines(cluster, tmp_path):
    """init.d: `$DAEMON -t $DAEMON_OPTS`, then `$DAEMON $DAEMON_OPTS -d`."""
    text = open(INIT).read()
    assert '$DAEMON -t $DAEMON_OPTS' in text and 'DAEMON_OPTS="$DAEMON_OPTS -d"' in text
    mcs = cluster.memcached(1)
    port, sport = free_port(), free_port()
    conf = tmp_path / "rp.yml"
    conf.write_text(one_pool(port, mcs))
    opts = ["-c", str(conf), "-s", str(sport), "-a", "127.0.0.1", "-P", "0",
            "-p", str(tmp_path / "rp.pid"), "-o", str(tmp_path / "rp.log")]
    res = subprocess.run([RINGPROXY, "-t"] + opts, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr
    res = subprocess.run([RINGPROXY] + opts + ["-d"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    pid = int(open(tmp_path / "rp.pid").read())
    try:
        wait_port(port)
        assert read_stats(sport)["alpha"]["mc1"]["server_eof"] == 0
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(tmp_path / "rp.pid"), what="daemon to stop")
    check_sanitizers(open(tmp_path / "rp.log").read())


def test_default_config_path(tmp_path):
    """Without -c: conf/ringproxy.yml under the working directory, else
    /etc/ringproxy/ringproxy.yml; the error names both."""
    os.makedirs(tmp_path / "conf")
    (tmp_path / "conf" / "ringproxy.yml").write_text(
        pool_yaml("alpha", free_port(), [("127.0.0.1:11211", 1, None)]))
    res = subprocess.run([RINGPROXY, "-t"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr
    if os.path.exists("/etc/ringproxy/ringproxy.yml"):
        return
    res = subprocess.run([RINGPROXY, "-t"], cwd=tmp_path / "conf", capture_output=True,
                         text=True)
    assert res.returncode == 2
    assert ("no -c FILE, and neither conf/ringproxy.yml nor "
            "/etc/ringproxy/ringproxy.yml exists") in res.stderr


@needs_nutcracker
def test_help_lists_every_flag_nutcracker_has():
    nut = subprocess.run([Nutcracker.BINARY, "-h"], capture_output=True, text=True)
    flags = re.findall(r"^\s+(-\w), (--[\w-]+)", nut.stdout + nut.stderr, re.M)
    assert len(flags) >= 13
    ours = run_cli("-h")
    assert ours.returncode == 0
    for short, long in flags:
        assert re.search(r"^\s+%s, %s\b" % (short, long), ours.stdout, re.M), (short, long)
    for short, long in (("-P", "--admin-port"), ("-A", "--admin-addr"), ("-u", "--user")):
        assert re.search(r"^\s+%s, %s\b" % (short, long), ours.stdout, re.M), (short, long)


@needs_nutcracker
def test_describe_stats_names_every_field_nutcracker_has():
    nut = subprocess.run([Nutcracker.BINARY, "-D"], capture_output=True, text=True)
    fields = re.findall(r"^\s+(\w+)\s+\"", nut.stdout + nut.stderr, re.M)
    assert "client_eof" in fields and "out_queue_bytes" in fields
    ours = run_cli("-D")
    assert ours.returncode == 0
    assert "pool stats:" in ours.stdout and "server stats:" in ours.stdout
    ours_fields = re.findall(r"^\s+(\w+)\s+\"", ours.stdout, re.M)
    assert ours_fields == fields


def test_verbosity_takes_nutcracker_levels(cluster):
    """-v 0..11 as nutcracker's; 4 (warn) hides the notice lines 5 shows."""
    for bad in ("12", "-1", "x"):
        res = run_cli("-v", bad, "-c", "/nonexistent")
        assert res.returncode == 2 and "-v takes a number from 0 to 11" in res.stderr
    mcs = cluster.memcached(1)
    qport, lport = free_port(), free_port()
    quiet = cluster.proxy(one_pool(qport, mcs), port=qport, extra=["-v", "4"])
    loud = cluster.proxy(one_pool(lport, mcs), port=lport, extra=["-v", "5"])
    for p in (quiet, loud):
        with Wire(p.port) as w:     # served: past every startup line
            assert w.call(b"set k 0 0 1\r\nv\r\n") == b"STORED\r\n"
    wait_until(lambda: " notice proxy: ringproxy" in loud.log(), what="notice lines")
    assert " notice " not in quiet.log()
    assert " info " not in loud.log()


def test_mbuf_size_and_stats_interval_are_checked(tmp_path):
    for args, why in ((["-m", "100"], "-m takes a number from 512 to 16777216"),
                      (["-i", "0"], "-i takes a number from 1 to"),
                      (["-s", "70000"], "-s takes a port from 0 to 65535"),
                      (["--admin-port", "x"], "--admin-port takes a port")):
        res = run_cli(*args, "-c", "/nonexistent")
        assert res.returncode == 2 and why in res.stderr, res.stderr


def test_status_keeps_accepting_the_old_s_flag(cluster):
    mcs = cluster.memcached(1)
    redis = cluster.redis()
    port, aport = free_port(), free_port()
    p = cluster.proxy(one_pool(port, mcs, "  index:\n    redis: %s\n" % redis.addr),
                      port=port, admin_port=aport)
    wait_port(aport, proc=p.proc)
    for flag in ("-s", "-P", "--admin-port", "--stats-port"):
        res = run_cli("status", "-c", p.conf_path, flag, aport)
        assert res.returncode == 0, res.stderr
        assert "admin port 127.0.0.1:%d" % aport in res.stdout, res.stdout


# --- listen: /path mode -----------------------------------------------------------

def unix_call(path, data):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        out = b""
        while not out.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            assert chunk, out
            out += chunk
        return out


def test_listen_on_a_unix_socket_with_twemproxys_mode(cluster, tmp_path):
    mcs = cluster.memcached(1)
    moded, plain = str(tmp_path / "moded.sock"), str(tmp_path / "plain.sock")
    port = free_port()
    text = (one_pool(port, mcs)
            + pool_yaml("moded", 0, [(mcs[0].addr, 1, None)]).replace(
                "listen: 127.0.0.1:0", "listen: %s 0666" % moded)
            + pool_yaml("plain", 0, [(mcs[0].addr, 1, None)]).replace(
                "listen: 127.0.0.1:0", "listen: " + plain))
    old = os.umask(0o077)
    try:
        p = cluster.proxy(text, port=port)
    finally:
        os.umask(old)
    st = os.stat(moded)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    assert stat.S_IMODE(os.stat(plain).st_mode) & 0o077 == 0    # the umask's
    assert unix_call(moded, b"set k 0 0 2\r\nhi\r\nget k\r\n") == \
        b"STORED\r\nVALUE k 0 2\r\nhi\r\nEND\r\n"
    assert unix_call(plain, b"get k\r\n") == b"VALUE k 0 2\r\nhi\r\nEND\r\n"
    # A reload that changes only the mode keeps the socket and sets the mode.
    p.write_config(text.replace(" 0666", " 0660"))
    p.signal(signal.SIGHUP)
    wait_until(lambda: stat.S_IMODE(os.stat(moded).st_mode) == 0o660, what="mode 0660")
    assert unix_call(moded, b"get k\r\n") == b"VALUE k 0 2\r\nhi\r\nEND\r\n"
    p.stop()
    assert not os.path.exists(moded)


def test_test_conf_rejects_a_bad_socket_mode(tmp_path):
    conf = tmp_path / "bad.yml"
    conf.write_text("alpha:\n  listen: /run/rp/rp.sock 0999\n  servers:\n"
                    "    - 127.0.0.1:11211:1\n")
    res = run_cli("-t", "-c", conf)
    assert res.returncode == 1
    assert "bad.yml:2:11: listen: bad mode '0999' for unix socket '/run/rp/rp.sock'" \
        in res.stderr


# --- the stats port ---------------------------------------------------------------

class FastNutcracker(Nutcracker):
    """nutcracker aggregating its stats every 100 ms instead of every 30 s."""

    def argv(self):
        return super().argv() + ["-i", "100"]


def server_counts(stats, pool, field):
    return {k: v[field] for k, v in stats[pool].items() if isinstance(v, dict)}


@needs_nutcracker
def test_stats_port_speaks_nutcrackers_json(cluster):
    """Every key nutcracker's stats JSON has at each level, and per server
    the same request counts as nutcracker for the same traffic."""
    mcs = cluster.memcached(3)
    nport, rport = free_port(), free_port()
    nut = FastNutcracker(cluster.workdir, one_pool(nport, mcs), nport)
    nut.start()
    cluster.started.append(nut)
    rp = cluster.proxy(one_pool(rport, mcs), port=rport, stats_port=free_port())
    wait_port(rp.stats_port, proc=rp.proc)

    before = wait_until(lambda: (lambda s: s["alpha"]["client_connections"] == 0 and s)(
        read_stats(rp.stats_port)), what="the start's probe connection to close")
    conns = [Wire(rport) for _ in range(3)]
    for port in (nport, rport):
        with Wire(port) as w:
            for i in range(150):
                assert w.call(b"set key%d 0 0 1\r\nv\r\n" % i) == b"STORED\r\n"
                assert w.call(b"get key%d\r\n" % i).startswith(b"VALUE")
    wait_until(lambda: sum(server_counts(read_stats(nut.stats_port), "alpha",
                                         "responses").values()) == 300,
               what="nutcracker's stats to count the traffic")
    rs = wait_until(lambda: (lambda s: s["alpha"]["client_connections"] == 3 and s)(
        read_stats(rp.stats_port)), what="the traffic's client to close")
    ns = read_stats(nut.stats_port)

    top = {k for k, v in ns.items() if not isinstance(v, dict)}
    assert top <= set(rs) and rs["service"] == "ringproxy"
    pool_keys = {k for k, v in ns["alpha"].items() if not isinstance(v, dict)}
    assert pool_keys <= set(rs["alpha"])
    assert set(server_counts(rs, "alpha", "requests")) == {"mc1", "mc2", "mc3"}
    for name in ("mc1", "mc2", "mc3"):
        assert set(ns["alpha"][name]) <= set(rs["alpha"][name])
        assert all(isinstance(v, int) for v in rs["alpha"][name].values())
    # same ring, same traffic: the same requests on each server
    assert server_counts(rs, "alpha", "requests") == server_counts(ns, "alpha", "requests")
    assert server_counts(rs, "alpha", "responses") == server_counts(ns, "alpha", "responses")
    # the same lines both ways: the same bytes (each proxy forwards them as sent)
    for field in ("request_bytes", "response_bytes"):
        assert server_counts(rs, "alpha", field) == server_counts(ns, "alpha", field)
        assert sum(server_counts(rs, "alpha", field).values()) > 0
    # the home thread's live connections (docs/ARCHITECTURE.md, "Threads":
    # with RINGPROXY_THREADS=N another thread may have served them all)
    threads = int(os.environ.get("RINGPROXY_THREADS") or 1)
    live = server_counts(rs, "alpha", "server_connections").values()
    assert all(v == 1 for v in live) if threads == 1 else all(v <= 1 for v in live)

    # numbers that move with traffic, and connections as they open and close
    assert rs["total_connections"] == before["total_connections"] + 4
    assert rs["timestamp"] >= before["timestamp"] and rs["uptime"] >= before["uptime"]
    # a multi-get: one share per server holding its keys
    assert rs["alpha"]["fragments"] == 0
    keys = ["key%d" % i for i in range(30)]
    with Wire(rport) as w:
        reply = w.call(("get %s\r\n" % " ".join(keys)).encode())
        assert reply.count(b"VALUE ") == 30
    holders = set(locate(rp.conf_path, keys).values())
    assert read_stats(rp.stats_port)["alpha"]["fragments"] == len(holders) > 1
    for w in conns:
        w.close()
    wait_until(lambda: read_stats(rp.stats_port)["alpha"]["client_connections"] == 0,
               what="closed clients to leave client_connections")
    after = read_stats(rp.stats_port)
    assert after["alpha"]["client_eof"] == before["alpha"]["client_eof"] + 5
    assert after["curr_connections"] == 0


def test_stats_port_counts_failures_and_takes_a_stats_reset(cluster):
    """A stopped backend shows in forward_error and server_err; a client's
    `stats reset` lowers neither the stats port nor /metrics."""
    mcs = cluster.memcached(1)
    port = free_port()
    p = cluster.proxy(one_pool(port, mcs, "  timeout: 500\n"), port=port,
                      admin_port=free_port(), stats_port=free_port())
    wait_port(p.stats_port, proc=p.proc)
    with Wire(port) as w:
        for i in range(20):
            assert w.call(b"set k%d 0 0 1\r\nv\r\n" % i) == b"STORED\r\n"
        fam = metrics(p.admin_port)
        assert "ringproxy_pool_total_connections_total" not in fam
        conns = value(fam, "ringproxy_pool_connections_total", pool="alpha")
        reqs = value(fam, "ringproxy_pool_requests_total", pool="alpha")
        assert conns >= 1 and reqs >= 20         # (the start's probe too)
        assert w.call(b"stats reset\r\n") == b"RESET\r\n"
        stats = w.call(b"stats\r\n").decode()
        assert "STAT requests 1\r\n" in stats                # the reset itself
        assert "STAT total_connections 0\r\n" in stats
        assert "STAT curr_connections 1\r\n" in stats         # a gauge: kept
        fam = metrics(p.admin_port)
        assert value(fam, "ringproxy_pool_connections_total", pool="alpha") == conns
        assert value(fam, "ringproxy_pool_requests_total", pool="alpha") >= reqs + 2
        assert read_stats(p.stats_port)["alpha"]["mc1"]["requests"] >= 20
        mcs[0].kill()
        assert w.call(b"get k1\r\n").startswith(b"SERVER_ERROR")
    assert read_stats(p.stats_port)["alpha"]["forward_error"] >= 1
    wait_until(lambda: read_stats(p.stats_port)["alpha"]["mc1"]["server_eof"] == 1,
               what="the killed server's EOF")


    def refused():      # a request past the backoff tries to connect again
        with Wire(port) as w2:
            assert w2.call(b"get k1\r\n").startswith(b"SERVER_ERROR")
        return read_stats(p.stats_port)["alpha"]["mc1"]["server_err"] >= 1
    wait_until(refused, interval=0.2, what="a connection attempt to fail")


def test_stats_port_answers_many_clients_and_reads_nothing(cluster):
    mcs = cluster.memcached(1)
    port = free_port()
    p = cluster.proxy(one_pool(port, mcs), port=port, stats_port=free_port())
    wait_port(p.stats_port, proc=p.proc)
    socks = [socket.create_connection(("127.0.0.1", p.stats_port)) for _ in range(100)]
    for s in socks:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")     # ignored: it only writes
    answered = 0
    for s in socks:
        s.settimeout(10)
        data = recv_to_eof(s)
        s.close()
        if data:
            assert json.loads(data)["alpha"]["mc1"]["server_eof"] == 0
            answered += 1
    assert answered >= 64
    assert read_stats(p.stats_port)["service"] == "ringproxy"


def test_stats_port_taken_is_a_startup_error(cluster):
    mcs = cluster.memcached(1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        port = free_port()
        p = cluster.proxy(one_pool(port, mcs), port=port, stats_port=taken, start=False)
        p.extra = ["-a", "127.0.0.1"]
        with pytest.raises(RuntimeError):
            p.start(attempts=1)
        assert p.proc.wait(10) == 1
        assert "stats port: cannot listen on 127.0.0.1:%d" % taken in p.log()


# --- stats settings ---------------------------------------------------------------

def test_stats_settings_lists_the_pools_settings(cluster):
    mcs = cluster.memcached(2)
    redis = cluster.redis()
    port = free_port()
    cluster.proxy(one_pool(port, mcs, "  hash_tag: \"{}\"\n  index:\n"
                           "    redis: %s\n" % redis.addr), port=port)
    with Wire(port) as w:
        reply = w.call(b"stats settings\r\n").decode()
    assert reply.endswith("END\r\n")
    lines = dict(line.split(" ", 2)[1:] for line in reply.split("\r\n")
                 if line.startswith("STAT "))
    assert lines["pool"] == "alpha"
    assert lines["listen"] == "127.0.0.1:%d" % port
    assert lines["hash"] == "fnv1a_64" and lines["distribution"] == "ketama"
    assert lines["hash_tag"] == "{}" and lines["servers"] == "2"
    assert lines["timeout"] == "5000" and lines["auto_eject_hosts"] == "false"
    assert lines["item_size_max"] == str(1 << 20)
    assert lines["index:redis"] == redis.addr and lines["index:prefix"] == "rp:alpha"
    assert lines["migration:rate"] == "50000"
    assert "index:password" not in lines      # test_config.c: never shown
