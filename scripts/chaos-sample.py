#!/usr/bin/env python3
"""Sampler of scripts/chaos: while a scenario runs, polls the local deployment every
--interval seconds and writes one JSON line per sample to OUT:

  {"t_ms": <unix ms>, "lb": <haproxy /readyz is 200>,
   "replicas": {"1": {"pid": 123, "alive": true, "ready": true, "rss_kib": 45000}, ...},
   "members": <members of the rooms named PREFIX* on one replica, from the server API>}

Replica pids are read from the deployment's state directory at every sample, so a
restarted replica is followed. "members" is present only with --api-key (the replicas must
have it in api.keys); it sums the member counts of GET /api/v1/rooms over rooms whose name
starts with --room-prefix, asked of replica --api-replica.

Usage: chaos-sample.py STATE_DIR OUT [--interval 0.2] [--api-key K --room-prefix P
       --api-replica 1]   (runs until SIGTERM)
"""
import argparse
import json
import os
import signal
import sys
import time
import urllib.request


def load_env(state):
    env = {}
    with open(os.path.join(state, "env")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export "):]
            k, _, v = line.partition("=")
            env[k] = v.strip('"')
    return env


def http_ok(url, timeout=0.5, headers=None):
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200, r.read()
    except Exception:
        return False, b""


def pid_of(state, name):
    try:
        with open(os.path.join(state, "pids", name + ".pid")) as f:
            return int(f.read().strip())
    except Exception:
        return None


def proc_alive(pid):
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except Exception:
        return False
    return False


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except Exception:
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("state")
    ap.add_argument("out")
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--api-key")
    ap.add_argument("--room-prefix", default="")
    ap.add_argument("--api-replica", default="1")
    a = ap.parse_args()
    env = load_env(a.state)
    n = int(env["N"])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    with open(a.out, "a", buffering=1) as out:
        while not stop:
            t0 = time.time()
            sample = {"t_ms": int(t0 * 1000)}
            sample["lb"] = http_ok(f"http://127.0.0.1:{env['LB_PORT']}/readyz")[0]
            reps = {}
            for i in range(1, n + 1):
                pid = pid_of(a.state, f"replica-{i}")
                alive = proc_alive(pid)
                ready = alive and http_ok(f"http://127.0.0.1:{env[f'REPLICA_{i}_ADMIN']}/readyz")[0]
                reps[str(i)] = {"pid": pid, "alive": alive, "ready": ready,
                                "rss_kib": rss_kib(pid) if alive else None}
            sample["replicas"] = reps
            if a.api_key:
                port = env[f"REPLICA_{a.api_replica}_PORT"]
                ok, body = http_ok(f"http://127.0.0.1:{port}/api/v1/rooms", timeout=1.0,
                                   headers={"Authorization": f"Bearer {a.api_key}"})
                if ok:
                    try:
                        rooms = json.loads(body)["rooms"]
                        sample["members"] = sum(r["members"] for r in rooms
                                                if r["room"].startswith(a.room_prefix))
                    except Exception:
                        pass
            out.write(json.dumps(sample) + "\n")
            time.sleep(max(0.0, a.interval - (time.time() - t0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
