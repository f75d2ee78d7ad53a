"""pytest fixtures: factories for real memcached, redis and ringproxy."""
import pytest

from harness import Memcached, Proxy, Redis, free_port, pool_yaml


@pytest.fixture
def cluster(tmp_path):
    """Start servers on free ports; everything is stopped after the test."""
    started = []

    class Cluster:
        workdir = str(tmp_path)

        def memcached(self, n=1, **kw):
            servers = [Memcached(self.workdir, **kw).start() for _ in range(n)]
            started.extend(servers)
            return servers

        def redis(self):
            r = Redis(self.workdir).start()
            started.append(r)
            return r

        def proxy(self, config_text, port=None, start=True, **kw):
            p = Proxy(self.workdir, config_text, port or free_port(), **kw)
            started.append(p)
            return p.start() if start else p

        def pool(self, mcs, port=None, name="cache", weights=None, names=True,
                 **settings):
            """A one-pool proxy over the given memcached servers."""
            port = port or free_port()
            servers = [(m.addr, (weights or [1] * len(mcs))[i],
                        "mc%d" % (i + 1) if names else None)
                       for i, m in enumerate(mcs)]
            return self.proxy(pool_yaml(name, port, servers, **settings), port=port)

    yield Cluster()
    errors = []
    for s in reversed(started):
        try:
            if isinstance(s, Proxy):
                s.stop()
            else:
                s.kill()
        except Exception as e:     # report every failure, stop everything
            errors.append(e)
    if errors:
        raise errors[0]
