# shellcheck shell=bash
# Shared helpers of deploy/local/{up,down,replica}.sh: the Kubernetes topology (Redis, N
# gateway replicas, a load balancer, Prometheus) as plain processes on loopback ports.
# Everything lives under one state directory:
#   $STATE/env               ports and settings (sourced by the scripts)
#   $STATE/pids/NAME.pid     one per process started
#   $STATE/logs/NAME.log     their output
#   $STATE/haproxy.cfg, $STATE/prometheus.yml, $STATE/prometheus/
#   $STATE/redis/            the Redis server (standalone), or with up.sh --cluster
#   $STATE/redis-1..6/       the six nodes of a Redis Cluster (pids redis-1..redis-6)

LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034 # used by up.sh
REPO_ROOT="$(cd "$LOCAL_DIR/../.." && pwd)"
STATE="${ROOMCAST_LOCAL_STATE:-/tmp/roomcast-local}"

log() { printf '[local] %s\n' "$*" >&2; }
die() { printf '[local] error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages a command needs when it is missing (fresh machine, as root).
need() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "$cmd is missing (Debian package $pkg)"
    log "installing $pkg (for $cmd)"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get install -y --no-install-recommends "$pkg" >/dev/null 2>&1 || {
        $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "$pkg" >/dev/null
    } || die "could not install $pkg"
    # The Debian packages start their own service on the default port where an init system
    # runs; we never use those, every process here gets its own free loopback port.
}

# Prints N free TCP ports on 127.0.0.1 (held open together while choosing, so distinct).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

pidfile() { echo "$STATE/pids/$1.pid"; }

# True while the process recorded for NAME runs and still is the program we started.
running() {
    local f pid
    f="$(pidfile "$1")"
    [ -f "$f" ] || return 1
    pid="$(cat "$f")"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(cat "$f.cmd" 2>/dev/null || echo /)"
}

# start NAME MATCH CMD...: runs CMD in the background in its own session, output to
# logs/NAME.log; MATCH is a word of its command line used to recognise it later.
start_bg() {
    local name="$1" match="$2"
    shift 2
    mkdir -p "$STATE/pids" "$STATE/logs"
    setsid "$@" >>"$STATE/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$(pidfile "$name")"
    echo "$match" >"$(pidfile "$name").cmd"
}

# stop NAME [SIGNAL] [WAIT_SECONDS]: signals the recorded process and waits for it to exit,
# then SIGKILLs it (as Kubernetes does after terminationGracePeriodSeconds).
stop_bg() {
    local name="$1" sig="${2:-TERM}" wait_s="${3:-10}" pid i
    running "$name" || { rm -f "$(pidfile "$name")" "$(pidfile "$name").cmd"; return 0; }
    pid="$(cat "$(pidfile "$name")")"
    kill "-$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        [ -d "/proc/$pid" ] || break
        # A zombie has exited; its parent (the shell that started it) is gone or will reap.
        grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null && break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then
        log "$name (pid $pid) still running after ${wait_s}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$(pidfile "$name")" "$(pidfile "$name").cmd"
}

# wait_http URL SECONDS: waits until URL answers 2xx.
wait_http() {
    local url="$1" secs="${2:-30}" i
    for ((i = 0; i < secs * 5; i++)); do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

load_env() {
    [ -f "$STATE/env" ] || die "no local deployment in $STATE (run deploy/local/up.sh first)"
    # shellcheck disable=SC1091
    . "$STATE/env"
}

# Seconds to wait for a replica to drain after SIGTERM: like terminationGracePeriodSeconds,
# propagation delay + drain timeout + 5 s.
drain_wait_seconds() {
    python3 - "$DRAIN_PROPAGATION_DELAY" "$DRAIN_TIMEOUT" <<'EOF'
import math, re, sys
def ms(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", s.strip())
    return 0 if s.strip() == "0" or not m else int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}[m.group(2)]
print(math.ceil((ms(sys.argv[1]) + ms(sys.argv[2])) / 1000) + 5)
EOF
}

# start_replica I: starts gateway replica I on its recorded ports and waits until ready.
start_replica() {
    local i="$1" cport aport
    cport="$(eval echo "\$REPLICA_${i}_PORT")"
    aport="$(eval echo "\$REPLICA_${i}_ADMIN")"
    [ -n "$cport" ] || die "no replica $i in $STATE/env"
    running "replica-$i" && die "replica $i is already running"
    # Variables of these scripts share the gateway's ROOMCAST_ prefix; the gateway would read
    # them as configuration keys (ROOMCAST_BIN -> "bin") and refuse to start: drop them.
    local unset_args=()
    while IFS= read -r var; do
        unset_args+=(-u "$var")
    done < <(env | sed -n 's/^\(ROOMCAST_BIN\|ROOMCAST_LOCAL_[A-Z0-9_]*\)=.*/\1/p')
    # The bus: one Redis server (redis.url), or a Redis Cluster (redis.mode = cluster with a
    # seed list in redis.nodes; the gateway refuses redis.url in cluster mode, so an inherited
    # ROOMCAST_REDIS__URL is dropped too).
    local redis_args=()
    if [ "${REDIS_MODE:-standalone}" = cluster ]; then
        unset_args+=(-u ROOMCAST_REDIS__URL)
        redis_args=(ROOMCAST_REDIS__MODE=cluster ROOMCAST_REDIS__NODES="$REDIS_NODES")
    else
        redis_args=(ROOMCAST_REDIS__URL="redis://127.0.0.1:$REDIS_PORT")
    fi
    # Same settings as the Helm chart passes, through the environment instead of a file.
    start_bg "replica-$i" "$ROOMCAST_BIN" env "${unset_args[@]}" \
        ROOMCAST_SERVER__LISTEN="127.0.0.1:$cport" \
        ROOMCAST_ADMIN__LISTEN="127.0.0.1:$aport" \
        ROOMCAST_NODE__ID="local-$i" \
        "${redis_args[@]}" \
        ROOMCAST_REDIS__PASSWORD="$REDIS_PASSWORD" \
        ROOMCAST_REDIS__PREFIX="${REDIS_PREFIX:-roomcast-local}" \
        ROOMCAST_LOG__FORMAT="${ROOMCAST_LOG__FORMAT:-json}" \
        ROOMCAST_DRAIN__PROPAGATION_DELAY="$DRAIN_PROPAGATION_DELAY" \
        ROOMCAST_DRAIN__SPREAD="$DRAIN_SPREAD" \
        ROOMCAST_DRAIN__TIMEOUT="$DRAIN_TIMEOUT" \
        "$ROOMCAST_BIN" serve
    if ! wait_http "http://127.0.0.1:$aport/readyz" 30; then
        tail -n 20 "$STATE/logs/replica-$i.log" >&2
        die "replica $i did not become ready (log: $STATE/logs/replica-$i.log)"
    fi
}

# stop_replica I: SIGTERM (as Kubernetes sends), wait for the drain, SIGKILL after the grace.
stop_replica() {
    stop_bg "replica-$1" TERM "$(drain_wait_seconds)"
}
