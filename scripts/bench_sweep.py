#!/usr/bin/python3
"""The index sweeper's cost (docs/ARCHITECTURE.md, "What it costs").

    scripts/bench_sweep.py [--keys 1000000] [--memory 32] [--rounds 5]
                           [--seconds 8] [--rates 0,2000,5000]
                           [--cpu-seconds 10] [--cpu-runs 2]

Real memcached (3 x --memory MB) and Redis on free ports, the release build
of ringproxy (build/ringproxy, or RINGPROXY_BIN) and of loadgen
(build/loadgen). `--keys` keys of 100 bytes are written through the proxy;
with 32 MB servers about half of them are evicted, so half the entries are
of keys gone. Then:

  cpu       no client load: the sweeper at 20,000 entries/s for
            --cpu-seconds, --cpu-runs times on that index (half gone) and as
            many after one pass of the command (every key there); CPU of the
            proxy, the memcached servers and Redis per entry looked at (from
            /proc);
  loadgen   client load (50 connections, 90% gets, 50,000 keys of 100
            bytes) with the background sweeper at each of --rates, in
            interleaved rounds of --seconds (the rate is changed by SIGHUP;
            the order of the rates alternates from round to round); ops/s
            and CPU per operation of all five servers and of the proxy, the
            memcached servers and Redis apart, medians, and each rate's
            median ops/s and CPU against the first rate's;
  command   `ringproxy index sweep`, unlimited: once on the index half gone
            (between the two cpu measures), once at the end.

Lines starting "result " repeat the figures as key=value words (scripts/bench.sh,
shape x, reads them). Timings belong in benchmarks, never in tests. On a machine
shared with other work, ops/s moves with that work; the CPU figures are steadier.
"""
import argparse
import os
import re
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

from conftest import Cluster  # noqa: E402
from harness import free_port, pool_yaml, proxy_stats, run_cli, wait_until  # noqa: E402


# sweep_interval 0: the background sweeper starts its next pass at once, so
# that it sweeps throughout every measured window (with the default 60 s, a
# pass that ends during the bench would leave it idle, or never "sweeping"
# again in time for set_rate): the figures are of a sweeper that never pauses.
def config(port, mcs, redis_port, rate):
    return pool_yaml("cache", port, [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)],
                     hash="md5", index={"redis": "127.0.0.1:%d" % redis_port,
                                        "sweep_rate": rate, "sweep_interval": 0})


def cpu_seconds(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, cluster, memory):
        self.mcs = cluster.memcached(3, memory_mb=memory)
        self.redis = cluster.redis()
        self.port = free_port()
        self.proxy = cluster.proxy(config(self.port, self.mcs, self.redis.port, 0),
                                   port=self.port)
        wait_until(lambda: proxy_stats(self.port).get("migration:state") == "idle",
                   timeout=20, what="the proxy to serve")
        self.pids = ([self.proxy.proc.pid] + [m.proc.pid for m in self.mcs] +
                     [self.redis.proc.pid])

    def set_rate(self, rate):
        self.proxy.write_config(config(self.port, self.mcs, self.redis.port, rate))
        self.proxy.signal(signal.SIGHUP)
        want = "sweeping" if rate else "off"
        wait_until(lambda: proxy_stats(self.port)["sweep:state"] == want, timeout=30,
                   what="the sweeper to be %s" % want)

    def cpu(self):
        return [cpu_seconds(p) for p in self.pids]

    def loadgen(self, *args):
        out = subprocess.run([LOADGEN, "-p", str(self.port), "-q"] + [str(a) for a in args],
                             check=True, capture_output=True, text=True).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)


def cpu_per_entry(b, label, secs):
    b.set_rate(20000)
    s0, c0 = proxy_stats(b.port), b.cpu()
    time.sleep(secs)
    s1, c1 = proxy_stats(b.port), b.cpu()
    n = int(s1["sweep:checked"]) - int(s0["sweep:checked"])
    gone = int(s1["sweep:removed_gone"]) - int(s0["sweep:removed_gone"])
    d = [y - x for x, y in zip(c0, c1)]
    us = lambda v: 1e6 * v / max(n, 1)
    print("cpu %-22s %7d looked at (%6d gone): %.2f us/entry in all: proxy %.2f, "
          "memcached %.2f, redis %.2f" % (label, n, gone, us(sum(d)), us(d[0]),
                                          us(sum(d[1:4])), us(d[4])), flush=True)
    return dict(entries=n, gone=gone, all_us=us(sum(d)), proxy_us=us(d[0]),
                memcached_us=us(sum(d[1:4])), redis_us=us(d[4]))


def result(**kv):
    print("result " + " ".join("%s=%s" % (k, ("%.2f" % v) if isinstance(v, float) else v)
                               for k, v in kv.items()), flush=True)


def cpu_results(label, runs):
    result(cpu=label, entries=sum(r["entries"] for r in runs),
           gone=sum(r["gone"] for r in runs),
           **{k: statistics.median(r[k] for r in runs)
              for k in ("all_us", "proxy_us", "memcached_us", "redis_us")})


def command(b, label):
    """`ringproxy index sweep`, unlimited: its output, and a result line."""
    t = time.monotonic()
    res = run_cli("index", "sweep", "-c", b.proxy.conf_path, check=True)
    wall = time.monotonic() - t
    print("command, unlimited, %s, %.1f s:\n%s" % (label, wall, res.stdout), flush=True)
    m = re.search(r"in ([0-9.]+) s: ([0-9,]+) entries looked at \(([0-9]+)/s\)", res.stdout)
    g = re.search(r"gone from their backend ([0-9,]+)", res.stdout)
    if m:
        result(command=label.replace(" ", "_"), entries=m.group(2).replace(",", ""),
               gone=g.group(1).replace(",", "") if g else "-", seconds=m.group(1),
               per_s=m.group(3), wall_s=wall)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1000000)
    ap.add_argument("--memory", type=int, default=32, help="MB per memcached")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rates", default="0,2000,5000")
    ap.add_argument("--cpu-seconds", type=int, default=10)
    ap.add_argument("--cpu-runs", type=int, default=2)
    a = ap.parse_args()
    # a TERM (scripts/bench.sh stopping) runs the finally below: no server left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rates = [int(r) for r in a.rates.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench_sweep.") as wd:
        cluster = Cluster(wd)
        try:
            b = Bench(cluster, a.memory)
            b.loadgen("-k", a.keys, "-x", "fill:", "-v", 100, "-c", 20, "--populate-only",
                      "--populate-time", 600)
            b.loadgen("-k", 50000, "-v", 100, "-c", 20, "--populate-only")
            cpu_results("half_gone", [cpu_per_entry(b, "half gone", a.cpu_seconds)
                                      for _ in range(a.cpu_runs)])
            b.set_rate(0)
            command(b, "half gone")
            cpu_results("all_there", [cpu_per_entry(b, "every key there", a.cpu_seconds)
                                      for _ in range(a.cpu_runs)])

            # (ops/s, us CPU per op: all five, proxy, memcached, redis) per round
            got = {r: [] for r in rates}
            for rnd in range(a.rounds):
                for rate in (rates if rnd % 2 == 0 else rates[::-1]):
                    b.set_rate(rate)
                    c0 = b.cpu()
                    kv = b.loadgen("-k", 50000, "-v", 100, "-c", 50, "-P", 1, "-r", 90, "-N",
                                   "-d", a.seconds, "-w", 1)
                    c1 = b.cpu()
                    ops = float(kv["ops"]) + float(kv.get("errors", 0))
                    d = [1e6 * (y - x) / ops for x, y in zip(c0, c1)]
                    got[rate].append((float(kv["ops_per_s"]), sum(d), d[0], sum(d[1:4]), d[4]))
                    print("loadgen round %d sweep_rate %6d: %9.0f ops/s, %.2f us CPU/op "
                          "(proxy %.2f, memcached %.2f, redis %.2f)" %
                          ((rnd + 1, rate) + got[rate][-1]), flush=True)
            med = {r: [statistics.median(v[i] for v in got[r]) for i in range(5)]
                   for r in rates}
            base = rates[0]
            for rate in rates:
                m = med[rate]
                print("loadgen sweep_rate %6d: median %9.0f ops/s, %.2f us CPU/op "
                      "(proxy %.2f, memcached %.2f, redis %.2f); vs sweep_rate %d: "
                      "ops/s %.3fx, CPU/op %.3fx" % ((rate,) + tuple(m) + (
                          base, m[0] / med[base][0], m[1] / med[base][1])))
                result(rate=rate, rounds=a.rounds, ops_per_s=round(m[0]), cpu_us_per_op=m[1],
                       proxy_us=m[2], memcached_us=m[3], redis_us=m[4],
                       ops_ratio="%.3f" % (m[0] / med[base][0]),
                       cpu_ratio="%.3f" % (m[1] / med[base][1]),
                       ops_rounds=",".join("%.0f" % v[0] for v in got[rate]))

            b.set_rate(0)
            command(b, "every key there")
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
