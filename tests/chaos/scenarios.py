"""Resize scenarios for the chaos checker: each starts a fleet, runs the load,
disrupts it, waits for the fleet to converge and returns the checker's Result.

Every scenario takes the pytest `cluster` (tests/integration/conftest.py's
Cluster), so all servers are stopped when the test ends, whatever happens.
"""
import signal
import threading
import time
import traceback

from checker import (CONVERGE_TIMEOUT, PREFIX, Checker, Conn, Fleet, NotSent, Worker,
                     effective_liveness_ms, locate, migration_status, new_value,
                     proxy_stats, wait_converged, wait_ready, wait_under_way)
from harness import wait_until

SLOW_RATE = 300     # keys/s: a migration of ~600 keys lasts a couple of seconds
RATE = 1000         # keys/s for the plain resizes: the load overlaps the moves


def setup(cluster, name, n_mc, n_proxies, workers=6, keys_per_worker=500,
          reserved=0, max_seconds=150.0, ops="text", **fleet_kw):
    fleet = Fleet(cluster, n_mc, n_proxies, **fleet_kw)
    checker = Checker(fleet, name, workers=workers, keys_per_worker=keys_per_worker,
                      reserved=reserved, max_seconds=max_seconds, ops=ops)
    return fleet, checker


def epoch(fleet):
    return migration_status(fleet)["redis_epoch"] or 0


def load_until_converged(checker, fleet, spec, tail=1.0, timeout=CONVERGE_TIMEOUT):
    """Keep the load running until the fleet converges on spec (or the
    timeout: finish() reports it), then a little longer."""
    try:
        wait_converged(fleet, spec, timeout=min(timeout, checker.deadline - time.monotonic()))
        checker.event("converged under load")
    except (TimeoutError, ValueError) as e:
        checker.event("no convergence under load: %s" % str(e)[:200])
    checker.watch = False       # the keys are home: watch_moving's count ends
    checker.sleep(tail)


def under_way(checker, fleet, base, min_moved=0, timeout=20.0):
    try:
        wait_under_way(fleet, base, timeout=timeout, min_moved=min_moved)
        checker.event("migration under way")
    except AssertionError as e:
        checker.event("migration not seen under way: %s" % e)


def start_load(checker, scripted=None, warmup=1.0):
    checker.seed()
    checker.start(scripted)
    checker.sleep(warmup)


# ------------------------------------------------------------ a, b, c

def resize(cluster, name, n_from, n_to, proxies=2, weights_from=None,
           weights_to=None, rate=RATE, ops="text"):
    """Every proxy SIGHUPed at once from n_from to n_to servers; ops is the
    Checker's op mix."""
    n_mc = max(n_from, n_to)
    fleet, c = setup(cluster, name, n_from, proxies, rate=rate, weights=weights_from,
                     ops=ops)
    if n_mc > n_from:
        fleet.add_memcached(n_mc - n_from)
    start_load(c)
    base = epoch(fleet)
    spec = fleet.spec(n_to, weights_to)
    if ops != "text":
        watch_moving(c, fleet, spec)
    c.event("SIGHUP all %d proxies -> %s" % (proxies, [(m.ident, w) for m, w in spec]))
    fleet.reload(fleet.live_idxs(), spec)
    under_way(c, fleet, base)
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


def watch_moving(c, fleet, spec):
    """From now until the fleet converges (load_until_converged), count the
    meta ops on the keys whose owner changes from proxy 0's ring to spec."""
    conf_new = fleet.cluster.workdir + "/watch-new.yml"
    with open(conf_new, "w") as f:
        f.write(fleet.config(1, spec))
    names = list(c.keys)
    before = locate(fleet.proxies[fleet.live_idxs()[0]].conf_path, names)
    after = locate(conf_new, names)
    c.moving = frozenset(n for n in names if before[n] != after[n])
    c.event("%d of %d keys change owner" % (len(c.moving), len(names)))
    c.watch = True


def grow_3_to_4(cluster, proxies=2, rate=RATE):                       # a
    return resize(cluster, "a-grow-3-to-4-p%d" % proxies, 3, 4, proxies, rate=rate)


def shrink_4_to_3(cluster, proxies=2, rate=RATE):                     # b
    return resize(cluster, "b-shrink-4-to-3-p%d" % proxies, 4, 3, proxies, rate=rate)


def reweight(cluster, proxies=2, rate=RATE):                          # c
    return resize(cluster, "c-reweight-1-to-3-p%d" % proxies, 3, 3, proxies,
                  weights_to=[1, 3, 1], rate=rate)


def meta_grow_3_to_4(cluster, proxies=2, rate=RATE):                  # o
    """a's resize under text and meta commands mixed (Checker ops="mixed")."""
    return resize(cluster, "o-meta-grow-3-to-4-p%d" % proxies, 3, 4, proxies, rate=rate,
                  ops="mixed")


# ------------------------------------------------------------ d, e

def staggered_sighup(cluster, gap, proxies=2, rate=RATE):            # d, e
    """3 -> 4, the proxies SIGHUPed one after another, gap seconds apart."""
    fleet, c = setup(cluster, "stagger-%.1fs-p%d" % (gap, proxies), 3, proxies, rate=rate)
    fleet.add_memcached(1)
    start_load(c)
    spec = fleet.spec(4)
    for i in range(proxies):
        if i:
            c.sleep(gap)
        c.event("SIGHUP proxy %d -> 4 servers" % i)
        fleet.reload([i], spec)
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


# ------------------------------------------------------------ f

def stray_proxy(cluster, rate=RATE):                                  # f
    """A third proxy started on a 5-server file while the others stay at 3,
    then stopped; later the others resize 3 -> 4 as usual."""
    fleet, c = setup(cluster, "f-stray-proxy", 3, 2, rate=rate)
    fleet.add_memcached(2)
    start_load(c)
    base = epoch(fleet)
    moved0 = sum(p[3] or 0 for p in migration_status(fleet)["proxies"])
    c.event("start proxy 2 on a 5-server file")
    stray = fleet.start_proxy(fleet.spec(5), wait=False)
    try:
        wait_ready(fleet.proxies[stray].port)
    except AssertionError as e:
        c.result.notes.append("the stray proxy never became ready: %s" % e)
    # While it runs, nothing may move: the others never agreed to 5 servers.
    stop_at = time.monotonic() + 4.0
    moved = 0
    while time.monotonic() < stop_at and c.running():
        st = migration_status(fleet)
        moved = max(moved, sum(p[3] or 0 for p in st["proxies"]) - moved0)
        time.sleep(0.2)
    c.event("stop proxy 2 (status %s)" % st)
    report = fleet.stop_proxy(stray)
    if report:
        c.result.notes.append("proxy 2 stopped with a %s" % report)
    st = migration_status(fleet)
    if (st["redis_epoch"] or 0) != base or moved:
        c.result.notes.append("the stray proxy's ring caused a migration: epoch %s -> %s, "
                              "%d keys moved" % (base, st["redis_epoch"], moved))
        c.count("unagreed_moves", max(moved, 1))
    c.sleep(2.0)
    spec = fleet.spec(4)
    c.event("SIGHUP proxies 0, 1 -> 4 servers")
    fleet.reload([0, 1], spec)
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


# ------------------------------------------------------------ g

def inflight_set(cluster, proxies=2, rate=RATE, n_inflight=40):      # g
    """Sets in flight at the switch: the old owner of some keys is SIGSTOPped,
    sets on those keys are sent (unanswered), the proxies are SIGHUPed to a
    ring where the keys move, then the old owner is SIGCONTed (before the
    proxies' 2 s backend timeout)."""
    fleet, c = setup(cluster, "g-inflight-set-p%d" % proxies, 3, proxies, rate=rate,
                     reserved=600)
    fleet.add_memcached(1)
    spec = fleet.spec(4)
    conf_new = fleet.cluster.workdir + "/g-new.yml"
    with open(conf_new, "w") as f:
        f.write(fleet.config(1, spec))
    names = [k.name for k in c.reserved]
    before = locate(fleet.proxies[0].conf_path, names)
    after = locate(conf_new, names)
    moving = [k for k in c.reserved if before[k.name] == "mc1" and after[k.name] == "mc4"]
    moving = moving[:n_inflight]
    go, sent = threading.Event(), threading.Event()

    def scripted():
        try:
            inflight()
        except Exception:
            c.crashed(traceback.format_exc())

    def inflight():
        w = Worker(c, 99, c.reserved)
        if not go.wait(60):
            return
        conn = Conn(fleet.proxies[0].port)
        pending = []
        try:
            data = b""
            for k in moving:
                if not k.certain:
                    continue
                v, f = new_value(k, w.rng), w.rng.randrange(1 << 16)
                data += b"set %s %d 0 %d\r\n%s\r\n" % (k.name, f, len(v), v)
                pending.append((k, v, f))
            t0 = c.now()
            conn.ensure()
            conn.sock.sendall(data)
            c.count("ops", len(pending))
        except (OSError, NotSent):
            pending = []
        finally:
            sent.set()
        c.event("%d sets in flight through proxy 0" % len(pending))
        broken = False
        stored = 0
        for k, v, f in pending:
            reply = None
            if not broken:
                try:
                    reply = conn.read_line()
                except (OSError, EOFError):
                    broken = True
            if reply and reply.startswith(b"SERVER_ERROR"):
                c.error()
                reply = None
            stored += reply == b"STORED\r\n"
            w.settle(k, 0, "set", reply, t0, c.now(), b"STORED\r\n",
                     lambda s, v=v, f=f, k=k: k.norm(v, f), True)
        conn.close()
        c.event("in-flight sets answered: %d STORED" % stored)
        w.run()         # catches its own exceptions

    start_load(c, scripted=scripted)
    base = epoch(fleet)
    c.event("SIGSTOP mc1 (old owner of %d moving keys)" % len(moving))
    fleet.mcs[0].proc.send_signal(signal.SIGSTOP)
    try:
        go.set()
        sent.wait(10)
        time.sleep(0.3)
        c.event("SIGHUP all -> 4 servers")
        fleet.reload(fleet.live_idxs(), spec)
        time.sleep(0.7)
    finally:
        fleet.mcs[0].proc.send_signal(signal.SIGCONT)
        c.event("SIGCONT mc1")
    under_way(c, fleet, base)
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


# ------------------------------------------------------------ h, i

def grow_to_4_under_way(c, fleet, min_moved):
    """Add a 4th memcached, start the load, SIGHUP every live proxy to the
    4-server ring and wait until at least min_moved keys moved. Returns the
    4-server spec."""
    fleet.add_memcached(1)
    start_load(c)
    base = epoch(fleet)
    spec = fleet.spec(4)
    c.event("SIGHUP all -> 4 servers")
    fleet.reload(fleet.live_idxs(), spec)
    under_way(c, fleet, base, min_moved=min_moved)
    return spec


def backend_stalls(cluster, which, proxies=2, stall=10.0, rate=SLOW_RATE):  # h, i
    """3 -> 4; once keys are moving, the destination (mc4) or a source (mc1)
    is SIGSTOPped for `stall` seconds."""
    fleet, c = setup(cluster, "%s-%s-stalls" % ("h" if which == "dest" else "i", which),
                     3, proxies, rate=rate)
    spec = grow_to_4_under_way(c, fleet, 50)
    m = fleet.mcs[3] if which == "dest" else fleet.mcs[0]
    c.event("SIGSTOP %s" % m.ident)
    m.proc.send_signal(signal.SIGSTOP)
    try:
        c.sleep(stall)
    finally:
        m.proc.send_signal(signal.SIGCONT)
        c.event("SIGCONT %s" % m.ident)
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


# ------------------------------------------------------------ j

def proxy_killed(cluster, restart_with, proxies=2, rate=SLOW_RATE):  # j
    """3 -> 4; mid-migration the mover (else proxy 0) is SIGKILLed and
    restarted with the NEW file, or with the OLD one (then, 3 s later, the
    operator fixes its file and SIGHUPs it)."""
    fleet, c = setup(cluster, "j-proxy-killed-restart-%s" % restart_with, 3, proxies,
                     rate=rate)
    old = fleet.spec(3)
    spec = grow_to_4_under_way(c, fleet, 100)
    st = migration_status(fleet)
    movers = [p[0] for p in st["proxies"] if p[1] == "moving"]
    victim = movers[0] if movers else 0
    c.event("SIGKILL proxy %d (status %s)" % (victim, st["proxies"]))
    fleet.kill_proxy(victim)
    c.sleep(1.0)
    c.event("restart proxy %d with the %s file" % (victim, restart_with))
    fleet.restart_proxy(victim, spec if restart_with == "new" else old)
    if restart_with == "old":
        c.sleep(3.0)
        c.event("SIGHUP proxy %d -> 4 servers (file fixed)" % victim)
        fleet.reload([victim], spec)
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


# ------------------------------------------------------------ k

def redis_killed(cluster, proxies=2, down=3.0, rate=SLOW_RATE):   # k
    """3 -> 4; mid-migration Redis (append-only, fsync always) is SIGKILLed
    and restarted on its port `down` seconds later."""
    fleet, c = setup(cluster, "k-redis-killed", 3, proxies, rate=rate, persist=True)
    spec = grow_to_4_under_way(c, fleet, 100)
    c.event("SIGKILL redis")
    fleet.redis.kill()
    c.sleep(down)
    fleet.redis.start()
    c.event("redis restarted")
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


# ------------------------------------------------------------ l

def proxy_frozen(cluster, when="during", proxies=2, liveness=3000, rate=SLOW_RATE):  # l
    """A proxy SIGSTOPped for twice the liveness timeout, then resumed:
    `during` a 3 -> 4 migration (the non-mover), or `before` its SIGHUP (it
    gets the SIGHUP only when it resumes)."""
    fleet, c = setup(cluster, "l-proxy-frozen-%s" % when, 3, proxies, rate=rate,
                     liveness=liveness)
    freeze = 2 * effective_liveness_ms(liveness) / 1000.0
    c.result.notes.append("liveness %d ms (asked %d), freeze %.1f s" % (
        effective_liveness_ms(liveness), liveness, freeze))
    fleet.add_memcached(1)
    start_load(c)
    base = epoch(fleet)
    spec = fleet.spec(4)
    victim = proxies - 1
    p = fleet.proxies[victim]
    if when == "before":
        c.event("SIGSTOP proxy %d" % victim)
        p.signal(signal.SIGSTOP)
        c.event("SIGHUP all -> 4 servers")
        fleet.reload(fleet.live_idxs(), spec)
        t_stop = time.monotonic()
    else:
        c.event("SIGHUP all -> 4 servers")
        fleet.reload(fleet.live_idxs(), spec)
        under_way(c, fleet, base, min_moved=20)
        st = migration_status(fleet)
        nonmovers = [q[0] for q in st["proxies"] if q[1] != "moving"]
        victim = nonmovers[-1] if nonmovers else victim
        p = fleet.proxies[victim]
        c.event("SIGSTOP proxy %d (status %s)" % (victim, st["proxies"]))
        p.signal(signal.SIGSTOP)
        t_stop = time.monotonic()
    try:
        c.sleep(freeze - (time.monotonic() - t_stop))
    finally:
        p.signal(signal.SIGCONT)
        c.event("SIGCONT proxy %d" % victim)
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


# ------------------------------------------------------------ m

def second_resize(cluster, proxies=2, rate=SLOW_RATE):            # m
    """3 -> 4, and while it moves keys, 4 -> 5."""
    fleet, c = setup(cluster, "m-second-resize", 3, proxies, rate=rate)
    fleet.add_memcached(2)
    start_load(c)
    base = epoch(fleet)
    c.event("SIGHUP all -> 4 servers")
    fleet.reload(fleet.live_idxs(), fleet.spec(4))
    under_way(c, fleet, base, min_moved=50)
    spec = fleet.spec(5)
    c.event("SIGHUP all -> 5 servers")
    fleet.reload(fleet.live_idxs(), spec)
    load_until_converged(c, fleet, spec)
    return c.finish(spec)


# ------------------------------------------------------------ n

def unindexed_keys(cluster, proxies=2, share=0.3, readonly=900, rate=RATE):  # n
    """3 -> 4, with keys written straight to the memcached that owns them,
    around the proxies, before the resize: the index never sees them, and
    the closing pass must move every one. They are `readonly` keys that a
    scripted worker only reads (through every proxy, throughout), so they
    stay unindexed until the resize, and a `share` of the workers' keys,
    which the workers then also write."""
    fleet, c = setup(cluster, "n-unindexed-keys-p%d" % proxies, 3, proxies, rate=rate,
                     reserved=readonly)
    fleet.add_memcached(1)

    def reader():
        w = Worker(c, 98, c.reserved)
        try:
            while c.running():
                w.one(w.rng.choice(c.reserved), op=w.rng.choice(("get", "mget")))
        except Exception:
            c.crashed(traceback.format_exc())
        finally:
            for conn in w.conns.values():
                conn.close()

    # The first ring record of the prefix asks for an adoption rebuild
    # (src/adopt.c): let it end first, or it would index the keys written
    # around the proxies below, and the closing pass would have none to move.
    r = fleet.redis_client()
    wait_until(lambda: (r.hget(PREFIX + ":index", "rebuild") or b"").startswith(b"done"),
               timeout=30, what="the adoption rebuild of the empty pool")
    c.seed(direct=share, direct_keys={k.name for k in c.reserved})
    c.start(scripted=reader)
    c.sleep(1.0)
    base = epoch(fleet)
    spec = fleet.spec(4)
    c.event("SIGHUP all %d proxies -> 4 servers" % proxies)
    fleet.reload(fleet.live_idxs(), spec)
    under_way(c, fleet, base)
    load_until_converged(c, fleet, spec)
    res = c.finish(spec)
    moved = []
    for i in fleet.live_idxs():
        try:
            st = proxy_stats(fleet.proxies[i].port)
            moved.append(int(st.get("migration:unindexed_moved", 0)))
        except (OSError, EOFError, ValueError):
            moved.append(None)
    res.notes.append("keys moved by the closing pass (unknown to the index), per "
                     "proxy: %s" % moved)
    if not any(moved):
        res.notes.append("the closing pass moved nothing: the scenario proves nothing")
        res.crashes += 1
    return res


# ------------------------------------------------------------ p

def upgrade_mid_migration(cluster, proxies=2, rate=SLOW_RATE):    # p
    """3 -> 4; mid-migration proxy 1 is upgraded as a binary upgrade does
    it (a new process on its port with the new file, then SIGTERM to the
    old one), so both processes are proxies of the fleet for part of the
    migration and the old one stops before it ends; then, converged, the
    fleet resizes back 4 -> 3 under the same load: a key the old process
    deleted whose tombstone outlived the first resize would read back
    after the second."""
    fleet, c = setup(cluster, "p-upgrade-mid-migration", 3, proxies, rate=rate)
    old = fleet.spec(3)
    spec = grow_to_4_under_way(c, fleet, 100)
    c.event("upgrade proxy 1: a new process on its port, then SIGTERM to the old one")
    report = fleet.upgrade_proxy(1, spec)
    if report:
        c.crashed("the old process of proxy 1: " + report)
    c.event("old process of proxy 1 stopped")
    load_until_converged(c, fleet, spec)
    base = epoch(fleet)
    c.event("SIGHUP all -> 3 servers")
    fleet.reload(fleet.live_idxs(), old)
    under_way(c, fleet, base)
    load_until_converged(c, fleet, old)
    return c.finish(old)


# ------------------------------------------------------------ q

def clients_move_between_threads(cluster, proxies=2, rate=SLOW_RATE, flips=16):  # q
    """3 -> 4 with every proxy on two threads; while keys move, every proxy
    is told (SIGHUP) to serve on one thread, then on two, over and over, so
    the workers' connections are handed from thread to thread of their proxy
    all through the migration (docs/ARCHITECTURE.md, "Threads: how many
    serve"), between the home thread, which runs the migration, and the
    other, which forwards to it."""
    def top(n):
        return "threads: 2\nthreads_active: %d\n" % n
    fleet, c = setup(cluster, "q-clients-move-between-threads", 3, proxies, rate=rate,
                     top=top(2))
    spec = grow_to_4_under_way(c, fleet, 20)
    for i in range(flips):
        n = 1 if i % 2 == 0 else 2
        fleet.top = top(n)
        c.event("SIGHUP all: threads_active %d" % n)
        fleet.reload(fleet.live_idxs(), spec)
        c.sleep(0.3)
    load_until_converged(c, fleet, spec)
    res = c.finish(spec)
    moved = []
    for i in fleet.live_idxs():
        try:
            moved.append(int(proxy_stats(fleet.proxies[i].port)["threads:clients_moved"]))
        except (OSError, EOFError, ValueError, KeyError):
            moved.append(None)
    res.notes.append("clients handed between threads, per proxy: %s" % moved)
    if not all(moved):
        res.notes.append("a proxy moved no client: the scenario proves nothing")
        res.crashes += 1
    return res
