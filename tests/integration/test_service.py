"""Running under a service manager (docs/ARCHITECTURE.md, "Running as a
service"): the sd_notify protocol that dist/systemd/ringproxy.service's
Type=notify relies on, received here by a plain AF_UNIX datagram socket
playing systemd's part (NOTIFY_SOCKET). The unit file itself is checked by
systemd-analyze in test_ops.py."""
import os
import signal
import socket
import struct

import pytest

from harness import wait_port


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket that also learns the
    sender's pid (SO_PASSCRED), as systemd does to check NotifyAccess=main."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.sock.settimeout(15.0)

    def recv(self):
        """The next message as {key: value}, and the sender's pid."""
        data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
        return fields, pid

    def expect(self, key, pid):
        fields, sender = self.recv()
        assert key in fields and fields[key] == "1", fields
        assert sender == pid, (sender, pid)
        return fields

    def nothing_more(self):
        self.sock.setblocking(False)
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        raise AssertionError("unexpected notification %r" % data)

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    n = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield n
    n.close()


def test_ready_reloading_ready_stopping(cluster, notify):
    """READY=1 once it serves, RELOADING=1 then READY=1 around a SIGHUP (an
    applied reload and a refused one alike), STOPPING=1 on SIGTERM; every
    datagram from the main pid."""
    mcs = cluster.memcached(2)
    p = cluster.pool(mcs[:1])
    pid = p.proc.pid
    notify.expect("READY", pid)

    text = open(p.conf_path).read()
    p.write_config(text.replace("  servers:\n", "  timeout: 777\n  servers:\n"))
    p.signal(signal.SIGHUP)
    fields = notify.expect("RELOADING", pid)
    assert int(fields["MONOTONIC_USEC"]) > 0, fields
    notify.expect("READY", pid)
    assert "applied" in p.log()

    p.write_config("cache: [not a pool\n")
    p.signal(signal.SIGHUP)
    notify.expect("RELOADING", pid)
    notify.expect("READY", pid)
    assert "keeping the running config" in p.log()

    assert p.stop() == 0
    notify.expect("STOPPING", pid)
    notify.nothing_more()


def test_abstract_socket(cluster, tmp_path, monkeypatch):
    """An abstract socket name (@...) as systemd may pass it."""
    name = "@ringproxy-test-%d" % os.getpid()
    n = NotifySocket("\0" + name[1:])
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", name)
        mc, = cluster.memcached(1)
        p = cluster.pool([mc])
        pid = p.proc.pid
        n.expect("READY", pid)
        assert p.stop() == 0
        n.expect("STOPPING", pid)
    finally:
        n.close()


def test_unusable_socket_still_serves(cluster, tmp_path, monkeypatch):
    """A NOTIFY_SOCKET that names nothing is logged; the proxy serves anyway."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    mc, = cluster.memcached(1)
    p = cluster.pool([mc])
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(b"version\r\n")
        assert s.recv(100).startswith(b"VERSION ")
    assert "cannot connect to NOTIFY_SOCKET" in p.log()
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path")
    q = cluster.pool([mc])
    wait_port(q.port, proc=q.proc)
    assert "is not a unix socket path" in q.log()

