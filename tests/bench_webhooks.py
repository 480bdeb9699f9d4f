#!/usr/bin/env python3
"""Webhook deliveries one worker sustains (BENCHMARKS.md, "Webhook deliveries").

Starts a redis-server, a gateway and Debian's nginx as a local receiver (answers 204 to every
POST and logs it), registers one endpoint, publishes N events while no worker runs (so they
queue), then starts one `worker` and measures how long it takes to deliver them all and the
worker's CPU time meanwhile. Release build.

    python3 tests/bench_webhooks.py [--events 5000] [--repeats 3]
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target/release/license-gateway")
ADMIN = "bench-admin-key-0123456789abcdef0123456789"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def call(port, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {ADMIN}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def wait_port(port):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def run(events):
    work = tempfile.mkdtemp(prefix="lgw-bench-webhooks-")
    redis_port, port, sink_port = free_port(), free_port(), free_port()
    log = os.path.join(work, "access.log")
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;\n"
                f"events {{ worker_connections 1024; }}\n"
                f"http {{ access_log {log}; client_body_temp_path {work}/body;\n"
                f"  server {{ listen 127.0.0.1:{sink_port}; keepalive_requests 100000;\n"
                f"    location / {{ return 204; }} }} }}\n")
    procs = []
    try:
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no", "--dir", work],
                                      stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["nginx", "-c", conf, "-p", work], stderr=subprocess.DEVNULL))
        env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}", JWT_SECRET=SECRET + "x" * 8,
                   ADMIN_API_KEYS=ADMIN, PORT=str(port), HOST="127.0.0.1", RUST_LOG="warn",
                   WEBHOOK_ALLOW_PRIVATE="true", LOG_FORMAT="json")
        procs.append(subprocess.Popen([BINARY, "serve"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        wait_port(redis_port), wait_port(sink_port), wait_port(port)
        time.sleep(0.5)
        call(port, "PUT", "/api/admin/tenants/acme/webhooks/bench",
             {"url": f"http://127.0.0.1:{sink_port}/hook", "secret": SECRET})
        for n in range(events):
            call(port, "POST", "/api/admin/tenants/acme/events",
                 {"type": "usage_limit_warning",
                  "data": {"metric": f"m{n % 10}", "used": 85, "limit": 100, "percent": 85}})
        worker = subprocess.Popen([BINARY, "worker", "--interval", "3600"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(worker)
        started = time.monotonic()
        cpu_start = None
        while lines(log) < events:
            if cpu_start is None:
                try:
                    cpu_start = cpu(worker.pid)
                except OSError:
                    pass
            if time.monotonic() - started > 300:
                raise RuntimeError(f"only {lines(log)} of {events} delivered")
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        worker_cpu = cpu(worker.pid) - (cpu_start or 0)
        return {"events": events, "secs": elapsed, "per_sec": events / elapsed,
                "worker_cpu_ms_per_delivery": worker_cpu * 1000 / events,
                "redis_cpu_s": cpu(procs[0].pid)}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    runs = []
    for i in range(opts.repeats):
        result = run(opts.events)
        print(f"run {i + 1}: {json.dumps(result)}", flush=True)
        runs.append(result)
    per_sec = statistics.median(r["per_sec"] for r in runs)
    cpu_ms = statistics.median(r["worker_cpu_ms_per_delivery"] for r in runs)
    print(f"median: {per_sec:.0f} deliveries/s, worker CPU {cpu_ms:.3f} ms per delivery")


if __name__ == "__main__":
    main()
