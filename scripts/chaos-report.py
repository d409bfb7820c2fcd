#!/usr/bin/env python3
"""Result of one scripts/chaos scenario: reads what the scenario left in its directory,
checks the promises, prints a result block and adds the scenario to RESULTS (a JSON object
keyed by scenario, so docs can quote it). Exit status 1 when a promise is broken.

  chaos-report.py SCENARIO DIR RESULTS

DIR holds:
  bench.json      the load generator's report (--json --timeline), or bench-base.json and
                  bench-chaos.json for slow-flood
  samples.jsonl   chaos-sample.py's samples (readiness, pids, RSS, members)
  events          lines "NAME UNIX_MS": fault (injected), fault_end (healed, restarted,
                  continued; = fault for a kill), and scenario-specific ones
  facts.tsv       what the shell found out, one "KEY<TAB>JSON VALUE" per line: fault
                  (text), crashes, expected values, ...
"""
import json
import os
import sys


def load_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return default


def load_facts(path):
    facts = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition("\t")
                if key:
                    try:
                        facts[key] = json.loads(value)
                    except ValueError:
                        facts[key] = value
    except FileNotFoundError:
        pass
    return facts


def load_events(path):
    ev = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    ev[parts[0]] = int(parts[1])
    except FileNotFoundError:
        pass
    return ev


def load_samples(path):
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    except FileNotFoundError:
        pass
    return out


def secs(ms):
    return None if ms is None else round(ms / 1000.0, 2)


def delivery_back_ms(bench, since_ms):
    """Time from since_ms until the first delivery of a message sent at or after it."""
    tl = (bench or {}).get("timeline")
    if not tl or since_ms is None:
        return None
    for b in tl["buckets"]:
        if b["deliveries"] and b["newest_sent_ms"] >= since_ms:
            return max(0, b["t_ms"] - since_ms)
    return None


def longest_delivery_gap_ms(bench, from_ms, to_ms):
    """Longest run of timeline intervals without any delivery between two instants."""
    tl = (bench or {}).get("timeline")
    if not tl:
        return None
    step = tl["interval_ms"]
    best = cur = 0
    for b in tl["buckets"]:
        if b["t_ms"] < from_ms or b["t_ms"] > to_ms:
            continue
        cur = cur + step if b["deliveries"] == 0 else 0
        best = max(best, cur)
    return best


def readiness(samples, replicas, fault_ms, end_ms):
    """For the given replicas after fault_ms: whether readiness dropped, and when (after
    end_ms, the heal) all of them were ready again for good."""
    after = [s for s in samples if s["t_ms"] >= fault_ms]
    if not after:
        return {"dropped": None, "ready_back_s": None}

    def all_ready(s):
        return all(s["replicas"].get(str(r), {}).get("ready") for r in replicas)

    dropped = any(not all_ready(s) for s in after)
    last_bad = max((s["t_ms"] for s in after if not all_ready(s)), default=None)
    if last_bad is None:
        return {"dropped": False, "ready_back_s": 0.0}
    later = [s["t_ms"] for s in after if s["t_ms"] > last_bad]
    if not later:
        return {"dropped": dropped, "ready_back_s": None}
    first_bad = min(s["t_ms"] for s in after if not all_ready(s))
    return {"dropped": dropped, "unready_from_s": secs(first_bad - fault_ms),
            "ready_back_s": secs(max(0, later[0] - end_ms))}


def bench_summary(b):
    if not b:
        return {}
    t = b["totals"]
    step = (b.get("steps") or [{}])[0]
    return {
        "connections": b.get("connections"),
        "connected": b.get("connected"),
        "rooms": b.get("rooms"),
        "rate": step.get("rate"),
        "sent_per_s": step.get("sent_per_s"),
        "deliveries_per_s": step.get("deliveries_per_s"),
        "p50_ms": round(b["latency_all_us"]["p50"] / 1000, 2),
        "p99_ms": round(b["latency_all_us"]["p99"] / 1000, 2),
        "sent": t["sent"], "acked": t["acked"], "refused": t.get("refused"),
        "refused_by_code": t.get("refused_by_code"), "unacked": t["unacked"],
        "deliveries": t["deliveries"], "lost": t["lost"], "lost_acked": t.get("lost_acked"),
        "duplicated": t["duplicated"], "unrecovered": t["unrecovered"],
        "members_not_joined": t["members_not_joined"], "disconnects": t["disconnects"],
        "resumes": (t.get("resume_us") or {}).get("count", 0),
        "resume_max_s": secs((t.get("resume_us") or {}).get("max", 0) / 1000),
        "resume_p50_s": secs((t.get("resume_us") or {}).get("p50", 0) / 1000),
        "closes_by_reason": t.get("closes_by_reason"), "settled": t.get("settled"),
        "answer_p99_s": secs((t.get("answer_us") or {}).get("p99", 0) / 1000),
        "answer_max_s": secs((t.get("answer_us") or {}).get("max", 0) / 1000),
    }


def main():
    scenario, d, results_path = sys.argv[1], sys.argv[2], sys.argv[3]
    facts = load_facts(os.path.join(d, "facts.tsv"))
    ev = load_events(os.path.join(d, "events"))
    samples = load_samples(os.path.join(d, "samples.jsonl"))
    fault = ev.get("fault")
    fault_end = ev.get("fault_end", fault)
    r = {"scenario": scenario, "size": facts.get("size"), "fault": facts.get("fault")}
    broken = []
    notes = []

    if scenario == "slow-flood":
        base = load_json(os.path.join(d, "bench-base.json"))
        chaos = load_json(os.path.join(d, "bench-chaos.json"))
        r["base"] = bench_summary(base)
        r["chaos"] = bench_summary(chaos)
        r["slow"] = facts.get("slow")
        r["flood"] = facts.get("flood")
        bench_list = [("base", base), ("chaos", chaos)]
        if base and chaos:
            p_base = base["latency_all_us"]["p99"]
            p_chaos = chaos["latency_all_us"]["p99"]
            floor = int(facts.get("p99_floor_ms", 5)) * 1000
            r["p99_ratio"] = round(p_chaos / max(p_base, 1), 2)
            r["p99_ratio_floored"] = round(p_chaos / max(p_base, floor), 2)
            limit = float(facts.get("max_ratio", 2.0))
            r["max_ratio"] = limit
            r["ratio_asserted"] = bool(facts.get("assert_ratio", 1))
            if r["p99_ratio_floored"] > limit and not r["ratio_asserted"]:
                notes.append(f"p99 ratio {r['p99_ratio_floored']} over {limit} (not asserted in a smoke run)")
            elif r["p99_ratio_floored"] > limit:
                broken.append(f"normal members' p99 {p_chaos / 1000:.1f} ms with the slow consumer "
                              f"and flooder is {r['p99_ratio_floored']}x the {p_base / 1000:.1f} ms "
                              f"without them (limit {limit}x, floor {floor // 1000} ms)")
        else:
            broken.append("a bench report is missing")
        flood = facts.get("flood") or {}
        if not flood.get("acked"):
            broken.append("the flooder published nothing (no flood)")
    else:
        bench = load_json(os.path.join(d, "bench.json"))
        r["load"] = bench_summary(bench)
        bench_list = [("bench", bench)]
        if not bench:
            broken.append("no bench report")
        if fault is None:
            broken.append("the fault was never injected")
        else:
            back = delivery_back_ms(bench, fault_end)
            r["delivery_back_s"] = secs(back)
            end = ev.get("bench_end", fault_end + 600000)
            r["longest_delivery_gap_s"] = secs(longest_delivery_gap_ms(bench, fault, end))
            if back is None:
                broken.append("no message sent after the fault was ever delivered")
            watch = facts.get("watch_ready") or []
            if watch:
                rd = readiness(samples, watch, fault, fault_end)
                r["readiness"] = rd
                if facts.get("expect_unready") and not rd["dropped"]:
                    broken.append(f"readiness of replica(s) {watch} never dropped during the fault")
                if rd["ready_back_s"] is None:
                    broken.append(f"replica(s) {watch} not ready again by the end")

    # Promises every scenario keeps.
    for name, b in bench_list:
        if not b:
            continue
        t = b["totals"]
        lost_acked = t.get("lost_acked")
        if lost_acked is None:
            lost_acked = t["lost"]
        if lost_acked:
            broken.append(f"{name}: {lost_acked} acknowledged messages lost")
        if t["duplicated"]:
            broken.append(f"{name}: {t['duplicated']} messages duplicated")
        if t["members_not_joined"] or b.get("connected", 0) < b.get("connections", 0):
            broken.append(f"{name}: {b['connections'] - b['connected']} connections never joined")
        if not t["deliveries"]:
            broken.append(f"{name}: nothing delivered")
        if t["lost"] and t["lost"] != lost_acked:
            notes.append(f"{name}: {t['lost'] - lost_acked} deliveries missing of messages "
                         f"never acked (sent with the fault in flight)")
        if t["unrecovered"] and not facts.get("unrecovered_expected"):
            broken.append(f"{name}: {t['unrecovered']} resumes answered recovered:false")
    r["crashes"] = facts.get("crashes", 0)
    if r["crashes"]:
        broken.append(f"{r['crashes']} replica(s) exited unexpectedly: {facts.get('crashed')}")

    # Scenario specifics.
    load = r.get("load") or {}
    # How long a sender waited for its ack or error (docs/protocol.md: `unavailable` when
    # Redis did not answer within 2 s). Reported; a promise only with max_answer_s.
    if load.get("answer_max_s") is not None:
        limit = facts.get("max_answer_s")
        if limit is not None and load["answer_max_s"] > float(limit):
            broken.append(f"a send waited {load['answer_max_s']} s for its answer (limit {limit} s)")
        elif load["answer_max_s"] > 3:
            notes.append(f"a send waited up to {load['answer_max_s']} s for its ack or error "
                         "(docs/protocol.md: unavailable after 2 s)")
    if scenario == "replica-kill":
        bound = facts.get("presence_bound_s")
        expired = None
        m0 = facts.get("members_expected")
        # Until the load generator stops publishing (then its clients leave).
        until = ev.get("bench_ready", 0) + int(facts.get("bench_seconds", 0)) * 1000
        ms = [(s["t_ms"], s["members"]) for s in samples
              if "members" in s and fault <= s["t_ms"] <= until]
        if m0 and ms:
            # The first sample after which the count is back to the members the bench
            # holds (the killed replica's stale entries gone) and stays there.
            for i, (t, n) in enumerate(ms):
                if all(v == m0 for _, v in ms[i:]):
                    expired = t - fault
                    break
            r["members_peak_after_kill"] = max(v for _, v in ms)
        r["members_expected"] = m0
        r["presence_expired_s"] = secs(expired)
        r["presence_bound_s"] = bound
        if expired is None:
            broken.append(f"the killed replica's members never left the roster (expected {m0})")
        elif bound is not None and expired / 1000.0 > bound:
            broken.append(f"killed replica's members gone after {expired / 1000:.1f} s, bound {bound} s")
        if not load.get("resumes"):
            broken.append("no client resumed: the kill moved nobody")
    elif scenario in ("redis-restart", "redis-freeze", "partition"):
        probe = facts.get("probe") or {}
        r["probe"] = probe
        want = facts.get("probe_recovered")
        if probe.get("recovered") != want:
            broken.append(f"a resume from before the fault answered recovered={probe.get('recovered')}, expected {want}")
        if not probe.get("delivered"):
            broken.append("the probe's message after the fault was not delivered")
        unavailable = (load.get("refused_by_code") or {}).get("unavailable", 0)
        r["refused_unavailable"] = unavailable
        if facts.get("expect_refused") and not unavailable:
            broken.append("no send was refused with unavailable during the fault")
        if facts.get("resubscribed") is not None:
            r["resubscribed"] = facts["resubscribed"]
            if facts["resubscribed"] < facts.get("resubscribed_expected", 0):
                broken.append(f"only {facts['resubscribed']} of {facts['resubscribed_expected']} "
                              "replicas logged their rooms resubscribed")
    if scenario == "partition":
        # The cut replica's members may have been reaped by the others meanwhile (a cut
        # longer than presence.ttl); once healed, the roster must hold every member again.
        r["members_expected"] = facts.get("members_expected")
        r["roster_back_s"] = facts.get("roster_back_s")
        r["roster_at_end"] = facts.get("roster_at_end")
        lows = [s["members"] for s in samples if "members" in s and fault is not None
                and fault <= s["t_ms"] <= (fault_end or fault) + 1000]
        r["members_min_during_cut"] = min(lows) if lows else None
        if r["roster_back_s"] is None:
            broken.append(f"the roster did not get back to {r['members_expected']} members after the heal "
                          f"(it held {r['roster_at_end']})")
    if scenario == "redis-freeze":
        k = float(facts.get("rss_factor", 2.0))
        rss = {}
        for rep in facts.get("watch_ready") or []:
            pre = [s["replicas"][str(rep)]["rss_kib"] for s in samples
                   if s["t_ms"] < fault and s["replicas"].get(str(rep), {}).get("rss_kib")]
            during = [s["replicas"][str(rep)]["rss_kib"] for s in samples
                      if fault <= s["t_ms"] <= fault_end + 2000
                      and s["replicas"].get(str(rep), {}).get("rss_kib")]
            if pre and during:
                before = pre[-1]
                peak = max(during)
                rss[str(rep)] = {"before_mib": round(before / 1024, 1), "peak_mib": round(peak / 1024, 1),
                                 "ratio": round(peak / before, 2)}
                if peak > k * before:
                    broken.append(f"replica {rep}: RSS {peak / 1024:.0f} MiB during the freeze, over "
                                  f"{k} x {before / 1024:.0f} MiB before it")
        r["rss"] = rss
        r["rss_bound"] = f"peak RSS during the freeze (and 2 s after) <= {k} x the RSS before it"
        if not rss:
            broken.append("no RSS samples around the freeze")
    if scenario == "storm":
        drained = facts.get("drained_connections")
        r["drained_connections"] = drained
        if drained and load.get("resumes", 0) < drained:
            broken.append(f"only {load.get('resumes')} of {drained} drained connections resumed")
    if scenario == "cluster-master-kill":
        r["failover_s"] = facts.get("failover_s")
        if facts.get("failover_s") is None:
            broken.append("the cluster did not fail over (no new master for the killed one's slots)")

    r["notes"] = notes
    r["broken"] = broken
    r["ok"] = not broken

    # Print.
    print(f"--- {scenario} ({r['size']}): {r['fault']}")
    if scenario == "slow-flood":
        for k in ("base", "chaos"):
            s = r.get(k) or {}
            print(f"  {k:6} {s.get('connected')}/{s.get('connections')} conns, "
                  f"{s.get('sent_per_s')} msg/s, {s.get('deliveries_per_s')} deliv/s, "
                  f"p50 {s.get('p50_ms')} ms, p99 {s.get('p99_ms')} ms, lost {s.get('lost')}, dup {s.get('duplicated')}")
        print(f"  p99 ratio with/without: {r.get('p99_ratio')} (floored: {r.get('p99_ratio_floored')}, "
              f"limit {r.get('max_ratio')}); flood {r.get('flood')}; slow {r.get('slow')}")
    else:
        print(f"  load    {load.get('connected')}/{load.get('connections')} connections, "
              f"{load.get('sent_per_s')} msg/s sent, {load.get('deliveries_per_s')} deliveries/s, "
              f"p99 {load.get('p99_ms')} ms")
        rd = r.get("readiness") or {}
        print(f"  recover readiness dropped: {rd.get('dropped')}, ready again {rd.get('ready_back_s')} s "
              f"after the fault ended; first delivery of a new message {r.get('delivery_back_s')} s after; "
              f"longest delivery gap {r.get('longest_delivery_gap_s')} s; "
              f"resumes {load.get('resumes')} (slowest {load.get('resume_max_s')} s)")
        print(f"  answers p99 {load.get('answer_p99_s')} s, max {load.get('answer_max_s')} s (send to ack or error)")
        print(f"  loss    lost {load.get('lost')} (acked {load.get('lost_acked')}), "
              f"duplicated {load.get('duplicated')}, refused {load.get('refused')} {load.get('refused_by_code')}, "
              f"unacked {load.get('unacked')}, unrecovered {load.get('unrecovered')}, crashes {r['crashes']}")
        extra = {k: r[k] for k in ("presence_expired_s", "presence_bound_s", "probe", "rss",
                                   "drained_connections", "failover_s", "resubscribed",
                                   "roster_back_s", "members_min_during_cut") if k in r}
        if extra:
            print(f"  checks  {json.dumps(extra)}")
    for n in notes:
        print(f"  note    {n}")
    for b in broken:
        print(f"  BROKEN  {b}")
    print(f"  result  {'ok' if r['ok'] else 'FAILED'}")

    results = load_json(results_path, {}) or {}
    results[scenario] = r
    with open(results_path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(results_path + ".tmp", results_path)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
