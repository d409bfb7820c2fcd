#!/usr/bin/env bash
# Prints the tables and ratios of one scripts/bench run from its JSON results:
#   scripts/bench-report.sh DIR     (DIR holds fanout.json, socketio.json, idle.json, bus-*.json,
#                                    floor.json, cluster-N.json + cluster-N.topology.json)
# Targets are checked and reported, never asserted (machines are noisy).
set -euo pipefail
dir=${1:?usage: scripts/bench-report.sh RESULTS_DIR [--smoke]}
exec python3 - "$dir" "${2:-}" <<'PY'
import glob, json, os, sys

d = sys.argv[1]
smoke = sys.argv[2] == "--smoke"

def load(name):
    p = os.path.join(d, name + ".json")
    if not os.path.exists(p):
        return None
    try:
        with open(p) as f:
            return json.load(f)
    except ValueError:
        return None

def ms(us):
    return f"{us / 1000:.2f}"

def table(title, r):
    print(f"\n## {title}")
    print(f"{r['connections']} connections over {len(r['urls'])} server(s), {r['rooms']} rooms x "
          f"{r['members_per_room']} members, {r['publishers_per_room']} publishers/room, "
          f"{r['message_bytes']} B messages; connected {r['connected']} in {r['connect_seconds']} s")
    hdr = ["rate/s", "sent/s", "deliv/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
           "x-replica p99", "srv cpu s", "cpu s/M deliv", "user s/M", "deliv/cpu-s", "machine busy%",
           "bench cpu s"]
    rows = []
    for s in r["steps"]:
        l = s["latency_us"]
        rows.append([f"{s['rate']:g}", f"{s['sent_per_s']:.0f}", f"{s['deliveries_per_s']:.0f}",
                     ms(l["p50"]), ms(l["p90"]), ms(l["p99"]), ms(l["p999"]), ms(l["max"]),
                     ms(s["cross_latency_us"]["p99"]) if s["cross_deliveries"] else "-",
                     fmt(s.get("server_cpu_s")), fmt(s.get("server_cpu_s_per_million_deliveries")),
                     fmt(s.get("server_user_cpu_s_per_million_deliveries")),
                     fmt(s.get("deliveries_per_server_cpu_s"), 0),
                     fmt(s.get("machine_busy_pct"), 0), fmt(s.get("client_cpu_s"))])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    print("  ".join(h.rjust(w) for h, w in zip(hdr, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    if r.get("skipped_steps"):
        print(f"not run (an earlier step's p99 exceeded --max-p99): {r['skipped_steps']}")
    t = r["totals"]
    print(f"lost {t['lost']}, duplicated {t['duplicated']}, unrecovered {t['unrecovered']}, "
          f"connect errors {t['connect_errors']}, reconnects {t['reconnects']}, "
          f"errors {t['errors_by_code'] or '{}'}, closes {t['closes_by_reason'] or '{}'}, "
          f"settled {t['settled']}")

def fmt(x, digits=2):
    if x is None:
        return "-"
    return f"{x:.{digits}f}"

def healthy(s, p99_us=50_000):
    """A step the server kept up with: p99 under the bound and the rate was sent.
    (Saturated steps are left out of CPU figures: their deliveries go on after the step's
    CPU window closes.)"""
    return (s["latency_us"]["count"] > 0 and s["latency_us"]["p99"] < p99_us
            and s["sent_per_s"] >= 0.95 * s["rate"])

def efficiency(r, key="server_cpu_s"):
    """Deliveries per server CPU-second over the healthy steps."""
    steps = [s for s in r["steps"] if healthy(s) and s.get(key)]
    cpu = sum(s[key] for s in steps)
    dl = sum(s["deliveries"] for s in steps)
    return dl / cpu if cpu > 0 else None

def best_rate(r):
    """Highest publish rate whose step kept p99 under 50 ms and sent what it should."""
    ok = [s["rate"] for s in r["steps"] if healthy(s)]
    return max(ok) if ok else None

def side_by_side(a, b):
    print("\n## roomcast vs Socket.IO, same workload, per publish rate")
    bs = {s["rate"]: s for s in b["steps"]}
    hdr = ["rate/s", "deliv/s", "rc p99 ms", "sio p99 ms", "rc cpu s/M", "sio cpu s/M", "cpu ratio",
           "rc user s/M", "sio user s/M", "user ratio"]
    rows = []
    for s in a["steps"]:
        o = bs.get(s["rate"])
        if not o:
            continue
        c1, c2 = s.get("server_cpu_s_per_million_deliveries"), o.get("server_cpu_s_per_million_deliveries")
        u1, u2 = (s.get("server_user_cpu_s_per_million_deliveries"),
                  o.get("server_user_cpu_s_per_million_deliveries"))
        rows.append([f"{s['rate']:g}", f"{s['deliveries_per_s']:.0f}", ms(s["latency_us"]["p99"]),
                     ms(o["latency_us"]["p99"]), fmt(c1), fmt(c2),
                     f"{c2 / c1:.2f}x" if c1 and c2 else "-", fmt(u1), fmt(u2),
                     f"{u2 / u1:.2f}x" if u1 and u2 else "-"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)] if rows else []
    print("  ".join(h.rjust(w) for h, w in zip(hdr, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print("(CPU ratios at rates where a server was saturated are not meaningful: see p99)")

def saturated(r, rate):
    """True when the highest step also passed: the real limit is higher."""
    return rate is not None and rate == max(s["rate"] for s in r["steps"])

def floor_table(fl):
    print("\n## kernel floor: one thread writing one pre-encoded frame per delivery, nothing else")
    print(f"{fl['connections']} loopback TCP connections, {fl['members']} sockets per publish, "
          f"{fl['frame_bytes']} B frames, {fl.get('reader_threads', '?')} reader thread(s); "
          "CPU = utime + stime of the sending thread")
    hdr = ["rate/s", "deliv/s", "deliveries", "sender cpu s", "µs/deliv", "user µs", "sys µs",
           "process µs/deliv", "machine busy%"]
    rows = []
    for s in fl["steps"]:
        behind = "" if s.get("kept_up", True) else " (behind)"
        rows.append([f"{s['rate']:g}", f"{floor_rate(s):.0f}{behind}", f"{s['deliveries']}",
                     fmt(s["sender_cpu_s"]), fmt(s["us_per_delivery"]),
                     fmt(s["user_us_per_delivery"]), fmt(s["sys_us_per_delivery"]),
                     fmt(s.get("process_us_per_delivery")), fmt(s.get("machine_busy_pct"), 0)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)] if rows else []
    print("  ".join(h.rjust(w) for h, w in zip(hdr, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print("(the least CPU per delivery any server writing one frame per delivery pays here; "
          "process = readers included)")

def floor_rate(s):
    return s["deliveries"] / s["seconds"] if s.get("seconds") else 0.0

def ceiling(sio, fl, achieved=None):
    """Socket.IO's server CPU per delivery over its healthy steps divided by the kernel
    floor: the highest CPU ratio any server writing one frame per delivery could reach.
    Each Socket.IO step is paired with the floor step closest in deliveries/s."""
    fs = [f for f in fl["steps"] if f.get("us_per_delivery") and f.get("kept_up", True)]
    steps = [s for s in sio["steps"] if healthy(s) and s.get("server_cpu_s")]
    if not fs or not steps:
        print("           ceiling: n/a (no usable kernel floor or Socket.IO step)")
        return
    pairs = [(s, min(fs, key=lambda f: abs(floor_rate(f) - s["deliveries_per_s"]))) for s in steps]
    dl = sum(s["deliveries"] for s, _ in pairs)
    sio_us = 1e6 * sum(s["server_cpu_s"] for s, _ in pairs) / dl
    floor_us = sum(s["deliveries"] * f["us_per_delivery"] for s, f in pairs) / dl
    lowest = min(f["us_per_delivery"] for f in fs)
    c = sio_us / floor_us
    print(f"           highest ratio any server writing one frame per delivery could reach on "
          f"this machine: {c:.1f}x")
    print(f"             = Socket.IO {sio_us:.1f} µs of server CPU per delivery (steps with p99 < 50 ms)"
          f" / kernel floor {floor_us:.2f} µs; each Socket.IO step paired with the floor step "
          "closest in deliveries/s:")
    for s, f in pairs:
        print(f"               {s['rate']:g}/s ({s['deliveries_per_s']:.0f} deliveries/s): Socket.IO "
              f"{1e6 * s['server_cpu_s'] / s['deliveries']:.1f} µs / floor {f['us_per_delivery']:.2f} µs "
              f"(floor step {floor_rate(f):.0f} deliveries/s)")
    print(f"             with the lowest floor value instead ({lowest:.2f} µs, the most generous): "
          f"{sio_us / lowest:.1f}x")
    if achieved:
        print(f"             roomcast's {achieved:.1f}x is {100 * achieved / c:.0f}% of that ceiling")

def rate_ceiling(fan, fl, sio_rate):
    """What 5x Socket.IO's highest rate would need from this machine: at least the load
    generator's own CPU per delivery (its cheapest healthy step in the roomcast run) plus the
    kernel floor's (lowest value), Redis and the gateway's own work left out (generous)."""
    gen = [1e6 * s["client_cpu_s"] / s["deliveries"] for s in fan["steps"]
           if healthy(s) and s.get("client_cpu_s") and s["deliveries"]]
    floors = [f["us_per_delivery"] for f in (fl or {}).get("steps", []) if f.get("us_per_delivery")]
    if not gen or not floors:
        return
    g, f = min(gen), min(floors)
    rate = 5 * sio_rate
    deliveries = rate * fan["members_per_room"]
    cores = deliveries * (g + f) / 1e6
    have = os.cpu_count() or 1
    verdict = "more than this machine has" if cores > have else "within this machine"
    print(f"           5x Socket.IO's rate = {rate:g} msgs/s = {deliveries:,.0f} deliveries/s; the load "
          f"generator alone needs {g:.1f} µs and the kernel floor {f:.1f} µs per delivery: "
          f"{cores:.1f} cores of the {have} here ({verdict}; Redis and the gateway's own work not counted)")

def load_clusters():
    """[(shards, bench report, topology)] of the cluster scenario, by shard count."""
    out = []
    for p in glob.glob(os.path.join(d, "cluster-*.json")):
        name = os.path.basename(p)[:-len(".json")]
        n = name[len("cluster-"):]
        if n.isdigit():
            r = load(name)
            if r:
                out.append((int(n), r, load(name + ".topology") or {"shards": []}))
    return sorted(out, key=lambda c: c[0])

def watched_cpu(step):
    return [w["cpu_s"] for w in step.get("watched", []) if w.get("cpu_s") is not None]

def cluster_tables(clusters):
    r0 = clusters[0][1]
    print("\n## cluster: 2 replicas on a Redis Cluster (redis.mode = \"cluster\"), "
          + " vs ".join(f"{n} shard{'s' if n > 1 else ''}" for n, _, _ in clusters))
    print(f"{r0['connections']} connections over {len(r0['urls'])} replicas, {r0['rooms']} rooms x "
          f"{r0['members_per_room']} members, {r0['publishers_per_room']} publishers/room, "
          f"{r0['message_bytes']} B messages; one cluster after the other in this run, "
          f"{os.cpu_count()} cores shared by the load generator, the gateways and every "
          "redis-server (compare the shard counts with each other only)")
    for n, r, topo in clusters:
        parts = [f"{s['label']} :{s['port']} slots {s['slots']}: {s['rooms']} rooms"
                 for s in topo.get("shards", [])]
        if parts:
            print(f"  {n} shard(s): " + "; ".join(parts))
    print("  per shard since it started (INFO; connect, join and every step): scripts run (EVALSHA), "
          "read events, scripts per read event, seconds inside scripts, CPU seconds")
    for n, r, topo in clusters:
        for s in topo.get("shards", []):
            if "reads" not in s:
                continue
            ev = s.get("cmdstats", {}).get("evalsha", {"calls": 0, "usec": 0})
            per = f"{ev['calls'] / s['reads']:.2f}" if s["reads"] else "-"
            print(f"    {n} shard(s) {s['label']}: {ev['calls']:,} scripts, {s['reads']:,} reads, "
                  f"{per} scripts/read, {ev['usec'] / 1e6:.2f} s in scripts, {s['cpu_s']:.2f} s CPU")
    hdr = ["shards", "rate/s", "s", "sent/s", "deliv/s", "p50 ms", "p99 ms", "max ms", "gw cpu s",
           "redis cpu s per shard", "redis total s", "redis µs/msg", "busiest shard s",
           "busiest % core", "machine busy%", "lost", "dup"]
    rows = []
    for n, r, _ in clusters:
        t = r["totals"]
        for s in r["steps"]:
            l, cpu = s["latency_us"], watched_cpu(s)
            per = " / ".join(f"{c:.2f}" for c in cpu) or "-"
            rows.append([str(n), f"{s['rate']:g}", f"{s['seconds']:.1f}", f"{s['sent_per_s']:.0f}",
                         f"{s['deliveries_per_s']:.0f}", ms(l["p50"]), ms(l["p99"]), ms(l["max"]),
                         fmt(s.get("server_cpu_s")), per, fmt(sum(cpu)) if cpu else "-",
                         fmt(1e6 * sum(cpu) / s["sent"], 1) if cpu and s["sent"] else "-",
                         fmt(max(cpu)) if cpu else "-",
                         fmt(100 * max(cpu) / s["seconds"], 1) if cpu and s["seconds"] else "-",
                         fmt(s.get("machine_busy_pct"), 0), str(t["lost"]), str(t["duplicated"])])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)] if rows else []
    print("  ".join(h.rjust(w) for h, w in zip(hdr, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print("(redis cpu = utime + stime of each redis-server process during the step, from /proc; "
          "gw cpu = both gateways)")
    # The spread: the busiest shard of the largest cluster against the single shard, per rate.
    (n1, r1, _), (nk, rk, _) = clusters[0], clusters[-1]
    if nk == n1:
        return
    by_rate = {s["rate"]: s for s in rk["steps"]}
    for s1 in r1["steps"]:
        sk = by_rate.get(s1["rate"])
        c1, ck = watched_cpu(s1), (watched_cpu(sk) if sk else [])
        if not c1 or not ck or max(c1) <= 0:
            continue
        print(f"  at {s1['rate']:g} msgs/s: busiest shard {max(c1):.2f} s ({n1} shard{'s' if n1 > 1 else ''}) -> "
              f"{max(ck):.2f} s ({nk} shards) = {100 * max(ck) / max(c1):.0f}%; Redis in total "
              f"{sum(c1):.2f} s -> {sum(ck):.2f} s; deliveries/s {s1['deliveries_per_s']:.0f} -> "
              f"{sk['deliveries_per_s']:.0f}; p99 {ms(s1['latency_us']['p99'])} -> "
              f"{ms(sk['latency_us']['p99'])} ms")

def check(name, ok, text):
    mark = "met" if ok else ("MISSED" if ok is not None else "n/a")
    print(f"  [{mark:>6}] {name}: {text}")

fan, sio, idle = load("fanout"), load("socketio"), load("idle")
bmem, bred = load("bus-memory"), load("bus-redis")
fl = load("floor")
if fan: table("fanout: roomcast, 2 replicas + Redis", fan)
if sio: table("socketio: Socket.IO 4 + redis-adapter, 2 node processes + Redis", sio)
if fan and sio: side_by_side(fan, sio)
if idle:
    print("\n## idle: one replica (memory bus), connections held by two load generator processes")
    for part in ("idle-1", "idle-2"):
        r = load(part)
        if r:
            t = r["totals"]
            print(f"{part}: {r['connected']}/{r['connections']} connected in {r['connect_seconds']} s, "
                  f"connect errors {t['connect_errors']}, closes {t['closes_by_reason'] or '{}'}")
    print(f"{idle['connections']} connections established (target {idle['target_connections']}); "
          f"RSS {idle['rss_before_kib']} KiB -> {idle['rss_after_kib']} KiB = "
          f"{fmt(idle['rss_per_connection_bytes'], 0)} B per connection; idle CPU "
          f"{idle['idle_cpu_s']} s over {idle['idle_seconds']} s = {idle['idle_cpu_pct']}% of a core")
if bmem: table("bus: memory bus, one replica", bmem)
if bred: table("bus: Redis bus, one replica", bred)
if fl: floor_table(fl)
clusters = load_clusters()
if clusters: cluster_tables(clusters)

print("\n## targets (reported, not asserted)")
if smoke:
    print("  (not checked in --smoke runs: the load is too small to mean anything)")
    sys.exit(0)
if fan:
    cross = [s for s in fan["steps"] if s["cross_deliveries"] and abs(s["deliveries_per_s"] - 20000) <= 4000]
    if cross:
        p = cross[0]["cross_latency_us"]["p99"]
        check("p99 cross-replica < 5 ms at 20,000 deliveries/s", p < 5000,
              f"{ms(p)} ms at {cross[0]['deliveries_per_s']:.0f} deliveries/s")
if fan and sio:
    ef, es = efficiency(fan), efficiency(sio)
    if ef and es:
        check(">= 5x deliveries per server CPU-second vs Socket.IO", ef / es >= 5,
              f"roomcast {ef:,.0f} vs Socket.IO {es:,.0f} deliveries/cpu-s = {ef / es:.1f}x "
              "(steps with p99 < 50 ms)")
    uf, us = efficiency(fan, "server_user_cpu_s"), efficiency(sio, "server_user_cpu_s")
    if uf and us:
        print(f"           user-space CPU only: roomcast {uf:,.0f} vs Socket.IO {us:,.0f} "
              f"deliveries/user-cpu-s = {uf / us:.1f}x")
    if fl:
        ceiling(sio, fl, ef / es if ef and es else None)
    rf, rs = best_rate(fan), best_rate(sio)
    if rf and rs:
        more = " (roomcast passed every step: the ratio is a lower bound)" if saturated(fan, rf) else ""
        check(">= 5x highest publish rate with p99 < 50 ms", rf / rs >= 5,
              f"roomcast {rf:g}/s vs Socket.IO {rs:g}/s = {rf / rs:.1f}x{more}")
        rate_ceiling(fan, fl, rs)
    else:
        check(">= 5x highest publish rate with p99 < 50 ms", None,
              f"roomcast {rf}, Socket.IO {rs} (no step under 50 ms for one of them)")
if sio and fl and not fan:
    print("  kernel floor vs Socket.IO (no roomcast fanout run):")
    ceiling(sio, fl)
if idle:
    b = idle.get("rss_per_connection_bytes")
    if b is not None:
        check("<= 8 KiB RSS per idle connection", b <= 8192,
              f"{b:,.0f} B per connection at {idle['connections']} connections")
if bmem and bred:
    em, er = efficiency(bmem), efficiency(bred)
    if em and er:
        check("Redis bus >= 70% of memory bus (deliveries per gateway CPU-second)", er / em >= 0.7,
              f"{er:,.0f} vs {em:,.0f} = {100 * er / em:.0f}% (steps with p99 < 50 ms)")
    rm, rr = best_rate(bmem), best_rate(bred)
    if rm and rr:
        check("Redis bus >= 70% of memory bus (highest rate with p99 < 50 ms)", rr / rm >= 0.7,
              f"{rr:g}/s vs {rm:g}/s = {100 * rr / rm:.0f}%")
PY
