"""The index writer's deadline (index.reply_timeout, src/index.c
idx_on_watch) against a Redis that is alive but answers nothing: what the
writer says about it (docs/ARCHITECTURE.md, "The index")."""
import signal

from pymemcache.client.base import Client

from harness import free_port, pool_yaml, proxy_stats, stats_until, wait_until

PREFIX = "rp:cache"


def conf(port, mcs, rs, timeout_ms, **index):
    servers = [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]
    idx = {"redis": "127.0.0.1:%d" % rs.port, "sweep_rate": 0, "reply_timeout": timeout_ms}
    idx.update(index)
    return pool_yaml("cache", port, servers, hash="fnv1a_64", index=idx)


def idle(port, timeout=20):
    return stats_until(port, lambda s: s["index:queued"] == "0" and
                       s["index:inflight"] == "0" and s["index:state"] == "ready",
                       timeout=timeout, what="the index writer to drain")


def test_a_connection_to_a_stopped_redis_is_not_called_healthy(cluster):
    """A stopped Redis still completes TCP handshakes (its kernel's backlog):
    a writer with no AUTH or SELECT to wait for is connected at once, but
    Redis has said nothing. Its health stays what the deadline made it
    (disconnected, and why) until Redis answers: no "healthy again" per
    reconnection, no healthz flapping to ok while Redis is stopped."""
    mcs = cluster.memcached(2)
    rs = cluster.redis()
    port = free_port()
    p = cluster.proxy(conf(port, mcs, rs, 300), port=port)
    c = Client(("127.0.0.1", port), timeout=10)
    c.set("before", b"v", noreply=False)
    before = int(idle(port)["index:disconnects"])
    rs.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(20):
            assert c.set("frozen%d" % i, b"v", noreply=False)
        # the first connection given up, then two made to the backlog and
        # given up in turn
        wait_until(lambda: int(proxy_stats(port)["index:disconnects"]) >= before + 3,
                   timeout=20, interval=0.05, what="three deadlines")
        st = proxy_stats(port)
        assert st["index:health"] == "disconnected", st
        assert "answered nothing for 300 ms" in st["index:health_reason"], st
        assert "index healthy again" not in p.log()
    finally:
        rs.proc.send_signal(signal.SIGCONT)
    # once Redis answers, the writer is healthy again, and says so once
    c.set("after", b"v", noreply=False)
    st = wait_until(lambda: (lambda s: s if s["index:health"] == "ok" else None)(
        proxy_stats(port)), timeout=20, what="health ok once Redis answers")
    idle(port)
    assert p.log().count("index healthy again") == 1
    c.close()
