#!/usr/bin/python3
"""The index's Redis memory and CPU per key, layout 1 against layout 2
(docs/ARCHITECTURE.md, "The index", "What it costs").

    scripts/bench_index_mem.py [--sizes 300000,1000000] [--lengths 28,120]
                               [--long-sizes 300000] [--rounds 3] [--seconds 8]
                               [--old-bin PATH]

One Redis at its defaults (zset-max-listpack-entries 128, -value 64), three
memcached and two proxies over them, each with its own index prefix: "new"
(the build under test: RINGPROXY_BIN, else build/ringproxy) writes layout 2;
"old" writes layout 1, either the same build with `layout 1` in its ring
record, or the build given by --old-bin (a build of the commit before the
compact layout: plain ZADDs, what was measured as "today").

  memory  for each key length, keys are written through each proxy in turn
          (loadgen --populate-only, --conns x --depth in flight, keys of the
          length asked: a prefix and a number; each proxy has memcached
          servers of its own), up to each of --sizes; after each, the
          index's Redis bytes per entry it holds (writes dropped for a full
          queue are counted apart) (INFO used_memory, less what it was before that
          proxy's first key: the sets, their names, Redis's keyspace entries)
          and the share of sets that are listpacks;
  cpu     Redis CPU per indexed write over each fill (INFO used_cpu_sys +
          used_cpu_user deltas / keys written; only one proxy writes at a
          time; the proxies' syncs are in it, a few ms a second);
  load    client load (50 connections, 50% sets of new keys of 28 bytes, so
          every set is an index write) through each proxy, interleaved
          rounds of --seconds, order alternating: ops/s and Redis CPU per
          set, medians.

Lines starting "result " repeat the figures as key=value words.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
os.environ.setdefault("RINGPROXY_BIN", os.path.join(ROOT, "build", "ringproxy"))
LOADGEN = os.environ.get("LOADGEN_BIN", os.path.join(ROOT, "build", "loadgen"))

import redis  # noqa: E402
from conftest import Cluster  # noqa: E402
from harness import (Proxy, free_port, pool_yaml, proxy_stats, set_card,  # noqa: E402
                     wait_until)


class OldProxy(Proxy):
    """A proxy run from another build (--old-bin)."""
    old_bin = None

    def argv(self):
        a = super().argv()
        a[0] = self.old_bin
        return a


def config(port, mcs, redis_port, prefix):
    return pool_yaml("cache", port, [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)],
                     hash="md5", index={"redis": "127.0.0.1:%d" % redis_port,
                                        "prefix": prefix, "sweep_rate": 0})


def result(**kv):
    print("result " + " ".join("%s=%s" % (k, ("%.2f" % v) if isinstance(v, float) else v)
                               for k, v in kv.items()), flush=True)


def redis_cpu(r):
    i = r.info("cpu")
    return float(i["used_cpu_sys"]) + float(i["used_cpu_user"])


def index_idle(port):
    wait_until(lambda: (lambda st: st["index:queued"] == "0" and
                        st["index:inflight"] == "0")(proxy_stats(port)),
               timeout=120, what="index writes to drain")


def encodings(r, prefix):
    """Sets by encoding, the entries they hold, and MEMORY USAGE summed
    over them and the directories."""
    enc, entries, usage = {}, 0, 0
    for name in r.scan_iter(match=prefix + ":v*", count=1000):
        usage += r.memory_usage(name, samples=0) or 0
        if name.startswith((prefix + ":vd:").encode()):
            continue
        e = r.object("encoding", name)
        enc[e] = enc.get(e, 0) + 1
        entries += set_card(r, name)
    return enc, entries, usage


class Bench:
    def __init__(self, cluster, old_bin, conns, depth):
        self.conns, self.depth = conns, depth
        self.redis = cluster.redis()
        self.r = redis.Redis(port=self.redis.port)
        self.proxies = {}
        for name in ("old", "new"):
            # memcached of its own: the index rebuild a new prefix asks for
            # then finds nothing to add (it lists what the servers hold)
            mcs = cluster.memcached(3, memory_mb=256)
            port = free_port()
            text = config(port, mcs, self.redis.port, "bench:" + name)
            if name == "old" and old_bin:
                OldProxy.old_bin = old_bin
                p = OldProxy(cluster.workdir, text, port)
                cluster.started.append(p)
                p.start()
            else:
                p = cluster.proxy(text, port=port)
            wait_until(lambda: proxy_stats(port).get("migration:state") == "idle",
                       timeout=20, what="the proxy to serve")
            # the adoption rebuild of a new prefix over: one still listing
            # would re-add the fill's keys through the index script and
            # count in the writes' Redis CPU
            wait_until(lambda: proxy_stats(port).get("index:rebuild_state") == "done",
                       timeout=120, what="the adoption rebuild to end")
            self.proxies[name] = p
        if not old_bin:
            # the same build, told by the record to write layout 1
            self.r.hset("bench:old:ring", "layout", "1")
        self.layout = {n: int(self.r.hget("bench:%s:ring" % n, "layout") or 1)
                       for n in ("old", "new")}

    def loadgen(self, port, *args):
        out = subprocess.run([LOADGEN, "-p", str(port), "-q"] + [str(a) for a in args],
                             check=True, capture_output=True, text=True).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def fill(self, name, keys, prefix):
        """Write `keys` new keys through proxy `name`: Redis CPU seconds
        spent, and the index writes the proxy dropped (its queue full)."""
        p = self.proxies[name]
        c0 = redis_cpu(self.r)
        d0 = int(proxy_stats(p.port)["index:dropped"])
        self.r.config_resetstat()
        self.loadgen(p.port, "-k", keys, "-x", prefix, "-v", 1, "-c", self.conns, "-P",
                     self.depth, "--populate-only", "--populate-time", 900)
        index_idle(p.port)
        commands(self.r, name, keys)
        return redis_cpu(self.r) - c0, int(proxy_stats(p.port)["index:dropped"]) - d0


def commands(r, name, keys):
    """Where a fill's Redis CPU went: INFO commandstats since the fill
    began (CONFIG RESETSTAT), the costliest first, per key written."""
    st = r.info("commandstats")
    top = sorted(st.items(), key=lambda kv: -kv[1]["usec"])[:6]
    print("commands %s: " % name + ", ".join(
        "%s %d calls %.2f us/call %.2f us/key" %
        (k[len("cmdstat_"):], v["calls"], v["usec_per_call"], v["usec"] / max(keys, 1))
        for k, v in top), flush=True)


def key_prefix(tag, length, keys):
    """A prefix that makes loadgen's keys (prefix + number) about `length` bytes."""
    digits = len(str(keys - 1))
    return (tag + ":" + "k" * length)[:max(length - digits, len(tag) + 1)]


def memory(b, sizes, length):
    for name in ("old", "new"):
        b.r.execute_command("MEMORY", "PURGE")
        base = int(b.r.info("memory")["used_memory"])
        written = dropped = 0
        cpu = 0.0
        for n in sizes:
            # keys of a new prefix of the same length each step: all new
            tag = "%s%d" % (name[0], n)
            prefix = key_prefix(tag, length, n - written)
            c, d = b.fill(name, n - written, prefix)
            cpu += c
            dropped += d
            step = 1e6 * c / max(n - written, 1)
            written = n
            b.r.execute_command("MEMORY", "PURGE")
            used = int(b.r.info("memory")["used_memory"]) - base
            enc, entries, usage = encodings(b.r, "bench:" + name)
            sets = sum(enc.values())
            # long-key lists are quicklists of listpacks (listpack alone
            # from Redis 7.2 when small): compact too
            compact = enc.get(b"listpack", 0) + enc.get(b"quicklist", 0)
            per = max(entries, 1)
            print("memory %s (layout %d) keys %8d of %3d bytes: %6.1f bytes/key of Redis "
                  "(MEMORY USAGE of the sets %.1f), %d entries (%d writes dropped), %d sets, "
                  "%.1f%% listpack; Redis CPU %.2f us per indexed write (%.2f this step)" %
                  (name, b.layout[name], n, length, used / per, usage / per, entries,
                   dropped, sets, 100.0 * compact / max(sets, 1), 1e6 * cpu / per, step),
                  flush=True)
            result(mem=name, layout=b.layout[name], keys=n, key_bytes=length,
                   bytes_per_key=used / per, usage_per_key=usage / per, entries=entries,
                   dropped=dropped, sets=sets,
                   listpack_pct=100.0 * compact / max(sets, 1),
                   redis_cpu_us_per_write=1e6 * cpu / per, step_cpu_us_per_write=step)
        # leave Redis as it was for the next baseline (DEL frees at once,
        # UNLINK in the background: the next delta would go negative)
        for k in list(b.r.scan_iter(match="bench:%s:v*" % name, count=1000)):
            b.r.delete(k)


def load(b, rounds, seconds):
    got = {"old": [], "new": []}
    for rnd in range(rounds):
        for name in (("old", "new") if rnd % 2 == 0 else ("new", "old")):
            p = b.proxies[name]
            c0 = redis_cpu(b.r)
            kv = b.loadgen(p.port, "-k", 5000000, "-x", "load%d%s:%011d" % (rnd, name[0], 0),
                           "-v", 100, "-c", 50, "-P", 1, "-r", 50, "-N", "-d", seconds,
                           "-w", 1)
            index_idle(p.port)
            cpu = redis_cpu(b.r) - c0
            sets = int(kv.get("sets", 0)) or float(kv["ops"]) / 2
            got[name].append((float(kv["ops_per_s"]), 1e6 * cpu / max(sets, 1)))
            print("load round %d %s (layout %d): %9.0f ops/s, Redis %.2f us CPU per set" %
                  (rnd + 1, name, b.layout[name], got[name][-1][0], got[name][-1][1]),
                  flush=True)
    for name in ("old", "new"):
        ops = statistics.median(v[0] for v in got[name])
        cpu = statistics.median(v[1] for v in got[name])
        print("load %s (layout %d): median %9.0f ops/s, Redis %.2f us CPU per set" %
              (name, b.layout[name], ops, cpu))
        result(load=name, layout=b.layout[name], rounds=rounds, ops_per_s=round(ops),
               redis_cpu_us_per_set=cpu,
               ops_rounds=",".join("%.0f" % v[0] for v in got[name]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="300000,1000000")
    ap.add_argument("--lengths", default="28,120")
    ap.add_argument("--long-sizes", help="--sizes for keys longer than 64 bytes "
                    "(zset-max-listpack-value); default --sizes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--old-bin", default=os.environ.get("RINGPROXY_OLD_BIN"))
    ap.add_argument("--conns", type=int, default=20, help="loadgen connections of a fill")
    ap.add_argument("--depth", type=int, default=4, help="requests in flight per connection")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [int(s) for s in a.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_index_mem.") as wd:
        cluster = Cluster(wd)
        try:
            b = Bench(cluster, a.old_bin, a.conns, a.depth)
            cfg = b.r.config_get("zset-max-listpack-*")
            print("Redis %s, %s; old: %s" % (b.r.info("server")["redis_version"], cfg,
                                             a.old_bin or "this build, layout 1"), flush=True)
            long_sizes = [int(x) for x in a.long_sizes.split(",")] if a.long_sizes else sizes
            for length in (int(x) for x in a.lengths.split(",")):
                memory(b, long_sizes if length > 64 else sizes, length)
            if a.rounds > 0:
                load(b, a.rounds, a.seconds)
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
