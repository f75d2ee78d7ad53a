"""pytest fixtures: factories for real memcached, redis and ringproxy."""
import os

import pytest

from harness import Memcached, Proxy, Redis, built_with_tsan, free_port, pool_yaml


class Cluster:
    """Starts servers on free ports in workdir and remembers them, so that
    stop_all() stops every one (proxies gracefully, with the sanitizer-log
    check)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.started = []

    def memcached(self, n=1, **kw):
        """n memcached servers; kw go to Memcached (port=... restarts a
        server on the port of one that was killed)."""
        servers = [Memcached(self.workdir, **kw).start() for _ in range(n)]
        self.started.extend(servers)
        return servers

    def redis(self, persist=False):
        r = Redis(self.workdir, persist=persist).start()
        self.started.append(r)
        return r

    def proxy(self, config_text, port=None, start=True, **kw):
        p = Proxy(self.workdir, config_text, port or free_port(), **kw)
        self.started.append(p)
        return p.start() if start else p

    def pool(self, mcs, port=None, name="cache", weights=None, names=True,
             **settings):
        """A one-pool proxy over the given memcached servers."""
        port = port or free_port()
        servers = [(m.addr, (weights or [1] * len(mcs))[i],
                    "mc%d" % (i + 1) if names else None)
                   for i, m in enumerate(mcs)]
        return self.proxy(pool_yaml(name, port, servers, **settings), port=port)

    def stop_all(self):
        errors = []
        for s in reversed(self.started):
            try:
                if isinstance(s, Proxy):
                    s.stop()
                else:
                    s.kill()
            except Exception as e:     # report every failure, stop everything
                errors.append(e)
        self.started = []
        if errors:
            raise errors[0]


@pytest.fixture
def cluster(tmp_path):
    """Start servers on free ports; everything is stopped after the test."""
    c = Cluster(str(tmp_path))
    yield c
    c.stop_all()


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory):
    """Like `cluster`, shared by a module's tests (for servers that many
    small tests can share); stopped after the module."""
    c = Cluster(str(tmp_path_factory.mktemp("module")))
    yield c
    c.stop_all()


@pytest.fixture
def rss_faithful(monkeypatch):
    """For a test that bounds the proxy's memory by its VmRSS: AddressSanitizer
    then frees for real at once (no quarantine), so RSS shows what the proxy
    holds; under ThreadSanitizer RSS is mostly its shadow memory, so the test
    is skipped (`make tsan` runs the rest of the suite)."""
    if built_with_tsan():
        pytest.skip("VmRSS under ThreadSanitizer is its shadow memory's")
    asan = os.environ.get("ASAN_OPTIONS", "")
    monkeypatch.setenv("ASAN_OPTIONS", (asan + ":" if asan else "") +
                       "quarantine_size_mb=0:thread_local_quarantine_size_kb=0:"
                       "allocator_release_to_os_interval_ms=0")
