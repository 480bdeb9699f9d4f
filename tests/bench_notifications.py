#!/usr/bin/env python3
"""Redis memory of the notification center (BENCHMARKS.md, "Notification memory").

Starts a redis-server and one gateway on it, publishes 1,000 notifications to a tenant, and
measures with MEMORY USAGE what they cost and what the read state of 1,000 users costs in three
patterns: every user read everything (a marker each); every user then marked 10 old ones unread
(a marker and 10 exceptions); every user of a second tenant read 10 scattered ones and nothing
else (10 exceptions, no marker). Users who never touched their state cost nothing.

    python3 tests/bench_notifications.py [--users 1000] [--notifications 1000]
"""

import argparse
import base64
import concurrent.futures
import hashlib
import hmac
import json
import os
import random
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "bench-secret-0123456789abcdef0123456789"
ADMIN = "bench-admin-key-0123456789abcdef0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(tenant, user):
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    now = int(time.time())
    claims = b64(json.dumps({"tenantId": tenant, "sub": user, "iat": now, "exp": now + 3600}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


def call(port, method, path, bearer, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {bearer}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def redis_cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def usage(port, key):
    value = redis_cli(port, "MEMORY", "USAGE", key, "SAMPLES", "0")
    return int(value) if value.isdigit() else 0


def publish(port, tenant, n):
    ids = []
    for i in range(n):
        event = {"type": "usage_limit_warning",
                 "data": {"metric": f"metric_{i % 7}", "used": 80 + i % 20, "limit": 100, "percent": 80 + i % 20}}
        ids.append(call(port, "POST", f"/api/admin/tenants/{tenant}/events", ADMIN, event)["id"])
    return ids


def for_users(users, work):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(work, users))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--notifications", type=int, default=1000)
    # Redis memory does not depend on how the gateway was built: the debug build will do.
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/debug/license-gateway"))
    opts = parser.parse_args()
    binary = opts.binary
    work = tempfile.mkdtemp(prefix="lgw-bench-notif-")
    redis_port, port = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no", "--dir", work],
                             stdout=subprocess.DEVNULL)
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}", JWT_SECRET=SECRET,
               ADMIN_API_KEYS=ADMIN, PORT=str(port), HOST="127.0.0.1", RUST_LOG="warn",
               NOTIFICATION_MAX=str(max(10000, opts.notifications)))
    gateway = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        users = [f"user-{i:05d}" for i in range(opts.users)]
        ids = publish(port, "acme", opts.notifications)
        stored = usage(redis_port, "license:notif:{acme}") + usage(redis_port, "license:notif-ids:{acme}")
        history = usage(redis_port, "license:history:{acme}")
        print(f"{opts.notifications} notifications: {stored} bytes, {stored / opts.notifications:.0f} per notification"
              f" (the resume history of the same events: {history / opts.notifications:.0f} per event)")

        state = "license:notif-read:{acme}"
        for_users(users, lambda u: call(port, "POST", "/api/notifications/read-all", token("acme", u), {}))
        marker = usage(redis_port, state)
        print(f"{opts.users} users who read everything: {marker} bytes, {marker / opts.users:.0f} per user")

        rng = random.Random(7)
        picks = {u: rng.sample(ids[:-1], 10) for u in users}
        for_users(users, lambda u: [call(port, "POST", f"/api/notifications/{i}/unread", token("acme", u))
                                    for i in picks[u]])
        unread = usage(redis_port, state)
        print(f"... then 10 marked unread each: {unread} bytes, {unread / opts.users:.0f} per user")

        ids2 = publish(port, "globex", opts.notifications)
        picks = {u: rng.sample(ids2[1:], 10) for u in users}
        for_users(users, lambda u: [call(port, "POST", f"/api/notifications/{i}/read", token("globex", u))
                                    for i in picks[u]])
        scattered = usage(redis_port, "license:notif-read:{globex}")
        print(f"{opts.users} users who read 10 scattered ones: {scattered} bytes, {scattered / opts.users:.0f} per user")
        total = stored + unread
        print(f"one tenant, {opts.notifications} notifications x {opts.users} users (read all, 10 unread): "
              f"{total / 1024:.0f} KiB")
        counts = call(port, "GET", "/api/notifications?limit=1", token("acme", users[0]))
        assert counts["unreadCount"] == 10, counts
    finally:
        gateway.terminate()
        redis.terminate()
        gateway.wait()
        redis.wait()


if __name__ == "__main__":
    main()
