"""`-d` (src/proxy.c daemonize, src/main.c): relative paths keep naming the
same files once the daemon runs in "/", the exit status says whether it
started, files it creates are not writable by others, and `-u` drops root
once the listeners are bound."""
import os
import pwd
import signal
import socket
import stat
import subprocess
import time

import pytest

from harness import RINGPROXY, check_sanitizers, free_port, pool_yaml, wait_until


def daemon(workdir, *args):
    """Run ringproxy -d from workdir; returns the foreground process' result."""
    return subprocess.run([RINGPROXY, "-d", "-s", "0", "-P", "0", "-v", "6"] + list(args),
                          cwd=workdir, capture_output=True, text=True, timeout=60)


def read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Daemon:
    """A daemon started by a test, stopped (SIGTERM, then SIGKILL) after it."""

    def __init__(self, workdir, pid_file, log_file):
        self.pid_path = os.path.join(workdir, pid_file)
        self.log_path = os.path.join(workdir, log_file)
        self.pid = int(read(self.pid_path))

    def stop(self):
        if alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            try:
                wait_until(lambda: not alive(self.pid), timeout=15,
                           what="the daemon to exit")
            except AssertionError:
                os.kill(self.pid, signal.SIGKILL)
                raise
        check_sanitizers(read(self.log_path))


@pytest.fixture
def stop_later():
    daemons = []
    yield daemons.append
    for d in daemons:
        d.stop()


def conf_text(port=None, listen=None):
    text = pool_yaml("cache", port or free_port(), [("127.0.0.1:%d" % free_port(), 1, "mc1")])
    if listen is not None:
        text = text.replace("127.0.0.1:%d\n" % port, listen + "\n", 1)
    return text


def test_relative_paths_name_the_same_files_after_daemonizing(tmp_path, stop_later):
    work = str(tmp_path)
    port = free_port()
    with open(os.path.join(work, "rel.yml"), "w") as f:
        f.write(conf_text(port))
    r = daemon(work, "-c", "rel.yml", "-p", "rel.pid", "-o", "rel.log")
    assert r.returncode == 0, r.stderr
    d = Daemon(work, "rel.pid", "rel.log")
    stop_later(d)
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # serving
    assert stat.S_IMODE(os.stat(d.pid_path).st_mode) == 0o644
    assert "started" in read(d.log_path)
    # SIGHUP reads ./rel.yml, not /rel.yml
    os.kill(d.pid, signal.SIGHUP)
    wait_until(lambda: "rel.yml applied" in read(d.log_path), what="the reload")
    assert os.path.join(work, "rel.yml") in read(d.log_path)
    # SIGUSR1 reopens ./rel.log, not /rel.log
    os.rename(d.log_path, d.log_path + ".1")
    os.kill(d.pid, signal.SIGUSR1)
    wait_until(lambda: os.path.exists(d.log_path) and "log reopened" in read(d.log_path),
               what="the log reopened where it was")
    # SIGTERM removes ./rel.pid
    d.stop()
    assert not os.path.exists(d.pid_path)


def test_a_daemon_that_cannot_listen_exits_1_with_the_reason(tmp_path):
    work = str(tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    with open(os.path.join(work, "p.yml"), "w") as f:
        f.write(conf_text(port))
    t0 = time.monotonic()
    r = daemon(work, "-c", "p.yml", "-p", "p.pid")
    taken.close()
    assert r.returncode == 1
    assert "ringproxy: did not start:" in r.stderr
    assert "cannot listen on 127.0.0.1:%d: Address already in use" % port in r.stderr
    assert not os.path.exists(os.path.join(work, "p.pid"))
    assert time.monotonic() - t0 < 30


def test_an_unknown_user_is_refused_before_daemonizing(tmp_path):
    work = str(tmp_path)
    with open(os.path.join(work, "u.yml"), "w") as f:
        f.write(conf_text())
    r = daemon(work, "-c", "u.yml", "-u", "no-such-user-ringproxy")
    assert r.returncode == 1
    assert "-u no-such-user-ringproxy: no such user" in r.stderr


def test_unix_socket_and_pid_file_are_not_writable_by_others(tmp_path, stop_later):
    work = str(tmp_path)
    sock = os.path.join(work, "rp.sock")
    port = free_port()
    with open(os.path.join(work, "s.yml"), "w") as f:
        f.write(conf_text(port, listen=sock))
    r = daemon(work, "-c", "s.yml", "-p", "s.pid", "-o", "s.log")
    assert r.returncode == 0, r.stderr
    stop_later(Daemon(work, "s.pid", "s.log"))
    mode = stat.S_IMODE(os.stat(sock).st_mode)
    assert mode & 0o022 == 0, oct(mode)
    assert stat.S_IMODE(os.stat(os.path.join(work, "s.pid")).st_mode) == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="-u needs root")
def test_u_drops_root_after_binding(tmp_path, stop_later):
    work = str(tmp_path)
    os.chmod(work, 0o777)       # nobody removes the pid file at exit
    port = free_port()
    with open(os.path.join(work, "n.yml"), "w") as f:
        f.write(conf_text(port))
    r = daemon(work, "-c", "n.yml", "-p", "n.pid", "-o", "n.log", "-u", "nobody")
    assert r.returncode == 0, r.stderr
    d = Daemon(work, "n.pid", "n.log")
    stop_later(d)
    uids = next(l for l in read("/proc/%d/status" % d.pid).splitlines()
                if l.startswith("Uid:")).split()[1:]
    assert {int(u) for u in uids} == {pwd.getpwnam("nobody").pw_uid}
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
