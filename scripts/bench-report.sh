#!/usr/bin/env bash
# Prints the tables and ratios of one scripts/bench run from its JSON results:
#   scripts/bench-report.sh DIR     (DIR holds fanout.json, socketio.json, idle-SIZE.json (or an
#                                    older idle.json), bus-*.json, floor.json, cluster-N.json +
#                                    cluster-N.topology.json, storm-N.json + storm.json, full.json)
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
def hold_table(title, name, r, parts):
    print(f"\n## {title}")
    for part in parts:
        b = load(part)
        if b:
            t = b["totals"]
            print(f"{part}: {b['connected']}/{b['connections']} joined in {b['connect_seconds']} s "
                  f"({b['rooms']} rooms x {b['members_per_room']}), connect errors {t['connect_errors']}, "
                  f"disconnects {t['disconnects']}, open at the end {b.get('open_at_end', '-')}, "
                  f"closes {t['closes_by_reason'] or '{}'}")
    per = r.get("rss_per_connection_bytes")
    print(f"{r['connections']} connections established (target {r['target_connections']})"
          + (f" in {r['established_seconds']} s" if "established_seconds" in r else "")
          + (f" ({r['listen_overflows']} SYNs dropped by a full accept queue)" if r.get("listen_overflows") else "")
          + f"; RSS {r['rss_before_kib']} KiB -> {r['rss_after_kib']} KiB"
          + (f" at {r['connections_at_rss']} connections" if "connections_at_rss" in r else "")
          + f" = {fmt(per, 0)} B per connection"
          + ("" if r.get("gateway_quiet_before_rss", True) else " (the gateway was still busy)")
          + f"; idle CPU {r['idle_cpu_s']} s over {r['idle_seconds']} s = {r['idle_cpu_pct']}% of a core")
    if r.get("machine_slab_after_kib") is not None and r.get("connections_at_rss"):
        ds = r["machine_slab_after_kib"] - r["machine_slab_before_kib"]
        if ds > 0:
            print(f"kernel slab memory of the machine: +{ds} KiB = {ds * 1024 / r['connections_at_rss'] / 2:,.0f} B per "
                  "socket (both ends on this machine; not in RSS, charged to the pod's cgroup; noisy)")
        else:
            print(f"kernel slab memory of the machine: {ds:+} KiB (other work freed memory meanwhile: no figure)")
    if "min_established_during_hold" in r:
        print(f"held {r['hold_seconds']} s: at least {r['min_established_during_hold']} connections open "
              "throughout (sampled every 2 s)")

idles = []
for p in glob.glob(os.path.join(d, "idle-*.json")):
    n = os.path.basename(p)[len("idle-"):-len(".json")]
    if n.isdigit():
        r = load(f"idle-{n}")
        if r:
            idles.append((int(n), r))
idles.sort(key=lambda x: x[0])
if idle and not idles:
    hold_table("idle: one replica (memory bus), rooms of 10, connections held by two load generator processes",
               "idle", idle, ["idle-1", "idle-2"])
for size, r in idles:
    hold_table(f"idle: one replica (memory bus), rooms of {size} (or each process's share), "
               "two load generator processes", f"idle-{size}", r, [f"idle-{size}-1", f"idle-{size}-2"])
full = load("full")
if full:
    hold_table(f"full: one replica filled to its open-file limit, rooms of {full.get('room_size')}, "
               f"held {full.get('hold_seconds')} s", "full", full, ["full-1", "full-2"])
    parts = [load("full-1"), load("full-2")]
    if all(parts):
        print(f"time to connect them all: {full['established_seconds']} s until every TCP connection was "
              f"established, {max(b['connect_seconds'] for b in parts)} s until every client had joined "
              "(load generators' own clocks)")
        kept = (all(b["totals"]["disconnects"] == 0 and b["connected"] == b["connections"] for b in parts)
                and full["min_established_during_hold"] >= full["target_connections"])
        print(f"every connection stayed open for the whole hold: {'yes' if kept else 'NO'}")

def load_storms():
    out = []
    for p in glob.glob(os.path.join(d, "storm-*.json")):
        n = os.path.basename(p)[len("storm-"):-len(".json")]
        r = load(f"storm-{n}") if n.isdigit() else None
        if r and r.get("join_storm"):
            out.append((int(n), r))
    return sorted(out, key=lambda x: x[0])

storms = load_storms()
if storms:
    meta = load("storm") or {}
    offered = meta.get("deflate_offered", False)
    print(f"\n## storm: N clients join ONE room at the same instant; one replica, {meta.get('bus', 'memory')} bus; "
          f"permessage-deflate {'offered' if offered else 'not offered'} by the clients")
    hdr = ["clients", "joined", "join s", "storm s", "frames", "joined", "presence", "members", "other",
           "deflate", "compressed", "bytes (payload)", "wire bytes", "gw socket bytes", "socket/wire", "gw wchar", "peak RSS MiB", "max listed",
           "member_count", "summaries", "closed"]
    rows = []
    for n, r in storms:
        j = r["join_storm"]
        ft = j["frames_by_type"]
        other = sum(v["frames"] for k, v in ft.items() if k not in ("joined", "presence", "members", "welcome"))
        rows.append([str(n), f"{j['joined']}/{j['connections']}", f"{j['join_seconds']:.3f}",
                     f"{j['storm_seconds']:.3f}" + ("" if j["quiet"] else "+"), f"{j['frames']:,}",
                     f"{ft['joined']['frames']:,}", f"{ft['presence']['frames']:,}",
                     f"{ft['members']['frames']:,}", f"{other:,}",
                     "yes" if j.get("deflate") else ("refused" if j.get("deflate_offered") else "off"),
                     f"{j.get('compressed_frames', 0):,}", f"{j['bytes']:,}",
                     f"{j['wire_bytes']:,}",
                     f"{j['server_tcp_bytes']:,}" if j.get("server_tcp_bytes") is not None else "-",
                     fmt(j.get("server_tcp_over_wire"), 3),
                     f"{j['server_wchar_bytes']:,}" if j.get("server_wchar_bytes") is not None else "-",
                     fmt(j["server_peak_rss_kib"] / 1024, 1) if j.get("server_peak_rss_kib") else "-",
                     str(j["max_members_listed"]), str(j.get("max_member_count") or "-"),
                     str(j["presence_summaries"]), str(r["totals"]["disconnects"])])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(hdr)]
    print("  ".join(h.rjust(w) for h, w in zip(hdr, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    print("(frames and bytes: everything the clients received from the release of the joins until "
          "3 s without a frame, welcome frames excluded; deflate = permessage-deflate negotiated (yes), "
          "offered but refused by the gateway, or not offered (off); compressed = frames that arrived "
          "compressed; bytes (payload) = payloads as decoded (inflated); wire = what came over the wire: "
          "WebSocket headers + payloads as sent (compressed ones compressed, counted by the clients with "
          "deflate on; payload + headers otherwise); "
          "gw socket bytes = what the gateway's sockets sent over the same window (tcpi_bytes_acked, "
          "ss -tin): the cross-check, 1.000 = every byte accounted for; "
          "gw wchar = /proc/PID/io wchar, which counts write(2) but not the send(2) the gateway uses; "
          "peak RSS = VmHWM of the gateway started for this size; closed = connections the "
          "gateway closed, e.g. 1008 slow consumer; + = still busy at the timeout)")
    for n, r in storms:
        c = r["totals"]["closes_by_reason"]
        if c:
            print(f"  {n} clients: closes {c}")

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
for label, r in ([("idle", idle)] if idle and not idles else []) + [(f"idle, rooms of {n}", r) for n, r in idles] \
        + ([("full", full)] if full else []):
    b = r.get("rss_per_connection_bytes")
    if b is not None:
        check(f"<= 8 KiB RSS per idle connection ({label})", b <= 8192,
              f"{b:,.0f} B per connection at {r.get('connections_at_rss', r['connections'])} connections")
for (n1, r1), (n2, r2) in zip(storms, storms[1:]):
    j1, j2 = r1["join_storm"], r2["join_storm"]
    k = n2 / n1
    # Clients the gateway closed (slow consumers) stop receiving: the frames then say
    # nothing about how the join cost grows.
    whole = all(r["totals"]["disconnects"] == 0 and r["join_storm"]["joined"] == r["join_storm"]["connections"]
                for r in (r1, r2))
    if j1["frames"] and j1["wire_bytes"]:
        fr, br = j2["frames"] / j1["frames"], j2["wire_bytes"] / j1["wire_bytes"]
        check(f"storm: {k:g}x the clients -> at most {1.25 * k:g}x the frames and bytes ({n1} -> {n2})",
              (fr <= 1.25 * k and br <= 1.25 * k) if whole else None,
              ("" if whole else "NOT COMPARABLE: the gateway closed clients or some never joined "
               f"({r1['totals']['disconnects']} and {r2['totals']['disconnects']} closed); ") +
              f"frames x{fr:.2f} ({j1['frames']:,} -> {j2['frames']:,}), bytes x{br:.2f} "
              f"({j1['wire_bytes']:,} -> {j2['wire_bytes']:,}); join time {j1['join_seconds']:.2f} s -> "
              f"{j2['join_seconds']:.2f} s; peak RSS {fmt((j1.get('server_peak_rss_kib') or 0) / 1024, 0)} -> "
              f"{fmt((j2.get('server_peak_rss_kib') or 0) / 1024, 0)} MiB")
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
