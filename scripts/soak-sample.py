#!/usr/bin/env python3
"""Sampler of scripts/soak: every INTERVAL seconds, one CSV row about the local deployment.

Per replica i (deploy/local's replica-i): from /proc its RSS (VmRSS, KiB), open file
descriptors and threads (the gateway exports no tokio task metric, so OS threads stand in),
CPU seconds; from its admin /metrics the gauges roomcast_connections and roomcast_rooms (rooms
with a local member = the room channels it subscribes) and the counters of accepted
connections, joins, leaves and delivered messages. From Redis: DBSIZE, keys with and
without a TTL (INFO keyspace), used_memory, PUBSUB CHANNELS (count) and the sum of PUBSUB
NUMSUB over them (subscriptions), connected clients.

Usage: soak-sample.py STATE_DIR OUT_CSV INTERVAL_S PHASE_FILE STOP_FILE
  PHASE_FILE holds the phase label written into each row (baseline, warmup, steady,
  quiesce); the sampler stops after the row that follows STOP_FILE's appearance.
Environment: none (ports, pids and the Redis password come from STATE_DIR/env and pids/).
"""

import csv
import os
import re
import socket
import sys
import time
import urllib.request

state, out_csv, interval, phase_file, stop_file = sys.argv[1:6]
interval = float(interval)


def load_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^(?:export )?([A-Z0-9_]+)=(.*)$", line.strip())
            if m:
                env[m.group(1)] = m.group(2).strip('"')
    return env


ENV = load_env(os.path.join(state, "env"))
N = int(ENV["N"])
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Redis:
    """A minimal RESP client (AUTH and a few read-only commands)."""

    def __init__(self, port, password):
        self.port, self.password, self.sock, self.buf = port, password, None, b""

    def connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.buf = b""
        if self.password:
            self.cmd("AUTH", self.password)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2 :]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def cmd(self, *args):
        if self.sock is None:
            self.connect()
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = str(a).encode()
            parts.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
        try:
            self.sock.sendall(b"".join(parts))
            return self._reply()
        except (OSError, ConnectionError):
            self.sock = None
            raise


def info_fields(text):
    out = {}
    for line in (text or "").splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


def redis_sample(r):
    row = {}
    try:
        row["redis_dbsize"] = r.cmd("DBSIZE")
        ks = info_fields(r.cmd("INFO", "keyspace")).get("db0", "")
        kv = dict(p.split("=", 1) for p in ks.split(",") if "=" in p)
        keys, expires = int(kv.get("keys", 0)), int(kv.get("expires", 0))
        row["redis_keys_ttl"] = expires
        row["redis_keys_persistent"] = keys - expires
        mem = info_fields(r.cmd("INFO", "memory"))
        row["redis_used_memory"] = int(mem.get("used_memory", 0))
        clients = info_fields(r.cmd("INFO", "clients"))
        row["redis_clients"] = int(clients.get("connected_clients", 0))
        channels = r.cmd("PUBSUB", "CHANNELS") or []
        row["redis_channels"] = len(channels)
        subs = 0
        # NUMSUB in batches: one reply is [channel, count, channel, count, ...].
        for k in range(0, len(channels), 500):
            reply = r.cmd("PUBSUB", "NUMSUB", *channels[k : k + 500]) or []
            subs += sum(int(x) for x in reply[1::2])
        row["redis_subscriptions"] = subs
    except Exception as e:  # a missed sample is left empty, not fatal
        print(f"[sample] redis: {e}", file=sys.stderr)
    return row


METRICS = {
    "conns": r"^roomcast_connections (\S+)",
    "rooms": r"^roomcast_rooms (\S+)",
    "accepted": r'^roomcast_connections_total\{result="accepted"\} (\S+)',
    "joins": r"^roomcast_joins_total (\S+)",
    "leaves": r"^roomcast_leaves_total (\S+)",
    "delivered": r"^roomcast_messages_delivered_total (\S+)",
}


def replica_sample(i):
    row = {}
    p = f"r{i}_"
    try:
        with open(os.path.join(state, "pids", f"replica-{i}.pid")) as f:
            pid = f.read().strip()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        row[p + "rss_kb"] = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
        row[p + "threads"] = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
        row[p + "fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        row[p + "cpu_s"] = round((int(fields[11]) + int(fields[12])) / CLK_TCK, 2)
    except Exception as e:
        print(f"[sample] replica {i}: process gone or unreadable: {e}", file=sys.stderr)
        row[p + "alive"] = 0
        return row
    row[p + "alive"] = 1
    port = ENV[f"REPLICA_{i}_ADMIN"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for key, rx in METRICS.items():
            m = re.search(rx, text, re.M)
            if m:
                row[p + key] = int(float(m.group(1)))
    except Exception as e:
        print(f"[sample] replica {i}: /metrics: {e}", file=sys.stderr)
    return row


columns = ["t", "phase"]
for i in range(1, N + 1):
    columns += [f"r{i}_{k}" for k in ("alive", "rss_kb", "fds", "threads", "cpu_s")]
    columns += [f"r{i}_{k}" for k in METRICS]
columns += [
    "redis_dbsize",
    "redis_keys_persistent",
    "redis_keys_ttl",
    "redis_used_memory",
    "redis_channels",
    "redis_subscriptions",
    "redis_clients",
]

redis = Redis(int(ENV["REDIS_PORT"]), ENV.get("REDIS_PASSWORD", ""))
start = time.monotonic()
with open(out_csv, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    k = 0
    while True:
        stopping = os.path.exists(stop_file)
        try:
            with open(phase_file) as pf:
                phase = pf.read().strip() or "unknown"
        except OSError:
            phase = "unknown"
        row = {"t": round(time.monotonic() - start, 1), "phase": phase}
        for i in range(1, N + 1):
            row.update(replica_sample(i))
        row.update(redis_sample(redis))
        w.writerow(row)
        f.flush()
        if stopping:
            break
        k += 1
        # Fixed cadence: the next sample at start + k * interval.
        time.sleep(max(0.0, start + k * interval - time.monotonic()))
