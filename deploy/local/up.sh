#!/usr/bin/env bash
# Starts the Kubernetes topology with no containers, all on loopback ports:
#   redis-server (password protected, nothing on disk)
#   N replicas of the real gateway binary, each with its own client and admin port
#   haproxy as the load balancer (WebSocket friendly, health check on /readyz)
#   prometheus scraping every replica's admin port every second (labels pod, namespace)
# Everything runs in the background under a state directory; deploy/local/down.sh stops it.
#
# Usage:  deploy/local/up.sh [N]          (N replicas, default 3)
# Env:    ROOMCAST_BIN          gateway binary (default target/release/roomcast)
#         ROOMCAST_LOCAL_STATE  state directory (default /tmp/roomcast-local)
#         ROOMCAST_LOCAL_PROPAGATION_DELAY / _SPREAD / _TIMEOUT   drain settings (1s/2s/10s)
#         ROOMCAST_LOCAL_CONNECTIONS_PER_IP / _CONNECTS_PER_SECOND_PER_IP   per-address limits
#                               of the replicas (1000000 each: all traffic comes from haproxy)
#         ROOMCAST_LOCAL_NO_PROMETHEUS=1  skip Prometheus
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${1:-3}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "usage: $0 [N]   (N = number of replicas, at least 1)"
ROOMCAST_BIN="${ROOMCAST_BIN:-$REPO_ROOT/target/release/roomcast}"
case "$ROOMCAST_BIN" in /*) ;; *) ROOMCAST_BIN="$PWD/$ROOMCAST_BIN" ;; esac
[ -x "$ROOMCAST_BIN" ] || die "no gateway binary at $ROOMCAST_BIN (cargo build --release, or set ROOMCAST_BIN)"

if [ -f "$STATE/env" ]; then
    for f in "$STATE"/pids/*.pid; do
        [ -e "$f" ] || continue
        running "$(basename "$f" .pid)" && die "a local deployment is already running in $STATE (deploy/local/down.sh first)"
    done
fi

need python3 python3
need curl curl
need redis-server redis-server
need haproxy haproxy
[ "${ROOMCAST_LOCAL_NO_PROMETHEUS:-0}" = 1 ] || need prometheus prometheus

rm -rf "$STATE"
mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/redis" "$STATE/prometheus"

# Ports: redis, lb, haproxy stats, prometheus, then client+admin per replica.
read -r -a P <<<"$(free_ports $((4 + 2 * N)))"
REDIS_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
{
    echo "# written by deploy/local/up.sh"
    echo "N=$N"
    echo "ROOMCAST_BIN=$(printf '%q' "$ROOMCAST_BIN")"
    echo "REDIS_PORT=${P[0]}"
    echo "REDIS_PASSWORD=$REDIS_PASSWORD"
    echo "LB_PORT=${P[1]}"
    echo "HAPROXY_STATS_PORT=${P[2]}"
    echo "PROM_PORT=${P[3]}"
    echo "DRAIN_PROPAGATION_DELAY=${ROOMCAST_LOCAL_PROPAGATION_DELAY:-1s}"
    echo "DRAIN_SPREAD=${ROOMCAST_LOCAL_SPREAD:-2s}"
    echo "DRAIN_TIMEOUT=${ROOMCAST_LOCAL_TIMEOUT:-10s}"
    # Every client reaches the replicas through haproxy on 127.0.0.1: per-address limits
    # high enough for load tests (exported: the replicas inherit them).
    echo "export ROOMCAST_LIMITS__CONNECTIONS_PER_IP=${ROOMCAST_LOCAL_CONNECTIONS_PER_IP:-1000000}"
    echo "export ROOMCAST_LIMITS__CONNECTS_PER_SECOND_PER_IP=${ROOMCAST_LOCAL_CONNECTS_PER_SECOND_PER_IP:-1000000}"
    for ((i = 1; i <= N; i++)); do
        echo "REPLICA_${i}_PORT=${P[$((2 + 2 * i))]}"
        echo "REPLICA_${i}_ADMIN=${P[$((3 + 2 * i))]}"
    done
} >"$STATE/env"
load_env

# If anything below fails, stop what was started.
# shellcheck disable=SC2154 # rc is assigned inside the trap
trap 'rc=$?; if [ $rc -ne 0 ]; then log "start failed, stopping (logs kept in $STATE/logs)"; "$LOCAL_DIR/down.sh" --keep >/dev/null 2>&1 || true; fi' EXIT

# --- Redis ---------------------------------------------------------------------------
printf 'requirepass %s\n' "$REDIS_PASSWORD" >"$STATE/redis/redis.conf"
chmod 600 "$STATE/redis/redis.conf"
start_bg redis redis-server redis-server "$STATE/redis/redis.conf" --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save "" --appendonly no --dir "$STATE/redis"
for ((i = 0; i < 50; i++)); do
    REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG \
    || die "redis did not start (log: $STATE/logs/redis.log)"
log "redis on 127.0.0.1:$REDIS_PORT"

# --- gateway replicas ----------------------------------------------------------------
for ((i = 1; i <= N; i++)); do
    start_replica "$i"
    log "replica local-$i: client 127.0.0.1:$(eval echo "\$REPLICA_${i}_PORT"), admin 127.0.0.1:$(eval echo "\$REPLICA_${i}_ADMIN")"
done

# --- haproxy -------------------------------------------------------------------------
# Each proxied connection holds two descriptors: size maxconn to the open-files limit.
fds="$(ulimit -n)"
[ "$fds" = unlimited ] && fds=200000
MAXCONN=$(((fds - 200) / 2))
[ "$MAXCONN" -gt 100000 ] && MAXCONN=100000
{
    cat <<CFG
# written by deploy/local/up.sh: the local stand-in for a Kubernetes Service/LoadBalancer.
global
    maxconn $MAXCONN

defaults
    mode http
    maxconn $MAXCONN
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    # WebSockets: once upgraded, a connection may stay idle this long.
    timeout tunnel 1h
    timeout client-fin 5s
    option redispatch
    retries 2

frontend chat
    bind 127.0.0.1:$LB_PORT
    default_backend roomcast

backend roomcast
    # Long-lived connections: send new ones to the replica with the fewest.
    balance leastconn
    # Like a readinessProbe: a draining or bus-less replica answers 503 and leaves rotation.
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    default-server inter 1s fall 1 rise 2
CFG
    for ((i = 1; i <= N; i++)); do
        echo "    server local-$i 127.0.0.1:$(eval echo "\$REPLICA_${i}_PORT") check port $(eval echo "\$REPLICA_${i}_ADMIN")"
    done
    cat <<CFG

listen stats
    bind 127.0.0.1:$HAPROXY_STATS_PORT
    stats enable
    stats uri /
    stats refresh 2s
CFG
} >"$STATE/haproxy.cfg"
haproxy -c -q -f "$STATE/haproxy.cfg" || die "bad haproxy config $STATE/haproxy.cfg"
# -db: stay in the foreground (start_bg puts it in the background and records its pid).
rm -f "$STATE/pids/haproxy.pid"
start_bg haproxy haproxy haproxy -db -f "$STATE/haproxy.cfg"
wait_http "http://127.0.0.1:$LB_PORT/readyz" 20 || die "haproxy does not reach a ready replica (log: $STATE/logs/haproxy.log)"
log "haproxy on 127.0.0.1:$LB_PORT (stats http://127.0.0.1:$HAPROXY_STATS_PORT/)"

# --- Prometheus ----------------------------------------------------------------------
if [ "${ROOMCAST_LOCAL_NO_PROMETHEUS:-0}" != 1 ]; then
    {
        cat <<CFG
# written by deploy/local/up.sh. Every series gets pod (= the replica's node id) and
# namespace="local" labels, like the ServiceMonitor in Kubernetes, so the Grafana dashboard's
# \$namespace / \$pod variables work here too.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: roomcast
    metrics_path: /metrics
    static_configs:
CFG
        for ((i = 1; i <= N; i++)); do
            cat <<CFG
      - targets: ["127.0.0.1:$(eval echo "\$REPLICA_${i}_ADMIN")"]
        labels:
          pod: local-$i
          namespace: local
CFG
        done
    } >"$STATE/prometheus.yml"
    start_bg prometheus "$STATE/prometheus.yml" prometheus \
        --config.file="$STATE/prometheus.yml" \
        --storage.tsdb.path="$STATE/prometheus" \
        --storage.tsdb.retention.time=1d \
        --web.listen-address="127.0.0.1:$PROM_PORT" \
        --web.enable-lifecycle
    wait_http "http://127.0.0.1:$PROM_PORT/-/ready" 30 || die "prometheus did not start (log: $STATE/logs/prometheus.log)"
    log "prometheus on 127.0.0.1:$PROM_PORT"
fi

trap - EXIT
cat <<TXT

roomcast local deployment ($N replicas) is up. State: $STATE

  chat page        http://127.0.0.1:$LB_PORT/          (through haproxy)
  WebSocket        ws://127.0.0.1:$LB_PORT/ws
  haproxy stats    http://127.0.0.1:$HAPROXY_STATS_PORT/
TXT
[ "${ROOMCAST_LOCAL_NO_PROMETHEUS:-0}" = 1 ] || echo "  prometheus       http://127.0.0.1:$PROM_PORT/"
for ((i = 1; i <= N; i++)); do
    echo "  replica local-$i  http://127.0.0.1:$(eval echo "\$REPLICA_${i}_PORT")/   metrics http://127.0.0.1:$(eval echo "\$REPLICA_${i}_ADMIN")/metrics"
done
cat <<TXT

  load:            ${ROOMCAST_BIN%/*}/roomcast-bench --url ws://127.0.0.1:$LB_PORT/ws --connections 200 --rooms 10 --rate 100 --duration 30s
  drain one:       deploy/local/replica.sh restart 2
  stop everything: deploy/local/down.sh
TXT
