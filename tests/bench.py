#!/usr/bin/env python3
"""Reruns every benchmark in BENCHMARKS.md and rewrites its result tables.

    python3 tests/bench.py [--repeats 3] [--only NAME[,NAME]] [--no-write] [--binary PATH]
                           [--seed-node DIR | --no-seed]

Each run starts a fresh redis-server and a fresh release gateway on free loopback ports, runs
`license-gateway loadtest … --json` against it with --server-pid, reads redis-server's CPU from
/proc, and stops everything. Figures are medians over the repeats with min–max beside them.
The tables between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in BENCHMARKS.md are
replaced; everything else in the file is left alone. Not part of the test suite (no timed
assertions there): run it by hand on an otherwise idle machine.

The seed design side by side: when the seed's Node.js server (`bench/seed-node` of the shared
material, found beside this repository, or --seed-node) is present, every scenario it can serve
(SEED_SCENARIOS: WebSocket, one Redis, no filters) runs against it too, alternating with the
gateway run by run, with the same load generator (`--dialect seed`: token as `?token=`). Its
dependencies are installed once with `npm ci` into a copy under target/bench. Every "vs. seed
design" figure in BENCHMARKS.md comes from such a run.
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_NODE = os.path.join(os.path.dirname(ROOT), "shared", "bench", "seed-node")
# Scenarios the seed's server can serve: WebSocket, one Redis, no per-connection filter.
SEED_SCENARIOS = ["idle-10k", "idle-19k", "fanout-50k", "tenant-10k"]
BINARY = os.path.join(ROOT, "target", "release", "license-gateway")
SECRET = "bench-secret-0123456789-0123456789-01"

# 500 events/s round robin over 100 tenants, each to its 100 connections: 50,000 deliveries/s.
FANOUT_50K = ["fanout", "--connections", "10000", "--tenants", "100", "--sources", "8",
              "--rate", "500", "--duration-secs", "10", "--drain-secs", "5"]

# name -> (loadtest arguments, gateway environment, what the table shows)
SCENARIOS = {
    "idle-10k": (
        ["idle", "--connections", "10000", "--tenants", "100", "--sources", "8", "--hold-secs", "2"],
        {},
        "idle",
    ),
    "idle-19k": (
        ["idle", "--connections", "19000", "--tenants", "100", "--sources", "8", "--hold-secs", "2"],
        {},
        "idle",
    ),
    "fanout-50k": (FANOUT_50K, {}, "fanout"),
    # The same with a filter on every connection that lets every event through: the cost of
    # per-connection filters at fan-out (#16 allows at most 10 % more CPU per delivery).
    "fanout-50k-filtered": (FANOUT_50K + ["--query", "minSeverity=info"], {}, "fanout"),
    # The same load on Redis Cluster (sharded pub/sub), one master vs three.
    "cluster-1-shard": (FANOUT_50K, {}, "fanout"),
    "cluster-3-shards": (FANOUT_50K, {}, "fanout"),
    # The same over SSE (#18): RSS per idle stream and CPU per delivery next to the WebSocket.
    "idle-10k-sse": (
        ["idle", "--connections", "10000", "--tenants", "100", "--sources", "8", "--hold-secs", "2",
         "--transport", "sse"],
        {},
        "idle",
    ),
    "idle-19k-sse": (
        ["idle", "--connections", "19000", "--tenants", "100", "--sources", "8", "--hold-secs", "2",
         "--transport", "sse"],
        {},
        "idle",
    ),
    "fanout-50k-sse": (FANOUT_50K + ["--transport", "sse"], {}, "fanout"),
    "tenant-10k-sse": (
        ["fanout", "--connections", "10000", "--tenants", "1", "--sources", "8",
         "--rate", "5", "--duration-secs", "10", "--drain-secs", "5", "--transport", "sse"],
        {},
        "fanout",
    ),
    # Scale-out on one box: N nodes on one Redis, each held at 19,000 connections by a load
    # generator of its own (100 tenants of its own, 25 events/s: 4,750 deliveries/s per node),
    # all at once. The arguments are each generator's. 16 nodes is where this 2-core machine's
    # CPU runs out (see BENCHMARKS.md).
    **{f"scaleout-{n}x19k": (
        ["fanout", "--connections", "19000", "--tenants", "100", "--sources", "8",
         "--rate", "25", "--duration-secs", "10", "--drain-secs", "10"],
        {},
        "scaleout",
    ) for n in (4, 8, 12, 16)},
    # A node holding 10,000 connections over 100 tenants is SIGKILLed 3 s into 100 events/s;
    # every client resumes on one of two survivors after the last event it saw (#20).
    "stampede-10k": (
        ["stampede", "--connections", "10000", "--tenants", "100", "--sources", "8",
         "--rate", "100", "--duration-secs", "10", "--kill-after-secs", "3", "--drain-secs", "20"],
        {},
        "stampede",
    ),
    # 10 minutes of 500 events/s to 10,000 connections while 1 % of the clients are replaced
    # (close, reconnect, resume) every second: memory drift, loss and p99 over time (#20).
    "soak-10m": (
        ["soak", "--connections", "10000", "--tenants", "100", "--sources", "8",
         "--rate", "500", "--duration-secs", "600", "--drain-secs", "10",
         "--replace-percent", "1", "--warmup-secs", "60"],
        {},
        "soak",
    ),
    "tenant-10k": (
        ["fanout", "--connections", "10000", "--tenants", "1", "--sources", "8",
         "--rate", "5", "--duration-secs", "10", "--drain-secs", "5"],
        {},
        "fanout",
    ),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port, timeout=30, path="/readyz"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gateway did not become ready")


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_cluster(work, masters):
    """`masters` masters with one replica each; returns (processes, REDIS_URL)."""
    ports = []
    while len(ports) < masters * 2:
        p = 20000 + int.from_bytes(os.urandom(2), "little") % 9000
        try:
            for q in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
        except OSError:
            continue
        if p not in ports:
            ports.append(p)
    procs = []
    for p in ports:
        d = os.path.join(work, str(p))
        os.makedirs(d)
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no",
             "--dir", d], stdout=subprocess.DEVNULL, preexec_fn=raise_fd_limit))
    for p in ports:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
    cli = lambda p, *a: subprocess.run(["redis-cli", "-p", str(p), *a], capture_output=True,
                                       text=True).stdout.strip()
    try:
        if masters == 1:
            # redis-cli --cluster create wants three masters: one is made by hand.
            primary, replica = ports
            cli(primary, "cluster", "addslotsrange", "0", "16383")
            cli(replica, "cluster", "meet", "127.0.0.1", str(primary))
            primary_id = cli(primary, "cluster", "myid")
            deadline = time.time() + 20
            while time.time() < deadline:
                if primary_id in cli(replica, "cluster", "nodes"):
                    if cli(replica, "cluster", "replicate", primary_id) == "OK":
                        break
                time.sleep(0.1)
        else:
            subprocess.run(["redis-cli", "--cluster", "create",
                            *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "1",
                            "--cluster-yes"], check=True, stdout=subprocess.DEVNULL)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    deadline = time.time() + 30
    while time.time() < deadline:
        infos = [subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"],
                                capture_output=True, text=True).stdout for p in ports]
        if all("cluster_state:ok" in i for i in infos):
            break
        time.sleep(0.1)
    return procs, "redis-cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def prepare_seed(source):
    """A copy of the seed's server under target/bench with its locked dependencies installed;
    None when the seed is not there or Node.js/npm is missing."""
    if not source or not os.path.exists(os.path.join(source, "server.js")):
        return None
    if not shutil.which("node") or not shutil.which("npm"):
        print("seed design skipped: node/npm missing", file=sys.stderr)
        return None
    copy = os.path.join(ROOT, "target", "bench", "seed-node")
    os.makedirs(copy, exist_ok=True)
    for name in ("server.js", "package.json", "package-lock.json"):
        shutil.copy(os.path.join(source, name), copy)
    # It listens on every interface; benchmarks here listen on loopback only.
    server = os.path.join(copy, "server.js")
    with open(server) as f:
        text = f.read()
    with open(server, "w") as f:
        f.write(text.replace("server.listen(PORT, ", "server.listen(PORT, '127.0.0.1', "))
    if not os.path.isdir(os.path.join(copy, "node_modules")):
        subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=copy, check=True)
    return copy


def redis_info(port, section):
    """`INFO <section>` of the redis-server on `port`, as a dict of its `key:value` lines."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", section], capture_output=True,
                         text=True, timeout=10).stdout
    return dict(line.split(":", 1) for line in out.splitlines() if ":" in line)


def command_calls(port):
    """Calls per command so far (`INFO commandstats`)."""
    calls = {}
    for key, value in redis_info(port, "commandstats").items():
        if key.startswith("cmdstat_"):
            fields = dict(f.split("=") for f in value.split(","))
            calls[key[len("cmdstat_"):]] = int(fields["calls"])
    return calls


def start_redis(work, gw_env):
    """One redis-server on a free loopback port, and the gateways' environment for it."""
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", work],
        stdout=subprocess.DEVNULL, preexec_fn=raise_fd_limit)
    env = {"PATH": os.environ.get("PATH", ""), "HOST": "127.0.0.1", "JWT_SECRET": SECRET,
           "REDIS_URL": f"redis://127.0.0.1:{port}", "LOG_FORMAT": "json", **gw_env}
    return redis, port, env


def start_gateway(binary, env, work, name):
    port = free_port()
    log = open(os.path.join(work, f"{name}.log"), "w")
    process = subprocess.Popen([binary, "serve"], env={**env, "PORT": str(port), "NODE_ID": name},
                               stdout=subprocess.DEVNULL, stderr=log, preexec_fn=raise_fd_limit)
    return process, port, log


def metric_total(port, name):
    """The sum of every sample of metric `name` on a gateway's /metrics."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    total = 0.0
    for line in data.decode(errors="replace").splitlines():
        if line.split("{")[0].split(" ")[0] == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


def run_stampede(name, binary=BINARY):
    """stampede-10k: three gateways on one Redis; the loadtest kills the first."""
    args, gw_env, _ = SCENARIOS[name]
    work = tempfile.mkdtemp(prefix="lgw-bench-")
    redis, redis_port, env = start_redis(work, gw_env)
    nodes = [start_gateway(binary, env, work, n) for n in ("victim", "survivor-1", "survivor-2")]
    try:
        for _, port, _ in nodes:
            wait_ready(port)
        survivors = [a for _, port, _ in nodes[1:] for a in ("--survivor", f"127.0.0.1:{port}")]
        before, cpu_before = command_calls(redis_port), cpu_secs(redis.pid)
        out = subprocess.run(
            [BINARY, "loadtest", *args, "--target", f"127.0.0.1:{nodes[0][1]}", *survivors,
             "--victim-pid", str(nodes[0][0].pid), "--json"],
            env={**env, "RUST_LOG": "error"}, capture_output=True, text=True, timeout=1800,
            preexec_fn=raise_fd_limit)
        if out.returncode != 0:
            raise RuntimeError(f"loadtest failed: {out.stderr.strip()}")
        report = json.loads(out.stdout)
        # The survivors' own count of history reads (one engine call each; the victim's died
        # with it, and its clients resumed elsewhere).
        history_reads = sum(metric_total(port, "license_gateway_history_reads_total")
                            for _, port, _ in nodes[1:])
        after = command_calls(redis_port)
        delta = {c: after.get(c, 0) - before.get(c, 0) for c in after}
        resumed = max(report["resume"]["resumed"], 1)
        report["redis_cpu_secs"] = cpu_secs(redis.pid) - cpu_before
        report["stampede"] = {
            "history_reads": history_reads,
            "history_reads_per_resumed_client": history_reads / resumed,
            "history_reads_per_tenant_and_node": history_reads / (2 * report["tenants"]),
            # Every call of the run, those inside scripts included: admission, the publishes.
            "commands_per_resumed_client": sum(delta.values()) / resumed,
            "redis_cpu_ms_per_resumed_client": report["redis_cpu_secs"] * 1000 / resumed,
            "commands": {c: n for c, n in sorted(delta.items()) if n},
        }
        return report
    finally:
        for p, _, _ in nodes:
            p.kill()
        redis.terminate()
        for p, _, log in nodes:
            p.wait(timeout=15)
            log.close()
        redis.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


def run_scaleout(name, binary=BINARY):
    """scaleout-*: N gateways on one Redis, each with a load generator of its own (its own
    tenants), all connecting, publishing and counting at once; one report summing the nodes
    (counts) and taking the median node (per-connection and per-delivery costs) and the worst
    node (latency)."""
    args, gw_env, _ = SCENARIOS[name]
    count = int(name.split("-")[1].split("x")[0])
    work = tempfile.mkdtemp(prefix="lgw-bench-")
    redis, redis_port, env = start_redis(work, gw_env)
    nodes = [start_gateway(binary, env, work, f"node-{i}") for i in range(count)]
    try:
        for _, port, _ in nodes:
            wait_ready(port)
        redis_cpu = cpu_secs(redis.pid)
        generators = [subprocess.Popen(
            # Source addresses of its own per generator: sharing them filled the ephemeral
            # ports and every bind() then searched the range for seconds of kernel time.
            [BINARY, "loadtest", *args, "--tenant-prefix", f"n{i}t", "--first-source",
             f"127.0.{i + 1}.1", "--target", f"127.0.0.1:{port}", "--server-pid",
             str(process.pid), "--json"],
            env={**env, "RUST_LOG": "error"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=raise_fd_limit) for i, (process, port, _) in enumerate(nodes)]
        reports = []
        for g in generators:
            out, err = g.communicate(timeout=1800)
            if g.returncode != 0:
                raise RuntimeError(f"loadtest failed: {err.strip()}")
            reports.append(json.loads(out))
        med = lambda path: statistics.median(get(r, path) for r in reports)
        worst = lambda path: max(get(r, path) for r in reports)
        total = lambda path: sum(get(r, path) or 0 for r in reports)
        return {
            "scenario": "scaleout", "nodes": count, "connected": total("connected"),
            "connect_secs": worst("connect_secs"),
            "server_rss_per_connection_kib": med("server_rss_per_connection_kib"),
            "server_cpu_ms_per_connection": med("server_cpu_ms_per_connection"),
            # Each generator divides the machine-wide change, made by all of them connecting at
            # once, by its own connections: the whole box's per connection is that ÷ nodes.
            "kernel_slab_per_connection_kib": med("kernel_slab_per_connection_kib") / count,
            "redis_cpu_secs": cpu_secs(redis.pid) - redis_cpu,
            "delivery": {
                "delivered": total("delivery.delivered"), "lost": total("delivery.lost"),
                "duplicates": total("delivery.duplicates"),
                "reordered": total("delivery.reordered"),
                "deliveries_per_sec": total("delivery.deliveries_per_sec"),
                "latency_ms": {"p50": worst("delivery.latency_ms.p50"),
                               "p99": worst("delivery.latency_ms.p99")},
                "server_cpu_secs_per_million": med("delivery.server_cpu_secs_per_million"),
            },
            "per_node": reports,
        }
    finally:
        for p, _, _ in nodes:
            p.terminate()
        redis.terminate()
        for p, _, log in nodes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
            log.close()
        redis.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


PERF = shutil.which("perf")
# One sample per millisecond of the profiled process's CPU time (a fixed period, so a sample
# count is a time).
SAMPLE_PERIOD_SECS = 0.001


def start_profiler(pid, work):
    """`perf record` sampling process `pid` once per millisecond of its CPU time, with
    wall-clock stamps."""
    path = os.path.join(work, "perf.data")
    process = subprocess.Popen(
        [PERF, "record", "-q", "-e", "cpu-clock", "-c", str(int(SAMPLE_PERIOD_SECS * 1e9)),
         "--clockid", "CLOCK_REALTIME", "-p", str(pid), "-o", path],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, path


def sampled_split(profiler, window):
    """Stops the profiler; (user samples, kernel samples) inside `window` ([start, end], Unix
    seconds), or None."""
    process, path = profiler
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return None
    if not window:
        return None
    out = subprocess.run([PERF, "script", "-i", path, "-F", "time,ip"],
                         capture_output=True, text=True)
    user = kernel = 0
    for line in out.stdout.splitlines():
        parts = line.split()
        try:
            at, ip = float(parts[0].rstrip(":")), int(parts[1], 16)
        except (IndexError, ValueError):
            continue
        if window[0] <= at <= window[1]:
            # Kernel addresses are the upper half of the address space on x86-64 and arm64.
            if ip >= 1 << 63:
                kernel += 1
            else:
                user += 1
    return (user, kernel) if user + kernel else None


def measure(name, binary=BINARY, seed=None):
    """One run of scenario `name` (see run_once), and for a fan-out scenario, when perf is
    installed, a second one under perf for the split of the server's CPU into user space and
    kernel.

    The kernel's own split (/proc stat) is tick-sampled, and in this VM single runs of one build
    scattered from 0.7 to 2.3 µs of user time per delivery while their totals agreed. perf's
    samples (one per millisecond of CPU, each classified by the address it interrupted) do
    not scatter so, but perf costs the server CPU and latency (p99 1.5 → 12 ms at 50,000
    deliveries/s), so the first run, unprofiled, gives every other figure, and the profiled one
    only the user-space time per delivery."""
    report = run_once(name, binary, seed)
    delivery = report.get("delivery")
    if not PERF or SCENARIOS[name][2] != "fanout" or not delivery:
        return report
    profiled = run_once(name, binary, seed, profile=True).get("delivery") or {}
    samples = profiled.get("server_samples")
    if not samples or not profiled.get("delivered") or not delivery.get("delivered"):
        return report
    user_us = samples["user"] * SAMPLE_PERIOD_SECS / profiled["delivered"] * 1e6
    total_us = delivery["server_cpu_secs"] / delivery["delivered"] * 1e6
    delivery["server_sys_secs_ticks"] = delivery["server_sys_secs"]
    delivery["server_user_us_per_delivery"] = user_us
    delivery["server_sys_us_per_delivery"] = total_us - user_us
    delivery["server_sys_secs"] = (total_us - user_us) * delivery["delivered"] / 1e6
    delivery["server_user_share_percent"] = 100 * samples["user"] / sum(samples.values())
    delivery["profiled_run"] = profiled
    return report


def run_once(name, binary=BINARY, seed=None, profile=False):
    """One run of scenario `name` against a fresh gateway (`binary`), or against the seed
    design's server when `seed` is its prepared directory; `profile`: under perf (see
    measure)."""
    if name.startswith("stampede"):
        return run_stampede(name, binary)
    if name.startswith("scaleout"):
        return run_scaleout(name, binary)
    args, gw_env, _ = SCENARIOS[name]
    work = tempfile.mkdtemp(prefix="lgw-bench-")
    redis_port, port = free_port(), free_port()
    if name.startswith("cluster-"):
        servers, redis_url = start_cluster(work, 1 if name == "cluster-1-shard" else 3)
    else:
        servers = [subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", work],
            stdout=subprocess.DEVNULL, preexec_fn=raise_fd_limit)]
        redis_url = f"redis://127.0.0.1:{redis_port}"
    env = {
        "PATH": os.environ.get("PATH", ""), "PORT": str(port), "HOST": "127.0.0.1",
        "JWT_SECRET": SECRET, "REDIS_URL": redis_url,
        "LOG_FORMAT": "json", "NODE_ID": "bench",  # RUST_LOG unset: the default, info
    }
    env.update(gw_env)
    log = open(os.path.join(work, "gateway.log"), "w")
    if seed:
        command, ready, args = ["node", "server.js"], "/health", [*args, "--dialect", "seed"]
    else:
        command, ready = [binary, "serve"], "/readyz"
    gateway = subprocess.Popen(command, env=env, cwd=seed or None, stdout=subprocess.DEVNULL,
                               stderr=log, preexec_fn=raise_fd_limit)
    try:
        wait_ready(port, path=ready)
        redis_cpu = sum(cpu_secs(p.pid) for p in servers)
        profiler = start_profiler(gateway.pid, work) if profile else None
        out = subprocess.run(
            # The same load generator (this checkout's build) for every gateway build measured.
            [BINARY, "loadtest", *args, "--target", f"127.0.0.1:{port}",
             "--server-pid", str(gateway.pid), "--json"],
            env={**env, "RUST_LOG": "error"}, capture_output=True, text=True, timeout=1800,
            preexec_fn=raise_fd_limit)
        if out.returncode != 0:
            raise RuntimeError(f"loadtest failed: {out.stderr.strip()}")
        report = json.loads(out.stdout)
        soak_figures(report)
        delivery = report.get("delivery")
        if profiler:
            split = sampled_split(profiler, (delivery or {}).get("server_window_unix_secs"))
            if split and delivery:
                delivery["server_samples"] = {"user": split[0], "kernel": split[1]}
        if delivery and delivery.get("server_cpu_secs") is not None and delivery["delivered"]:
            user = delivery["server_cpu_secs"] - delivery["server_sys_secs"]
            delivery["server_user_us_per_delivery"] = user / delivery["delivered"] * 1e6
            delivery["server_sys_us_per_delivery"] = (
                delivery["server_sys_secs"] / delivery["delivered"] * 1e6)
        report["redis_cpu_secs"] = sum(cpu_secs(p.pid) for p in servers) - redis_cpu
        return report
    finally:
        for p in (gateway, *servers):
            p.terminate()
        for p in (gateway, *servers):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def write_floor(pairs=5000, rounds=20, size=200):
    """Kernel CPU of one small write per socket on loopback, the system call each delivery
    needs, with nothing else around it: the floor under any gateway's CPU per delivery here."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    senders, receivers = [], []
    for _ in range(pairs):
        c = socket.create_connection(listener.getsockname())
        s, _ = listener.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        senders.append(c)
        receivers.append(s)
    payload = b"x" * size
    sys_secs, user_secs, writes = 0.0, 0.0, 0
    for _ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF)
        for c in senders:
            c.send(payload)
        after = resource.getrusage(resource.RUSAGE_SELF)
        sys_secs += after.ru_stime - before.ru_stime
        user_secs += after.ru_utime - before.ru_utime
        writes += pairs
        for r in receivers:
            r.recv(65536)
    for sock in senders + receivers + [listener]:
        sock.close()
    return {"writes": writes, "kernel_us_per_write": sys_secs / writes * 1e6,
            "kernel_secs_per_million": sys_secs / writes * 1e6}


def get(report, path):
    value = report
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def cell(runs, path, digits):
    values = [v for v in (get(r, path) for r in runs) if v is not None]
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1 or min(values) == max(values):
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


IDLE_ROWS = [
    ("connections open", "connected", 0),
    ("server RSS per connection, KiB", "server_rss_per_connection_kib", 2),
    ("kernel slab memory per connection, both ends, KiB", "kernel_slab_per_connection_kib", 2),
    ("server RSS with all open, MiB", "server_rss_mib", 1),
    ("server CPU per accepted connection, ms", "server_cpu_ms_per_connection", 3),
    ("connect rate, connections/s", "connect_rate", 0),
    ("load generator CPU while connecting, s", "loadgen_connect_cpu_secs", 2),
]
FANOUT_ROWS = [
    ("deliveries", "delivery.delivered", 0),
    ("lost / duplicated / reordered", "loss_summary", 0),
    ("deliveries/s", "delivery.deliveries_per_sec", 0),
    ("latency p50, ms", "delivery.latency_ms.p50", 2),
    ("latency p90, ms", "delivery.latency_ms.p90", 2),
    ("latency p99, ms", "delivery.latency_ms.p99", 2),
    ("latency p99.9, ms", "delivery.latency_ms.p999", 2),
    ("latency max, ms", "delivery.latency_ms.max", 2),
    ("server CPU per million deliveries, s", "delivery.server_cpu_secs_per_million", 2),
    ("server CPU, s", "delivery.server_cpu_secs", 2),
    ("of which kernel (socket writes, loopback TCP), s", "delivery.server_sys_secs", 2),
    ("server user-space CPU per delivery, µs", "delivery.server_user_us_per_delivery", 2),
    ("server kernel CPU per delivery, µs", "delivery.server_sys_us_per_delivery", 2),
    # n/a without perf: the split above is then the kernel's tick-sampled one.
    ("user-space share of the server's CPU samples (perf, profiled run), %",
     "delivery.server_user_share_percent", 1),
    ("load generator CPU, s", "delivery.loadgen_cpu_secs", 2),
    ("of which kernel (socket reads, epoll), s", "delivery.loadgen_sys_secs", 2),
    ("redis-server CPU, all instances (whole run), s", "redis_cpu_secs", 2),
    ("server RSS per connection, KiB", "server_rss_per_connection_kib", 2),
]


STAMPEDE_ROWS = [
    ("clients on the killed node", "connected", 0),
    ("resumed on the survivors", "resume.resumed", 0),
    ("resumed within 5 s of the kill, %", "resume.within_5s_percent", 1),
    ("kill → connected on a survivor, p50, ms", "resume.latency_ms.p50", 0),
    ("kill → connected, p99, ms", "resume.latency_ms.p99", 0),
    ("kill → connected, max, ms", "resume.latency_ms.max", 0),
    ("deliveries (before, across and after the resume)", "delivery.delivered", 0),
    ("lost / duplicated / reordered", "loss_summary", 0),
    ("history reads by the survivors (one script call each), per resumed client",
     "stampede.history_reads_per_resumed_client", 2),
    ("history reads per tenant and surviving node", "stampede.history_reads_per_tenant_and_node", 1),
    ("Redis calls in the whole run ÷ resumed clients (admission, publishes, script internals)",
     "stampede.commands_per_resumed_client", 2),
    ("redis-server CPU per resumed client, ms (whole run)", "stampede.redis_cpu_ms_per_resumed_client", 3),
]


SCALEOUT_ROWS = [
    ("nodes (one Redis, a load generator each)", "nodes", 0),
    ("connections held, all nodes", "connected", 0),
    ("deliveries, all nodes", "delivery.delivered", 0),
    ("lost / duplicated / reordered", "loss_summary", 0),
    ("deliveries/s, all nodes", "delivery.deliveries_per_sec", 0),
    ("latency p50, worst node, ms", "delivery.latency_ms.p50", 2),
    ("latency p99, worst node, ms", "delivery.latency_ms.p99", 2),
    ("server RSS per connection, median node, KiB", "server_rss_per_connection_kib", 2),
    ("server CPU per accepted connection, median node, ms", "server_cpu_ms_per_connection", 3),
    ("server CPU per million deliveries, median node, s",
     "delivery.server_cpu_secs_per_million", 2),
    ("kernel slab memory per connection, both ends, KiB", "kernel_slab_per_connection_kib", 2),
    ("redis-server CPU (whole run), s", "redis_cpu_secs", 2),
]

SOAK_ROWS = [
    ("deliveries", "delivery.delivered", 0),
    ("lost / duplicated / reordered", "loss_summary", 0),
    ("clients replaced (closed and resumed)", "soak.replaced", 0),
    ("server RSS after the 60 s warm-up, MiB", "soak.rss_warm_mib", 1),
    ("server RSS at the end, MiB", "soak.rss_end_mib", 1),
    ("RSS drift after warm-up, %", "soak.rss_drift_percent", 1),
    ("p99 per second: median over the run, ms", "soak.p99_median_ms", 2),
    ("p99 per second: first minute after warm-up, median, ms", "soak.p99_first_minute_ms", 2),
    ("p99 per second: last minute, median, ms", "soak.p99_last_minute_ms", 2),
    ("replaced client back (close → connected), p99, ms", "resume.latency_ms.p99", 1),
    ("server CPU per million deliveries, s", "delivery.server_cpu_secs_per_million", 2),
]


def soak_figures(report):
    """Adds the soak table's derived figures to a report."""
    soak = report.get("soak")
    if not soak:
        return
    for key in ("rss_warm_kib", "rss_end_kib"):
        if soak.get(key):
            soak[key.replace("_kib", "_mib")] = soak[key] / 1024
    p99 = [(s["secs"], s["p99_ms"]) for s in soak["samples"] if s["p99_ms"] is not None]
    if p99:
        soak["p99_median_ms"] = statistics.median(v for _, v in p99)
        first = [v for t, v in p99 if 60 <= t < 120]
        last = [v for t, v in p99 if t >= p99[-1][0] - 60]
        soak["p99_first_minute_ms"] = statistics.median(first) if first else None
        soak["p99_last_minute_ms"] = statistics.median(last) if last else None


def png_plot(path, series, width=900, height=420):
    """A line plot as a PNG, with nothing but zlib: `series` is [(label, colour (r, g, b),
    [(x, y)…], y-axis side 'left'/'right')]. Two y axes share the x axis (seconds)."""
    import struct
    import zlib
    pixels = bytearray([255] * (width * height * 3))
    left, right, top, bottom = 60, width - 60, 20, height - 40

    def dot(x, y, colour):
        if 0 <= x < width and 0 <= y < height:
            i = (y * width + x) * 3
            pixels[i:i + 3] = bytes(colour)

    def line(x0, y0, x1, y1, colour):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for k in range(steps + 1):
            dot(round(x0 + (x1 - x0) * k / steps), round(y0 + (y1 - y0) * k / steps), colour)

    for x in range(left, right + 1):
        dot(x, bottom, (0, 0, 0))
    for y in range(top, bottom + 1):
        dot(left, y, (0, 0, 0))
        dot(right, y, (0, 0, 0))
    xs = [x for _, _, points, _ in series for x, _ in points]
    x_max = max(xs) if xs else 1
    for _, colour, points, side in series:
        if not points:
            continue
        y_max = max(y for _, y in points) * 1.1 or 1
        scaled = [(left + (x / x_max) * (right - left), bottom - (y / y_max) * (bottom - top))
                  for x, y in points]
        for (x0, y0), (x1, y1) in zip(scaled, scaled[1:]):
            line(round(x0), round(y0), round(x1), round(y1), colour)
        # The axis of this series: a tick of its colour at its top value.
        edge = left if side == "left" else right
        for dx in range(-5, 6):
            dot(edge + dx, round(bottom - (bottom - top) / 1.1), colour)
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3])
                   for y in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def soak_plot(report, path):
    samples = report["soak"]["samples"]
    rss = [(s["secs"], s["rss_kib"] / 1024) for s in samples if s["rss_kib"]]
    p99 = [(s["secs"], s["p99_ms"]) for s in samples if s["p99_ms"] is not None]
    png_plot(path, [("server RSS, MiB", (31, 119, 180), rss, "left"),
                    ("p99 per second, ms", (214, 39, 40), p99, "right")])


def derive(runs):
    for r in runs:
        if r.get("server_rss_kib"):
            r["server_rss_mib"] = r["server_rss_kib"] / 1024
        r["connect_rate"] = r["connected"] / max(r["connect_secs"], 1e-9)


def median_of(runs, path):
    values = [v for v in (get(r, path) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def side_by_side(name, ours, seed):
    """The gateway and the seed design, same scenario, same sitting, alternating runs."""
    derive(ours)
    derive(seed)
    lines = [f"| {name}: median (min–max), {len(ours)} + {len(seed)} alternating runs "
             "| license-gateway | seed design (Node.js) | seed ÷ gateway |", "|---|---|---|---|"]
    rows = IDLE_ROWS if SCENARIOS[name][2] == "idle" else FANOUT_ROWS
    for label, path, digits in rows:
        if path in ("loss_summary", "redis_cpu_secs") or path.startswith("loadgen") \
                or ".loadgen" in path:
            if path == "loss_summary":
                both = []
                for runs in (ours, seed):
                    both.append(" / ".join(str(sum(get(r, f"delivery.{k}") or 0 for r in runs))
                                           for k in ("lost", "duplicates", "reordered")))
                lines.append(f"| {label} (all runs) | {both[0]} | {both[1]} | |")
            continue
        a, b = median_of(ours, path), median_of(seed, path)
        ratio = f"{b / a:.2f}" if a and b else "—"
        lines.append(f"| {label} | {cell(ours, path, digits)} | {cell(seed, path, digits)} "
                     f"| {ratio} |")
    return "\n".join(lines)


def table(name, runs):
    kind = SCENARIOS[name][2]
    derive(runs)
    lines = [f"| {name} ({len(runs)} runs) | median (min–max) |", "|---|---|"]
    rows = {"idle": IDLE_ROWS, "fanout": FANOUT_ROWS, "stampede": STAMPEDE_ROWS,
            "soak": SOAK_ROWS, "scaleout": SCALEOUT_ROWS}[kind]
    for label, path, digits in rows:
        if path == "loss_summary":
            totals = [sum(get(r, f"delivery.{k}") or 0 for r in runs)
                      for k in ("lost", "duplicates", "reordered")]
            lines.append(f"| {label} (all runs) | {' / '.join(map(str, totals))} |")
            continue
        lines.append(f"| {label} | {cell(runs, path, digits)} |")
    return "\n".join(lines)


# (label, scenario, path, goal, unit): goal a number, or "half" for half the seed design's
# figure in the same run.
TARGETS = [
    ("RSS per idle connection, 10k connections", "idle-10k", "server_rss_per_connection_kib",
     2.0, "KiB"),
    ("RSS per idle connection, 19k connections", "idle-19k", "server_rss_per_connection_kib",
     2.0, "KiB"),
    ("server CPU per accepted connection", "idle-10k", "server_cpu_ms_per_connection",
     0.1, "ms"),
    ("server CPU per million deliveries", "fanout-50k",
     "delivery.server_cpu_secs_per_million", "half", "s"),
    ("server user-space CPU per delivery", "fanout-50k",
     "delivery.server_user_us_per_delivery", 1.0, "µs"),
    ("publish → delivery p99 at 50k deliveries/s", "fanout-50k", "delivery.latency_ms.p99",
     10.0, "ms"),
    ("one event to a tenant's 10,000 connections, p99", "tenant-10k",
     "delivery.latency_ms.p99", 60.0, "ms"),
]


def targets_table(all_runs, seed_runs):
    lines = ["| target | goal | measured: median (min–max) | seed design, same run | met |",
             "|---|---|---|---|---|"]
    for label, name, path, goal, unit in TARGETS:
        runs = all_runs.get(name)
        if not runs:
            continue
        med = median_of(runs, path)
        if med is None:
            continue
        seed = median_of(seed_runs.get(name, []), path)
        if goal == "half":
            if seed is None:
                continue
            goal = seed / 2
            goal_text = f"≤ {goal:.2f} {unit} (half the seed's)"
        else:
            goal_text = f"≤ {goal:g} {unit}"
        seed_text = f"{seed:.{3 if seed < 1 else 2}f} {unit} ({seed / med:.2f}×)" if seed else "—"
        met = "yes" if med <= goal else "no"
        if name == "fanout-50k":
            lost = sum(get(r, "delivery.lost") or 0 for r in runs)
            rate = statistics.median(get(r, "delivery.deliveries_per_sec") or 0 for r in runs)
            label += f" (measured {rate:,.0f}/s, {lost} lost)"
            if lost:
                met = "no"
        lines.append(f"| {label} | {goal_text} | {cell(runs, path, 3 if med < 1 else 2)} {unit} "
                     f"| {seed_text} | {met} |")
    return "\n".join(lines)


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    v = re.search(r"v=(\S+)", redis)
    return (f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
            f"redis-server {v.group(1) if v else '?'}, {time.strftime('%Y-%m-%d')}")


def compare(opts):
    """Runs each scenario on every given build, alternating builds run by run so that drift in
    the machine's load hits them alike; prints one table per scenario and build."""
    raise_fd_limit()
    for name in opts.only.split(","):
        runs = {b: [] for b in opts.binary}
        for i in range(opts.repeats):
            for binary in opts.binary:
                report = measure(name, binary)
                print(f"{name} {binary} run {i + 1}: {json.dumps(report)}", flush=True)
                runs[binary].append(report)
        for binary in opts.binary:
            print(f"\n{name} — {binary}\n{table(name, runs[binary])}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--binary", action="append", default=[], metavar="PATH",
                        help="measure this build instead (repeatable: the builds alternate run by "
                             "run, for a before/after comparison in one sitting; implies --no-write)")
    parser.add_argument("--seed-node", default=SEED_NODE, metavar="DIR",
                        help="the seed design's server (server.js, package.json, lockfile)")
    parser.add_argument("--no-seed", action="store_true", help="skip the seed design's runs")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="K=V",
                        help="extra gateway environment, for experiments (implies --no-write)")
    opts = parser.parse_args()
    for kv in opts.gateway_env:
        key, _, value = kv.partition("=")
        for scenario in SCENARIOS.values():
            scenario[1][key] = value
        opts.no_write = True
    if opts.binary:
        compare(opts)
        return
    if not os.path.exists(BINARY):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    raise_fd_limit()
    seed = None if opts.no_seed else prepare_seed(opts.seed_node)
    tables, all_runs, seed_runs = {}, {}, {}
    for name in opts.only.split(","):
        runs, seeds = [], []
        for i in range(opts.repeats):
            report = measure(name)
            print(f"{name} run {i + 1}: {json.dumps(report)}", flush=True)
            runs.append(report)
            if seed and name in SEED_SCENARIOS:
                report = measure(name, seed=seed)
                print(f"{name} seed design run {i + 1}: {json.dumps(report)}", flush=True)
                seeds.append(report)
        all_runs[name] = runs
        if name.startswith("soak") and not opts.no_write:
            # The plot of the run with the median drift.
            ranked = sorted(runs, key=lambda r: r["soak"].get("rss_drift_percent") or 0)
            soak_plot(ranked[len(ranked) // 2], os.path.join(ROOT, "docs", f"{name}.png"))
        tables[name] = table(name, runs)
        print(tables[name], flush=True)
        if seeds:
            seed_runs[name] = seeds
            tables[f"{name}-vs-seed"] = side_by_side(name, runs, seeds)
            print(tables[f"{name}-vs-seed"], flush=True)
    if opts.no_write:
        return
    path = os.path.join(ROOT, "BENCHMARKS.md")
    with open(path) as f:
        text = f.read()
    text = re.sub(r"(<!-- bench:machine -->\n).*?(\n<!-- /bench:machine -->)",
                  lambda m: m.group(1) + machine() + m.group(2), text, flags=re.S)
    floors = [write_floor() for _ in range(opts.repeats)]
    print(f"write floor: {floors}", flush=True)
    tables["floor"] = "\n".join([
        f"| loopback write floor ({len(floors)} runs) | median (min–max) |", "|---|---|",
        f"| kernel CPU per 200-byte write to an idle peer, µs | {cell(floors, 'kernel_us_per_write', 2)} |",
    ])
    if set(all_runs) >= {t[1] for t in TARGETS}:
        tables["targets"] = targets_table(all_runs, seed_runs)
    for name, body in tables.items():
        pattern = rf"(<!-- bench:{re.escape(name)} -->\n).*?(\n<!-- /bench:{re.escape(name)} -->)"
        text, n = re.subn(pattern, lambda m: m.group(1) + body + m.group(2), text, flags=re.S)
        if n == 0:
            print(f"warning: BENCHMARKS.md has no bench:{name} block", file=sys.stderr)
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
