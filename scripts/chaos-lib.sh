# shellcheck shell=bash
# Helpers of scripts/chaos (sourced by it; not a command). Each scenario gets its own
# directory $OUT/<scenario> holding:
#   state/          the deploy/local state directory (logs of redis, replicas, haproxy)
#   bench*.json     the load generator's reports (--json --timeline)
#   samples.jsonl   scripts/chaos-sample.py: readiness, pids, RSS, room members over time
#   events          "NAME UNIX_MS" lines: fault, fault_end, bench_end, ...
#   facts.tsv       "KEY<TAB>JSON" lines the scenario found out (fault text, crashes, ...)
# and scripts/chaos-report.py turns them into the result (printed, and in
# $OUT/results.json). The topology is deploy/local (Redis or a Redis Cluster, 3 replicas,
# haproxy; no Prometheus), started and stopped once per scenario.
# Expects ROOT, OUT, ROOMCAST_BENCH_BIN and the CHAOS_* settings from scripts/chaos.

# deploy/local's helpers: start_bg, stop_bg, running, start_replica, ... STATE is set per
# scenario below. Its die() exits: call what may die in a subshell.
# shellcheck source=deploy/local/lib.sh
. "$ROOT/deploy/local/lib.sh"

CHAOS_API_KEY="chaos-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"

SDIR=""           # the current scenario's directory
BENCH_PID=""      # the load generator running in the background (one at a time)
SAMPLER_PID=""
PROXY_PID=""
CLIENT_PIDS=()    # chaos-clients.py slow / flood
STATES=()         # every deploy/local state directory used (torn down on exit)
declare -A INITIAL_PIDS=() # replica number -> pid when the scenario's load started
EXPECTED_DEAD=""  # replicas the scenario itself killed or stopped (" 2 3 ")

say() { printf '[chaos] %s\n' "$*" >&2; }
now_ms() { date +%s%3N; }
# mark NAME: records an event at this instant.
mark() { echo "$1 $(now_ms)" >>"$SDIR/events"; }
# fact KEY JSON: records a fact for the report (JSON value: a number, "a string", [..]).
fact() { printf '%s\t%s\n' "$1" "$2" >>"$SDIR/facts.tsv"; }
json_str() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

# scenario_begin NAME: a fresh directory and state for one scenario.
scenario_begin() {
    SDIR="$OUT/$1"
    rm -rf "$SDIR"
    mkdir -p "$SDIR"
    : >"$SDIR/events"
    : >"$SDIR/facts.tsv"
    export ROOMCAST_LOCAL_STATE="$SDIR/state"
    STATE="$ROOMCAST_LOCAL_STATE"
    STATES+=("$STATE")
    INITIAL_PIDS=()
    EXPECTED_DEAD=" "
    fact size "$(json_str "$SIZE")"
    say "== $1 ($SIZE): logs in $SDIR"
}

# replica_env [KEY=VALUE...]: the replicas' settings of a scenario (ROOMCAST_* configuration
# keys): the server API on (for the members roster) and what the scenario adds. Passed to
# up.sh and to replicas the scenario starts, never exported: the load generator and the
# other tools must not see them.
replica_env() {
    REPLICA_ENV=(ROOMCAST_API__KEYS="$CHAOS_API_KEY" ROOMCAST_LOG__LEVEL="${ROOMCAST_LOG__LEVEL:-info}" "$@")
}

# topo_up [--cluster]: deploy/local/up.sh with 3 replicas, no Prometheus, the replicas
# configured by REPLICA_ENV (replica_env first).
topo_up() {
    if ! env "${REPLICA_ENV[@]}" ROOMCAST_LOCAL_NO_PROMETHEUS=1 \
        ROOMCAST_LOCAL_SPREAD="${CHAOS_DRAIN_SPREAD:-1s}" \
        "$ROOT/deploy/local/up.sh" "$@" 3 >"$SDIR/up.log" 2>&1; then
        say "deploy/local/up.sh failed:"
        tail -n 20 "$SDIR/up.log" >&2
        return 1
    fi
    load_env
    LB_URL="ws://127.0.0.1:$LB_PORT/ws"
}

# remember_pids: the replicas' pids now (a later change that the scenario did not cause is
# a crash).
remember_pids() {
    local i
    for ((i = 1; i <= N; i++)); do
        INITIAL_PIDS[$i]="$(cat "$(pidfile "replica-$i")" 2>/dev/null)"
    done
}

# replica_pid I / redis_pid [NAME]
replica_pid() { cat "$(pidfile "replica-$1")" 2>/dev/null; }
redis_pid() { cat "$(pidfile "${1:-redis}")" 2>/dev/null; }

# rcli PORT ARGS...: redis-cli on a node of the deployment.
rcli() {
    local port="$1"
    shift
    REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$port" "$@" 2>&1 | tr -d '\r'
}

# sampler_start [--api]: chaos-sample.py in the background (--api: also the members of the
# scenario's rooms, from the server API of replica 1).
sampler_start() {
    local args=("$STATE" "$SDIR/samples.jsonl" --interval "${CHAOS_SAMPLE_INTERVAL:-0.2}")
    [ "${1:-}" = --api ] && args+=(--api-key "$CHAOS_API_KEY" --room-prefix "$ROOM_PREFIX" --api-replica 1)
    python3 "$ROOT/scripts/chaos-sample.py" "${args[@]}" 2>>"$SDIR/sampler.err" &
    SAMPLER_PID=$!
}

sampler_stop() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null
        wait "$SAMPLER_PID" 2>/dev/null
        SAMPLER_PID=""
    fi
}

# bench_start NAME SECONDS [ARGS...]: the load generator through haproxy with --resume, in
# the background, for SECONDS of publishing; returns once every client has joined (or
# fails after 120 s). Its report goes to $SDIR/NAME.json.
# shellcheck disable=SC2153 # CONNECTIONS, ROOMS, RATE: settings of scripts/chaos
bench_start() {
    local name="$1" secs="$2" i
    shift 2
    rm -f "$SDIR/$name.ready"
    "$ROOMCAST_BENCH_BIN" --url "$LB_URL" --connections "${BENCH_CONNECTIONS:-$CONNECTIONS}" \
        --rooms "$ROOMS" --rate "$RATE" --duration "${secs}s" --resume --json --quiet \
        --timeline 100ms --settle 30s --room-prefix "$ROOM_PREFIX" \
        --ready-file "$SDIR/$name.ready" "$@" >"$SDIR/$name.json" 2>"$SDIR/$name.err" &
    BENCH_PID=$!
    for ((i = 0; i < 1200; i++)); do
        [ -s "$SDIR/$name.ready" ] && { mark "${name}_ready"; fact "${name}_seconds" "$secs"; return 0; }
        kill -0 "$BENCH_PID" 2>/dev/null || break
        sleep 0.1
    done
    say "the load generator did not get its clients joined:"
    tail -n 5 "$SDIR/$name.err" >&2
    return 1
}

bench_wait() {
    [ -n "$BENCH_PID" ] || return 0
    wait "$BENCH_PID"
    local rc=$?
    BENCH_PID=""
    mark bench_end
    return $rc
}

# wait_ready SECONDS I...: waits until the given replicas answer /readyz 200.
wait_ready() {
    local secs="$1" t i ok
    shift
    for ((t = 0; t < secs * 10; t++)); do
        ok=1
        for i in "$@"; do
            curl -fsS -o /dev/null --max-time 0.5 "http://127.0.0.1:$(eval echo "\$REPLICA_${i}_ADMIN")/readyz" 2>/dev/null || { ok=0; break; }
        done
        [ "$ok" = 1 ] && return 0
        sleep 0.1
    done
    return 1
}

# metric I NAME: the sum of a metric's samples on replica I's /metrics.
metric() {
    curl -fsS --max-time 2 "http://127.0.0.1:$(eval echo "\$REPLICA_${1}_ADMIN")/metrics" 2>/dev/null \
        | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { printf "%d\n", s }'
}

# probe MODE ROOM: chaos-clients.py probe-join / probe-resume through haproxy.
probe() {
    python3 "$ROOT/scripts/chaos-clients.py" "probe-$1" 127.0.0.1 "$LB_PORT" "$2" "$SDIR/probe.cursor" \
        --timeout "${3:-30}" 2>>"$SDIR/probe.err"
}

# count_in_logs TEXT: how many times the replicas' logs hold TEXT, per replica (space
# separated, in replica order).
count_in_logs() {
    local i n out=""
    for ((i = 1; i <= N; i++)); do
        n="$(grep -c -- "$1" "$STATE/logs/replica-$i.log" 2>/dev/null)"
        out+="${n:-0} "
    done
    echo "$out"
}

# check_crashes: facts crashes / crashed: a replica the scenario did not kill or stop that
# exited or changed pid, or any replica log with a panic.
check_crashes() {
    local i pid crashed=()
    for ((i = 1; i <= N; i++)); do
        case "$EXPECTED_DEAD" in *" $i "*) continue ;; esac
        pid="$(replica_pid "$i")"
        if [ -z "$pid" ] || [ "$pid" != "${INITIAL_PIDS[$i]:-}" ] || ! running "replica-$i"; then
            crashed+=("local-$i exited")
        fi
    done
    for ((i = 1; i <= N; i++)); do
        grep -q 'panicked' "$STATE/logs/replica-$i.log" 2>/dev/null && crashed+=("local-$i panicked")
    done
    fact crashes "${#crashed[@]}"
    fact crashed "$(json_str "${crashed[*]:-}")"
}

# client_start MODE SECONDS ROOMS [ARGS...]: a slow consumer or flood sender in the
# background; its counts go to $SDIR/MODE-N.json.
client_start() {
    local mode="$1" secs="$2" rooms="$3"
    shift 3
    python3 "$ROOT/scripts/chaos-clients.py" "$mode" 127.0.0.1 "$LB_PORT" --rooms "$rooms" \
        --seconds "$secs" "$@" >"$SDIR/$mode-${#CLIENT_PIDS[@]}.json" 2>>"$SDIR/clients.err" &
    CLIENT_PIDS+=($!)
}

clients_wait() {
    local p
    for p in "${CLIENT_PIDS[@]}"; do
        wait "$p" 2>/dev/null
    done
    CLIENT_PIDS=()
}

# bench_rooms: the scenario's rooms (names starting with $ROOM_PREFIX), comma separated,
# from the server API, once all $ROOMS exist.
bench_rooms() {
    local t rooms
    for ((t = 0; t < 100; t++)); do
        rooms="$(curl -fsS --max-time 2 -H "Authorization: Bearer $CHAOS_API_KEY" \
            "http://127.0.0.1:$REPLICA_1_PORT/api/v1/rooms" 2>/dev/null | python3 -c '
import json, sys
p = sys.argv[1]
print(",".join(sorted(r["room"] for r in json.load(sys.stdin)["rooms"] if r["room"].startswith(p))))' "$ROOM_PREFIX" 2>/dev/null)"
        if [ -n "$rooms" ] && [ "$(tr ',' '\n' <<<"$rooms" | wc -l)" -ge "$ROOMS" ]; then
            echo "$rooms"
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# roster_members: members of the scenario's rooms, from the server API of replica 1.
roster_members() {
    curl -fsS --max-time 2 -H "Authorization: Bearer $CHAOS_API_KEY" \
        "http://127.0.0.1:$REPLICA_1_PORT/api/v1/rooms" 2>/dev/null | python3 -c '
import json, sys
p = sys.argv[1]
print(sum(r["members"] for r in json.load(sys.stdin)["rooms"] if r["room"].startswith(p)))' "$ROOM_PREFIX" 2>/dev/null
}

# roster_wait EXPECTED SECONDS: waits until the roster holds EXPECTED members; prints the
# seconds it took (nothing when it never did).
roster_wait() {
    local t0 n
    t0=$(now_ms)
    while [ $(($(now_ms) - t0)) -lt $(($2 * 1000)) ]; do
        n="$(roster_members)"
        if [ "$n" = "$1" ]; then
            python3 -c "print(round(($(now_ms) - $t0) / 1000, 1))"
            return 0
        fi
        sleep 0.5
    done
    return 1
}

# report SCENARIO: prints the result and adds it to $OUT/results.json; false when broken.
report() {
    python3 "$ROOT/scripts/chaos-report.py" "$1" "$SDIR" "$OUT/results.json"
}

# topo_down: stops the sampler, the deployment and then the proxy (logs stay in $SDIR).
topo_down() {
    sampler_stop
    "$ROOT/deploy/local/down.sh" --keep >"$SDIR/down.log" 2>&1
    if [ -n "$PROXY_PID" ]; then
        kill "$PROXY_PID" 2>/dev/null
        wait "$PROXY_PID" 2>/dev/null
        PROXY_PID=""
    fi
}

# lb_wait_up I SECONDS: waits until haproxy sends traffic to replica I again (its health
# check passed twice: status UP on the stats page).
lb_wait_up() {
    local t
    for ((t = 0; t < $2 * 5; t++)); do
        curl -fsS --max-time 1 "http://127.0.0.1:$HAPROXY_STATS_PORT/;csv" 2>/dev/null \
            | awk -F, -v s="local-$1" '$1 == "roomcast" && $2 == s && $18 ~ /^UP/ { up = 1 } END { exit !up }' \
            && return 0
        sleep 0.2
    done
    return 1
}

# chaos_cleanup: everything this run started, also on failure or interrupt.
chaos_cleanup() {
    local p st
    for p in "$BENCH_PID" "$SAMPLER_PID" "$PROXY_PID" "${CLIENT_PIDS[@]}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null
    done
    for p in "$BENCH_PID" "$SAMPLER_PID" "$PROXY_PID" "${CLIENT_PIDS[@]}"; do
        [ -n "$p" ] && wait "$p" 2>/dev/null
    done
    for st in "${STATES[@]}"; do
        ROOMCAST_LOCAL_STATE="$st" "$ROOT/deploy/local/down.sh" --keep >/dev/null 2>&1
    done
}
