#!/usr/bin/env python3
"""Verdict and plot of scripts/soak: reads the samples (soak-sample.py's CSV), the load
generator's JSON report and the churn clients' summary, checks the tolerances below,
prints one line per check and a closing "soak: N passed, N failed", writes summary.json
beside the CSV, and renders the samples to an SVG (python3 stdlib only).

Usage: soak-report.py CSV BENCH_JSON BENCH_EXIT CHURN_JSON CHURN_EXIT SVG_OUT
Exit status 0 when every check passed.

The checks (windows: "steady" = the samples after the warm-up while the load runs;
"quiesce" = the last samples, after the load stopped and SOAK_SETTLE passed):
- no message lost: roomcast-bench --resume --fail-on-loss exited 0 and its totals show 0
  lost, 0 duplicated, 0 unrecovered, every member joined; the churn clients saw no gap
  (`recovered: false`) and at most SOAK_MAX_CHURN_FAILED (1%) of their cycles failed;
- the replicas stayed alive (every sample);
- RSS per replica, over the steady window: the least-squares slope, projected over an
  hour, is at most SOAK_MAX_RSS_PCT_PER_HOUR (50%) of the window's mean RSS and at most
  SOAK_MAX_BYTES_PER_CONN (400) bytes per connection the replica accepted meanwhile;
  either limit is applied only when the fitted growth over the window exceeds
  SOAK_RSS_NOISE_MIB (1 MiB: an allocator keeps and returns pages in steps of that order);
  and the median of the window's last tenth is at most SOAK_MAX_RSS_END_PCT (20%) (and
  2 MiB) above the median of its first tenth. A leak of 1 KiB per churned connection at the
  default churn (~12 connections/s per replica) grows RSS by ~40 MiB/h and fails all three;
- quiesce, per replica: 0 connections, 0 rooms, open descriptors at most the baseline's + 4,
  threads at most the baseline's + 4 (tokio retires idle blocking threads after 10 s);
- Redis: channels and subscriptions back to the baseline's at quiesce, as many clients as
  at the baseline; over the steady window, keys without a TTL (presence hashes of rooms
  with members, which churn moves in and out) grow by at most 25% + 10, keys
  with a TTL (idempotency keys, which live api.idempotency_ttl) by at most 25% + 50, and
  used_memory by at most 20% + 1 MiB (median of the last tenth vs the first tenth).
"""

import csv
import json
import math
import os
import sys

csv_path, bench_json, bench_exit, churn_json, churn_exit, svg_out = sys.argv[1:7]
env = os.environ.get
MAX_PCT_H = float(env("SOAK_MAX_RSS_PCT_PER_HOUR", "50"))
MAX_B_CONN = float(env("SOAK_MAX_BYTES_PER_CONN", "400"))
NOISE_MIB = float(env("SOAK_RSS_NOISE_MIB", "1"))
MAX_END_PCT = float(env("SOAK_MAX_RSS_END_PCT", "20"))
MAX_CHURN_FAILED = float(env("SOAK_MAX_CHURN_FAILED", "0.01"))

with open(csv_path) as f:
    rows = list(csv.DictReader(f))


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def series(col, phases=None):
    return [
        (num(r["t"]), num(r.get(col)))
        for r in rows
        if num(r.get(col)) is not None and (phases is None or r["phase"] in phases)
    ]


N = 0
while f"r{N + 1}_rss_kb" in rows[0]:
    N += 1

results = []  # (ok, text)
figures = {}


def check(ok, text):
    results.append((bool(ok), text))


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return (xs[n // 2] + xs[(n - 1) // 2]) / 2 if n else float("nan")


def tenths(points):
    """Medians of the first and last tenth (at least 3 samples each) of a window."""
    vals = [v for _, v in points]
    k = max(3, len(vals) // 10)
    return median(vals[:k]), median(vals[-k:])


def fit(points):
    n = len(points)
    if n < 3:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (v - my) for t, v in points) / sxx if sxx else 0.0


# --- loss -------------------------------------------------------------------------------
try:
    with open(bench_json) as f:
        bench = json.load(f)
    totals = bench.get("totals", bench)
except Exception as e:
    bench, totals = None, {}
    check(False, f"load generator report readable ({e})")
keys = ("sent", "acked", "deliveries", "lost", "duplicated", "unrecovered", "members_not_joined", "reconnects")
bench_line = "  ".join(f"{k}={totals[k]}" for k in keys if k in totals)
problems = [f"{k}={totals.get(k)}" for k in ("lost", "duplicated", "unrecovered", "members_not_joined") if totals.get(k)]
if bench is not None and "lost" not in totals:
    problems.append("no loss figures in the report")
check(bench_exit == "0" and not problems,
      f"steady clients (roomcast-bench --resume --fail-on-loss, exit {bench_exit}): {bench_line} {'; '.join(problems)}".rstrip())
figures["bench"] = {k: totals.get(k) for k in keys}
try:
    with open(churn_json) as f:
        churn = json.load(f)
except Exception as e:
    churn = {}
    check(False, f"churn summary readable ({e})")
cycles = churn.get("cycles", 0)
failed = churn.get("cycles_failed", 0)
check(churn.get("gaps", 1) == 0 and cycles > 0 and failed <= MAX_CHURN_FAILED * cycles,
      f"churn clients (exit {churn_exit}): {cycles} cycles, {failed} failed (limit {MAX_CHURN_FAILED:.0%}), "
      f"{churn.get('connects', 0)} connections ({churn.get('connections_per_second', 0):.1f}/s), "
      f"{churn.get('joins', 0)} joins, {churn.get('leaves', 0)} leaves, {churn.get('typing', 0)} typing, "
      f"{churn.get('sends_acked', 0)} sends acked, {churn.get('forced_reconnects', 0)} forced reconnects, "
      f"{churn.get('gaps', '?')} gaps; errors {churn.get('errors', {})}")
figures["churn"] = churn

# --- replicas ----------------------------------------------------------------------------
steady = {"steady"}
baseline_rows = [r for r in rows if r["phase"] == "baseline"]
quiesce_rows = [r for r in rows if r["phase"] == "quiesce"]
for i in range(1, N + 1):
    p = f"r{i}_"
    dead = [r["t"] for r in rows if r.get(p + "alive") == "0"]
    check(not dead, f"replica {i} alive in every sample" + (f" (gone at t={dead[0]}s)" if dead else ""))
    rss = [(t, v * 1024) for t, v in series(p + "rss_kb", steady)]
    acc = series(p + "accepted", steady)
    if len(rss) < 6 or len(acc) < 2:
        check(False, f"replica {i}: too few steady samples ({len(rss)})")
        continue
    window = rss[-1][0] - rss[0][0]
    slope = fit(rss)  # bytes per second
    mean_rss = sum(v for _, v in rss) / len(rss)
    grown = slope * window
    conn_rate = (acc[-1][1] - acc[0][1]) / max(acc[-1][0] - acc[0][0], 1)
    per_conn = slope / conn_rate if conn_rate > 0 else 0.0
    pct_h = slope * 3600 / mean_rss * 100
    noisy = grown <= NOISE_MIB * 2**20
    ok = noisy or (pct_h <= MAX_PCT_H and per_conn <= MAX_B_CONN)
    check(ok, f"replica {i} RSS slope: {slope * 3600 / 2**20:+.2f} MiB/h = {pct_h:+.1f}%/h of {mean_rss / 2**20:.1f} MiB "
              f"(limit {MAX_PCT_H:.0f}%/h), {per_conn:+.0f} B per accepted connection at {conn_rate:.1f}/s "
              f"(limit {MAX_B_CONN:.0f}); fitted growth {grown / 2**20:+.2f} MiB over {window:.0f}s"
              + (f" (under the {NOISE_MIB:g} MiB noise floor)" if noisy else ""))
    first, last = tenths(rss)
    end_pct = (last - first) / first * 100
    check(end_pct <= MAX_END_PCT or last - first <= 2 * 2**20,
          f"replica {i} RSS end vs post-warm-up: {first / 2**20:.1f} -> {last / 2**20:.1f} MiB ({end_pct:+.1f}%, limit {MAX_END_PCT:.0f}% and 2 MiB)")
    figures[f"replica_{i}"] = {
        "rss_first_mib": round(first / 2**20, 2), "rss_last_mib": round(last / 2**20, 2),
        "rss_slope_mib_per_h": round(slope * 3600 / 2**20, 3), "rss_pct_per_h": round(pct_h, 2),
        "bytes_per_accepted_connection": round(per_conn, 1), "accepted_per_s": round(conn_rate, 2),
        "rss_max_mib": round(max(v for _, v in rss) / 2**20, 2),
    }
    if baseline_rows and quiesce_rows:
        b, q = baseline_rows[-1], quiesce_rows[-1]
        bf, qf = num(b.get(p + "fds")), num(q.get(p + "fds"))
        bt, qt = num(b.get(p + "threads")), num(q.get(p + "threads"))
        qc, qr = num(q.get(p + "conns")), num(q.get(p + "rooms"))
        check(qc == 0 and qr == 0, f"replica {i} at quiesce: {qc:.0f} connections, {qr:.0f} rooms (want 0, 0)"
              if qc is not None and qr is not None else f"replica {i} at quiesce: no metrics")
        ok_fd = None not in (bf, qf) and qf <= bf + 4
        ok_th = None not in (bt, qt) and qt <= bt + 4
        check(ok_fd, f"replica {i} open descriptors: baseline {bf}, quiesce {qf} (limit baseline + 4); "
                     f"steady max {max((v for _, v in series(p + 'fds', steady)), default=0):.0f}")
        check(ok_th, f"replica {i} threads: baseline {bt}, quiesce {qt} (limit baseline + 4); "
                     f"steady max {max((v for _, v in series(p + 'threads', steady)), default=0):.0f}")
        figures[f"replica_{i}"].update({"fds_baseline": bf, "fds_quiesce": qf, "threads_baseline": bt, "threads_quiesce": qt})

# --- Redis -------------------------------------------------------------------------------
if baseline_rows and quiesce_rows:
    b, q = baseline_rows[-1], quiesce_rows[-1]
    for col, what in (("redis_channels", "channels"), ("redis_subscriptions", "subscriptions"), ("redis_clients", "clients")):
        bv, qv = num(b.get(col)), num(q.get(col))
        check(None not in (bv, qv) and qv <= bv, f"Redis {what}: baseline {bv}, quiesce {qv} (limit: the baseline); "
                                                 f"steady max {max((v for _, v in series(col, steady)), default=0):.0f}")
        figures[col] = {"baseline": bv, "quiesce": qv}
for col, what, pct, floor in (
    ("redis_keys_persistent", "keys without a TTL", 25, 10),
    ("redis_keys_ttl", "keys with a TTL", 25, 50),
    ("redis_used_memory", "used_memory", 20, 2**20),
):
    pts = series(col, steady)
    if len(pts) < 6:
        check(False, f"Redis {what}: too few steady samples")
        continue
    first, last = tenths(pts)
    limit = first * (1 + pct / 100) + floor
    unit = (lambda v: f"{v / 2**20:.2f} MiB") if col == "redis_used_memory" else (lambda v: f"{v:.0f}")
    check(last <= limit, f"Redis {what}: {unit(first)} -> {unit(last)} over the steady window (limit {unit(limit)}: +{pct}% + {unit(floor)})")
    figures[col + "_steady"] = {"first": first, "last": last}

# --- verdict -----------------------------------------------------------------------------
for ok, text in results:
    print(("ok    " if ok else "FAIL  ") + text)
passed = sum(1 for ok, _ in results if ok)
failed_n = len(results) - passed
t_warm = min((num(r["t"]) for r in rows if r["phase"] == "steady"), default=None)
t_load = min((num(r["t"]) for r in rows if r["phase"] == "warmup"), default=None)
t_end = min((num(r["t"]) for r in rows if r["phase"] in ("settle", "quiesce")), default=None)
summary = {"passed": passed, "failed": failed_n, "checks": [{"ok": ok, "text": t} for ok, t in results],
           "figures": figures, "samples": len(rows),
           "warmup_s": (t_warm - t_load) if None not in (t_warm, t_load) else None,
           "load_s": (t_end - t_load) if None not in (t_end, t_load) else None}
with open(os.path.join(os.path.dirname(os.path.abspath(csv_path)), "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)


# --- SVG ---------------------------------------------------------------------------------
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
PW, PH = 470, 220  # panel size
ML, MR, MT, MB = 62, 12, 40, 34  # margins inside a panel


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_ticks(lo, hi, n=4):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 0.5:
        ticks.append(round(v, 10))
        v += step
    return ticks


def fmt(v):
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def panel(x0, y0, title, lines, t_max):
    """lines: [(label, [(t, v), ...])]"""
    out = [f'<g transform="translate({x0},{y0})">',
           f'<text x="{PW / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{esc(title)}</text>']
    vals = [v for _, pts in lines for _, v in pts]
    if not vals:
        out.append(f'<text x="{PW / 2}" y="{PH / 2}" text-anchor="middle" font-size="12">no data</text></g>')
        return out
    lo, hi = min(vals), max(vals)
    lo = 0 if lo >= 0 and lo < (hi - lo) * 2 else lo - (hi - lo) * 0.1
    if hi == lo:
        hi = lo + 1
    yt = nice_ticks(lo, hi)
    lo, hi = min(lo, yt[0]), max(hi, yt[-1])
    w, h = PW - ML - MR, PH - MT - MB
    X = lambda t: ML + t / t_max * w
    Y = lambda v: MT + h - (v - lo) / (hi - lo) * h
    # Phase bands: warm-up (grey), after the load (blue).
    if t_load is not None and t_warm is not None:
        out.append(f'<rect x="{X(t_load):.1f}" y="{MT}" width="{X(t_warm) - X(t_load):.1f}" height="{h}" fill="#eeeeee"/>')
    if t_end is not None:
        out.append(f'<rect x="{X(t_end):.1f}" y="{MT}" width="{X(t_max) - X(t_end):.1f}" height="{h}" fill="#e3eefa"/>')
    out.append(f'<rect x="{ML}" y="{MT}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
    for v in yt:
        if lo <= v <= hi:
            out.append(f'<line x1="{ML}" x2="{ML + w}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{ML - 5}" y="{Y(v) + 4:.1f}" text-anchor="end" font-size="10">{fmt(v)}</text>')
    for tm in nice_ticks(0, t_max / 60, 6):
        if tm * 60 <= t_max:
            out.append(f'<text x="{X(tm * 60):.1f}" y="{MT + h + 14}" text-anchor="middle" font-size="10">{fmt(tm)}</text>')
    out.append(f'<text x="{ML + w / 2}" y="{PH - 4}" text-anchor="middle" font-size="10">minutes</text>')
    for k, (label, pts) in enumerate(lines):
        color = COLORS[k % len(COLORS)]
        d = " ".join(f"{X(t):.1f},{Y(v):.1f}" for t, v in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.4"/>')
        lx = ML + 8 + k * 105
        out.append(f'<line x1="{lx}" x2="{lx + 14}" y1="{MT - 8}" y2="{MT - 8}" stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 18}" y="{MT - 4}" font-size="10">{esc(label)}</text>')
    out.append("</g>")
    return out


t_max = max(num(r["t"]) for r in rows) or 1
reps = range(1, N + 1)
panels = [
    ("RSS per replica (MiB)", [(f"replica {i}", [(t, v / 1024) for t, v in series(f"r{i}_rss_kb")]) for i in reps]),
    ("Open file descriptors per replica", [(f"replica {i}", series(f"r{i}_fds")) for i in reps]),
    ("OS threads per replica", [(f"replica {i}", series(f"r{i}_threads")) for i in reps]),
    ("Open connections (roomcast_connections)", [(f"replica {i}", series(f"r{i}_conns")) for i in reps]),
    ("Rooms with local members (roomcast_rooms)", [(f"replica {i}", series(f"r{i}_rooms")) for i in reps]),
    ("Redis keys", [("no TTL", series("redis_keys_persistent")), ("with TTL", series("redis_keys_ttl"))]),
    ("Redis used_memory (MiB)", [("used_memory", [(t, v / 2**20) for t, v in series("redis_used_memory")])]),
    ("Redis pub/sub", [("channels", series("redis_channels")), ("subscriptions", series("redis_subscriptions"))]),
]
cols = 2
rows_n = math.ceil(len(panels) / cols)
TOP = 76
W, H = cols * PW + 20, TOP + rows_n * PH + 16 + 14 * len(results)
verdict = "PASS" if failed_n == 0 else "FAIL"
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="10" y="20" font-size="15" font-weight="bold">roomcast soak: {N} replicas + Redis, '
       f'{(summary["load_s"] or 0) / 60:.0f} min of load, sampled every {t_max / max(len(rows) - 1, 1):.0f} s: {verdict} '
       f'({passed} checks passed, {failed_n} failed)</text>',
       f'<text x="10" y="38" font-size="11">grey: warm-up ({(summary["warmup_s"] or 0):.0f} s, not judged); blue: after the load '
       f'(settle, then quiesce samples)</text>',
       f'<text x="10" y="53" font-size="11">steady clients (roomcast-bench --resume): {esc(bench_line)}</text>',
       f'<text x="10" y="68" font-size="11">churn clients (roomcast-client): {cycles} cycles, {churn.get("connects", 0)} connections, '
       f'{churn.get("joins", 0)} joins, {churn.get("leaves", 0)} leaves, {churn.get("typing", 0)} typing, '
       f'{churn.get("forced_reconnects", 0)} forced reconnects, {churn.get("gaps", "?")} gaps</text>']
for k, (title, lines) in enumerate(panels):
    svg += panel(10 + (k % cols) * PW, TOP + (k // cols) * PH, title, lines, t_max)
y = TOP + rows_n * PH + 16
for ok, text in results:
    color = "#222" if ok else "#c00"
    svg.append(f'<text x="10" y="{y}" font-size="9.5" fill="{color}">{"ok  " if ok else "FAIL"} {esc(text)}</text>')
    y += 14
svg.append("</svg>")
with open(svg_out, "w") as f:
    f.write("\n".join(svg) + "\n")
print(f"plot: {svg_out}")
print(f"soak: {passed} passed, {failed_n} failed")
sys.exit(0 if failed_n == 0 else 1)
