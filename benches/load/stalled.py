#!/usr/bin/env python3
"""How much do stalled connections delay a normal client? (issue 10, item 10)

Starts the release gateway (embedded assistant, JWT API route) on loopback,
then alternates two phases, ROUNDS times each, in one run:

  quiet    REQUESTS sequential requests on one keep-alive TLS 1.3 connection;
  stalled  the same, while STALLED attacker connections are held open:
           a third silent before TLS (127.0.0.2), a third idle after the
           handshake (127.0.0.3), a third stuck mid-header (127.0.0.4).

Prints p50/p99 latency of each phase, the difference and the ratio
stalled/quiet. Every answer must be a 200 that came from the assistant (its
echo of the unique message sent); any other answer is counted and fails
the run. Bounded: REQUESTS x ROUNDS x 2 requests, each with a 10 s timeout.

  benches/load/stalled.py             (env: REQUESTS=300 ROUNDS=3 STALLED=300)
"""

import http.client
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("MOLTGATE_BIN", os.path.join(ROOT, "target", "release", "moltgate"))
REQUESTS = int(os.environ.get("REQUESTS", "300"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
STALLED = int(os.environ.get("STALLED", "300"))
SENT = [0]


def body():
    """A unique message; the assistant's echo of it proves the answer is its."""
    SENT[0] += 1
    text = f"Hi, can you summarise incident {SENT[0]}?"
    return text, json.dumps({
        "platform": "web",
        "sender": {"id": "u-1", "name": "Alice"},
        "content": {"text": text},
        "timestamp": 1732190000,
        "context": {"room_id": "ops", "thread_id": "t-1", "chat_type": "group"},
    })
SECURITY = """rate_limiting:
  global:   { window: 60s, max_requests: 1000000000 }
  per_ip:   { window: 30s, max_requests: 1000000000 }
  per_user: { window: 60s, max_requests: 1000000000 }
ip_whitelist: [127.0.0.0/8]
jwt_validation:
  issuer: "auth.example.com"
  audiences: ["moltbot.api"]
  leeway: 60
  algorithms: [HS256]
  secret: "stalled-bench-secret-0123456789abcdef"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(work):
    subprocess.run([BIN, "certs", "dev", os.path.join(work, "certs")], check=True,
                   stdout=subprocess.DEVNULL)
    pol = os.path.join(work, "policies")
    os.makedirs(pol)
    for f in os.listdir(os.path.join(ROOT, "policies")):
        shutil.copy(os.path.join(ROOT, "policies", f), pol)
    with open(os.path.join(pol, "security_policy.yaml"), "w") as f:
        f.write(SECURITY)
    public, admin = free_port(), free_port()
    config = os.path.join(work, "moltgate.yaml")
    with open(config, "w") as f:
        f.write(f"""listen:
  public: {{ address: "127.0.0.1:{public}", tls: {{ cert: certs/server.crt, key: certs/server.key }} }}
  admin: {{ address: "127.0.0.1:{admin}" }}
policies: policies/
upstreams:
  assistant: {{ kind: grpc, nodes: [embedded], timeout: 30s }}
routes:
  - {{ path: /v1/messages, platform: generic, upstream: assistant }}
limits: {{ handshake_timeout: 120s, header_timeout: 120s }}
log: {{ format: json, level: warn }}
""")
    token = subprocess.run([BIN, "token", "-c", config, "--sub", "bench", "--claim", "tenant=acme",
                            "--ttl", "2h"], check=True, capture_output=True, text=True).stdout.strip()
    log = open(os.path.join(work, "moltgate.log"), "w")
    proc = subprocess.Popen([BIN, "run", "-c", config], cwd=work, stdout=log, stderr=log)
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", public), timeout=0.2).close()
            return proc, public, token
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("moltgate did not start; see " + log.name)


def tls_context(work):
    ctx = ssl.create_default_context(cafile=os.path.join(work, "certs", "ca.crt"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def stall(ctx, port, n):
    """Opens n stalled connections, a third of each kind; returns them."""
    held = []
    for i in range(n):
        src = ("127.0.0.%d" % (2 + i % 3), 0)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=src)
        if i % 3 == 0:
            held.append(raw)
            continue
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        if i % 3 == 2:
            tls.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: loc")
        held.append(tls)
    return held


def measure(ctx, port, token):
    """Latencies (ms) of REQUESTS sequential requests on one connection."""
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
    out, bad = [], 0
    for _ in range(REQUESTS):
        text, payload = body()
        t = time.perf_counter()
        conn.request("POST", "/v1/messages", payload, headers)
        resp = conn.getresponse()
        data = resp.read()
        out.append((time.perf_counter() - t) * 1000)
        if resp.status != 200 or ("echo: " + text).encode() not in data:
            bad += 1
    conn.close()
    return out, bad


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"no binary at {BIN}: cargo build --release")
    work = tempfile.mkdtemp(prefix="moltgate-stalled.")
    proc, port, token = start(work)
    ctx = tls_context(work)
    quiet, stalled, bad = [], [], 0
    try:
        measure(ctx, port, token)  # warm-up
        for _ in range(ROUNDS):
            q, b = measure(ctx, port, token)
            quiet += q
            bad += b
            held = stall(ctx, port, STALLED)
            s, b = measure(ctx, port, token)
            stalled += s
            bad += b
            for h in held:
                h.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)
    q50, q99, s50, s99 = pct(quiet, .5), pct(quiet, .99), pct(stalled, .5), pct(stalled, .99)
    print(f"requests: {len(quiet)} quiet + {len(stalled)} with {STALLED} stalled connections; non-200 or not from the assistant: {bad}")
    print(f"quiet   p50 {q50:.3f} ms  p99 {q99:.3f} ms")
    print(f"stalled p50 {s50:.3f} ms  p99 {s99:.3f} ms")
    print(f"delay   p50 {s50 - q50:+.3f} ms  p99 {s99 - q99:+.3f} ms; ratio stalled/quiet p50 {s50 / q50:.3f}  p99 {s99 / q99:.3f}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
