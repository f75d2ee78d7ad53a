"""What an operator installs and reads besides the binary, checked against
the real tools and a running proxy (docs/ARCHITECTURE.md, "Running as a
service"): `make install`'s files, ringproxy(8) rendered by man without a
warning, the systemd unit verified by systemd-analyze, the compose file by
docker-compose, the alert rules by promtool (checked and unit-tested), the
metric names the rules and the Grafana dashboard use against a live
/metrics, docs/CONFIG.md against the config parser's directive tables and
the live metrics, and Ctrl-C on `make run`."""
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from harness import RINGPROXY, ROOT, admin_get, free_port, pool_yaml, wait_port

UNIT = os.path.join(ROOT, "dist", "systemd", "ringproxy.service")
MAN = os.path.join(ROOT, "docs", "ringproxy.8")
CONFIG_DOC = os.path.join(ROOT, "docs", "CONFIG.md")
RULES = os.path.join(ROOT, "dist", "prometheus", "ringproxy-rules.yml")
RULES_TEST = os.path.join(ROOT, "dist", "prometheus", "ringproxy-rules.test.yml")
DASHBOARD = os.path.join(ROOT, "dist", "grafana", "ringproxy.json")
COMPOSE = os.path.join(ROOT, "docker", "docker-compose.yml")
DOCKERFILE = os.path.join(ROOT, "docker", "Dockerfile")
IMAGE_CONF = os.path.join(ROOT, "docker", "ringproxy.yml")
METRIC = re.compile(r"\bringproxy_[a-z0-9_]+")


def tool(name):
    """A tool scripts/install-deps.sh installs (promtool may be only in
    build/tools/): its path, or the test fails saying so."""
    path = shutil.which(name) or (
        os.path.join(ROOT, "build", "tools", name)
        if os.access(os.path.join(ROOT, "build", "tools", name), os.X_OK) else None)
    assert path, "%s is missing: scripts/install-deps.sh installs it" % name
    return path


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`make install` into a fresh PREFIX (the binary under test stands for
    $(BIN): -o keeps make from rebuilding it)."""
    prefix = str(tmp_path_factory.mktemp("prefix"))
    r = run(["make", "-s", "-C", ROOT, "-o", RINGPROXY, "install", "PREFIX=" + prefix,
             "BIN=" + RINGPROXY])
    assert r.returncode == 0, r.stdout + r.stderr
    return prefix


@pytest.fixture(scope="module")
def live_metrics(module_cluster):
    """Families a proxy with an index serves on /metrics: {name: type}."""
    mcs = module_cluster.memcached(2)
    redis = module_cluster.redis()
    port, admin = free_port(), free_port()
    servers = [(m.addr, 1, "mc%d" % (i + 1)) for i, m in enumerate(mcs)]
    module_cluster.proxy(pool_yaml("cache", port, servers, index={"redis": redis.addr}),
                         port=port, admin_port=admin)
    status, _, body = admin_get(admin, "/metrics")
    assert status == 200, body
    families = {}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            families[name] = kind
    assert len(families) > 50, families
    return families


def test_make_install_layout(installed):
    for rel, mode in (("bin/ringproxy", 0o755), ("share/man/man8/ringproxy.8", 0o644),
                      ("lib/systemd/system/ringproxy.service", 0o644)):
        path = os.path.join(installed, rel)
        assert os.path.isfile(path), rel
        assert os.stat(path).st_mode & 0o777 == mode, (rel, oct(os.stat(path).st_mode))
    unit = open(os.path.join(installed, "lib/systemd/system/ringproxy.service")).read()
    assert "ExecStart=%s/bin/ringproxy " % installed in unit


def test_man_page_renders_without_warnings(installed):
    """man -l on the installed page: no warning from groff (bad macros,
    lines that cannot be broken at 80 columns), and it is not empty."""
    page = os.path.join(installed, "share/man/man8/ringproxy.8")
    env = dict(os.environ, MANWIDTH="80")
    r = run([tool("man"), "--warnings", "-l", page], env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = re.sub(".\b", "", r.stdout)     # the terminal's bold and underline
    for section in ("SYNOPSIS", "OPTIONS", "SIGNALS", "FILES", "EXIT STATUS", "EXAMPLES"):
        assert "\n" + section + "\n" in text, (section, text[:300])
    r = run([tool("groff"), "-ww", "-z", "-man", page])
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_man_page_lists_every_flag():
    """Every option `ringproxy -h` prints is in the man page (so a new flag
    cannot go undocumented)."""
    r = run([RINGPROXY, "-h"])
    assert r.returncode == 0, r.stderr
    text = open(MAN).read().replace("\\-", "-")
    flags = set(re.findall(r"^\s+(-[a-zA-Z]), (--[a-z-]+)", r.stdout, re.M))
    assert len(flags) >= 8, r.stdout
    for short, long in sorted(flags):
        assert re.search(r"\.(?:B|BR) %s\b" % re.escape(short), text), short
        assert long in text, long


def test_unit_verifies(installed):
    """systemd-analyze verify on the installed unit: every directive known,
    ExecStart's binary present, and Documentation=man:ringproxy(8) found
    (MANPATH points at the installed page)."""
    unit = os.path.join(installed, "lib/systemd/system/ringproxy.service")
    env = dict(os.environ, MANPATH=os.path.join(installed, "share/man"))
    r = run([tool("systemd-analyze"), "verify", unit], env=env)
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 0 and out == "", out


def test_unit_is_notify_reloadable_and_hardened():
    """What the unit promises: Type=notify (src/notify.c), reload = SIGHUP,
    no privileges, a read-only system, and only the address families the
    proxy uses."""
    keys = {}
    for line in open(UNIT):
        if "=" in line and not line.startswith("#"):
            k, v = line.rstrip("\n").split("=", 1)
            keys.setdefault(k, []).append(v)
    assert keys["Type"] == ["notify"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert " -d" not in keys["ExecStart"][0]        # it must stay in the foreground
    for k, v in (("DynamicUser", "yes"), ("NoNewPrivileges", "yes"),
                 ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                 ("CapabilityBoundingSet", "")):
        assert keys.get(k) == [v], (k, keys.get(k))
    assert set(keys["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_unit_exposure(tmp_path):
    """systemd's own rating of the sandboxing: at most 2.0 of 10 ("OK"); what
    is left open is the network a proxy needs and the host's root."""
    unit = tmp_path / "ringproxy.service"
    shutil.copy(UNIT, unit)
    r = run([tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(unit)],
            cwd=str(tmp_path))
    m = re.search(r"Overall exposure level for ringproxy.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-1000:] + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def container_port(spec):
    """The container side of a compose port: long form, or "[ip:]host:container[/proto]"."""
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).split("/")[0].rsplit(":", 1)[-1])


def test_compose_file():
    """docker-compose parses and resolves the file without an engine; it has
    three memcached, a Redis with appendonly yes and the proxy, whose
    published ports are the ones the image exposes and its pool file
    listens on (all interfaces); the image runs as a user that is not root."""
    r = run([tool("docker-compose"), "-f", COMPOSE, "config"])
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    services = cfg["services"]
    assert sorted(s for s in services if s.startswith("memcached")) == \
        ["memcached1", "memcached2", "memcached3"]
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes", redis_cmd
    proxy = services["ringproxy"]
    published = {container_port(p) for p in proxy["ports"]}
    docker = open(DOCKERFILE).read()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", docker, re.M)
               for p in line.split()}
    assert published and published <= exposed, (published, exposed)
    users = re.findall(r"^USER (\S+)$", docker, re.M)
    assert users and users[-1] not in ("root", "0"), users
    conf = yaml.safe_load(open(IMAGE_CONF))
    listens = {pool["listen"] for pool in conf.values()}
    for listen in listens:
        host, port = listen.rsplit(":", 1)
        assert host == "0.0.0.0" and int(port) in published, listen
    # The admin HTTP port (/metrics, /healthz) as `ringproxy -h` names it:
    # the image listens on all its interfaces, exposes and publishes it, and
    # the healthcheck asks it.
    usage = run([RINGPROXY, "-h"]).stdout
    addr_flag = re.search(r"^\s+(-\w), (--[\w-]+) ADDR\s+admin HTTP address", usage, re.M)
    port_flag = re.search(r"^\s+(-\w), (--[\w-]+) PORT\s+admin HTTP port[^(]*\(default (\d+)",
                          usage, re.M)
    assert addr_flag and port_flag, usage
    entry = json.loads(re.search(r"^ENTRYPOINT (.*)$", docker, re.M).group(1))
    assert any(entry[i] in addr_flag.groups() and entry[i + 1] == "0.0.0.0"
               for i in range(len(entry) - 1)), (entry, addr_flag.groups())
    admin_port = int(port_flag.group(3))
    assert admin_port in published and admin_port in exposed, (admin_port, published)
    health = " ".join(proxy["healthcheck"]["test"])
    assert "/dev/tcp/127.0.0.1/%d" % admin_port in health, health
    servers = {s.split(":")[0] for pool in conf.values() for s in pool["servers"]}
    assert servers == {"memcached1", "memcached2", "memcached3"}
    assert all(pool["index"]["redis"] == "redis:6379" for pool in conf.values())
    r = run([RINGPROXY, "-t", "-c", IMAGE_CONF])
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_checks_and_tests_the_rules():
    promtool = tool("promtool")
    r = run([promtool, "check", "rules", RULES])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([promtool, "test", "rules", os.path.basename(RULES_TEST)],
            cwd=os.path.dirname(RULES_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    names = {rule["alert"] for g in yaml.safe_load(open(RULES))["groups"] for rule in g["rules"]}
    for alert in ("RingproxyBackendDown", "RingproxyIndexDegraded",
                  "RingproxyMigrationStalled", "RingproxyIndexDropsRising"):
        assert alert in names


def test_dashboard_queries_parse(tmp_path):
    """Every dashboard query is valid PromQL: promtool parses them as
    recording rules, with Grafana's variables given values."""
    dash = json.load(open(DASHBOARD))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 15
    rules = [{"record": "ringproxy:dashboard:%d" % i,
              "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")
                       .replace("$pool", ".*")} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = run([tool("promtool"), "check", "rules", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_and_dashboard_use_real_metrics(live_metrics):
    """Every ringproxy_* name the rules and the dashboard query is a family
    a live proxy serves (a renamed metric would leave an alert that never
    fires)."""
    for path in (RULES, DASHBOARD):
        used = set(METRIC.findall(open(path).read()))
        used = {u for u in used if not u.startswith("ringproxy_dashboard")}
        assert used, path
        unknown = sorted(used - set(live_metrics))
        assert not unknown, "%s uses metrics no proxy serves: %s" % (path, unknown)


def config_tables():
    """The directive names of each table in src/config.c (global, pool,
    index, migration), and the server mapping's keys."""
    src = open(os.path.join(ROOT, "src", "config.c")).read()
    tables = {}
    for name, body in re.findall(
            r"static const struct conf_directive (\w+)_directives\[\] = \{(.*?)\n\};",
            src, re.S):
        tables[name] = re.findall(r'^\s*\{ "([a-z_]+)",', body, re.M)
    block = re.search(r"static int server_from_map\(.*?\n\}\n", src, re.S).group(0)
    tables["server"] = sorted(set(re.findall(r'strcmp\(key, "([a-z_]+)"\)', block)))
    assert set(tables) == {"global", "pool", "index", "migration", "server"}, tables
    return tables


def doc_tables():
    """docs/CONFIG.md's key tables: {section: [keys]}."""
    sections, current = {}, None
    for line in open(CONFIG_DOC):
        m = re.match(r"^## (.*)", line)
        if m:
            title = m.group(1)
            current = {"Top-level keys": "global", "Pool keys": "pool",
                       "`servers` entries": "server",
                       "`index` keys": "index", "`migration` keys": "migration",
                       "Metrics": "metrics"}.get(title)
            continue
        m = re.match(r"^\| `([a-z0-9_]+)` \|", line)
        if m and current:
            sections.setdefault(current, []).append(m.group(1))
    return sections


def test_config_reference_lists_every_directive():
    """docs/CONFIG.md documents exactly the keys the parser's tables accept."""
    code, doc = config_tables(), doc_tables()
    for table, keys in code.items():
        assert sorted(doc.get(table, [])) == sorted(keys), \
            "docs/CONFIG.md, %s: documented %s, the parser accepts %s" % (
                table, sorted(doc.get(table, [])), sorted(keys))


def test_metrics_reference_matches_live(live_metrics):
    """docs/CONFIG.md lists exactly the families /metrics serves, each with
    its type."""
    documented = {}
    for line in open(CONFIG_DOC):
        m = re.match(r"^\| `(ringproxy_[a-z0-9_]+)` \| (counter|gauge) \|", line)
        if m:
            documented[m.group(1)] = m.group(2)
    assert documented == live_metrics, {
        "undocumented": sorted(set(live_metrics) - set(documented)),
        "not served": sorted(set(documented) - set(live_metrics)),
        "wrong type": sorted(k for k in documented
                             if k in live_metrics and documented[k] != live_metrics[k])}


def test_install_deps_stops_no_service():
    """scripts/install-deps.sh installs; it never stops or disables what the
    host runs (the tests and the sandbox use ports of their own)."""
    text = open(os.path.join(ROOT, "scripts", "install-deps.sh")).read()
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("#"))
    assert not re.search(r"systemctl|service\s+\S+\s+stop|invoke-rc\.d|kill", code), code


def read_until(fd, marker, timeout):
    buf, deadline = b"", time.monotonic() + timeout
    while marker not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_make_run_sandbox_and_ctrl_c(tmp_path):
    """`make run` in a terminal (deps and the build taken as done): the
    sandbox starts its own Redis on a free port and points a generated
    config at it, leaves conf/ alone, `sandbox.sh reload` applies an edit of
    the user's file, and Ctrl-C ends it with make reporting no error."""
    for port in (11212, 11213, 11214, 22121):
        with __import__("socket").socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail("port %d is taken: the sandbox uses it" % port)
    example = open(os.path.join(ROOT, "tests", "unit", "conf", "example_ringproxy.yml")).read()
    conf_dir = os.path.join(ROOT, "conf")
    conf_before = {f: open(os.path.join(conf_dir, f)).read() for f in os.listdir(conf_dir)}
    user_conf = tmp_path / "ringproxy.yml"      # the file a user edits (RINGPROXY_CONF)
    user_conf.write_text(example)
    env = dict(os.environ, RINGPROXY_BIN=RINGPROXY, RINGPROXY_CONF=str(user_conf))
    pid, fd = pty.fork()
    if pid == 0:    # the child: make in a terminal of its own, as a user runs it
        os.chdir(ROOT)
        os.execvpe("make", ["make", "-o", "deps", "-o", "all", "run"], env)
    try:
        out = read_until(fd, b"Ctrl-C stops everything", 60)
        assert b"Ctrl-C stops everything" in out, out.decode(errors="replace")
        gen = open(os.path.join(ROOT, "build", "sandbox", "ringproxy.yml")).read()
        redis_port = int(open(os.path.join(ROOT, "build", "sandbox", "redis.port")).read())
        assert redis_port != 6379
        assert "redis: 127.0.0.1:%d" % redis_port in gen, gen
        wait_port(22121)
        # a change to the user's file reaches the proxy through `reload`
        assert "timeout: 400" in example
        user_conf.write_text(example.replace("timeout: 400", "timeout: 450"))
        r = run([os.path.join(ROOT, "scripts", "sandbox.sh"), "reload"], env=env)
        assert r.returncode == 0 and "reloaded" in r.stdout, r.stdout + r.stderr
        assert "timeout: 450" in open(os.path.join(ROOT, "build", "sandbox",
                                                   "ringproxy.yml")).read()
        out += read_until(fd, b" applied", 30)
        assert b" applied" in out, out.decode(errors="replace")[-2000:]
        os.write(fd, b"\x03")       # Ctrl-C: SIGINT to the terminal's foreground group
        out += read_until(fd, b"\x00never", 30)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    assert "sandbox stopped" in text, text[-2000:]
    assert "make: ***" not in text, text[-2000:]
    # make itself got the SIGINT and ends as any interrupted command does
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGINT or \
        (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0), status
    assert {f: open(os.path.join(conf_dir, f)).read() for f in os.listdir(conf_dir)} == conf_before
    assert not os.path.exists(os.path.join(ROOT, "build", "sandbox", "redis.port"))
