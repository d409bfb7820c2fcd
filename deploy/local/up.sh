#!/usr/bin/env bash
# Starts the Kubernetes topology with no containers, all on loopback ports:
#   redis-server (password protected, nothing on disk); with --cluster a Redis Cluster of
#     3 masters + 3 replicas instead (six redis-server processes, same password), which the
#     gateways reach with redis.mode = cluster and the six nodes as seeds
#   N replicas of the real gateway binary, each with its own client and admin port
#   haproxy as the load balancer (WebSocket friendly, health check on /readyz)
#   prometheus scraping every replica's admin port every second (labels pod, namespace)
# Everything runs in the background under a state directory; deploy/local/down.sh stops it.
#
# Usage:  deploy/local/up.sh [--cluster] [N]   (N replicas, default 3; --cluster: Redis Cluster,
#                                             needs Redis >= 7 for sharded pub/sub)
# Env:    ROOMCAST_BIN          gateway binary (default target/release/roomcast)
#         ROOMCAST_LOCAL_STATE  state directory (default /tmp/roomcast-local)
#         ROOMCAST_LOCAL_PROPAGATION_DELAY / _SPREAD / _TIMEOUT   drain settings (1s/2s/10s)
#         ROOMCAST_LOCAL_CONNECTIONS_PER_IP / _CONNECTS_PER_SECOND_PER_IP   per-address limits
#                               of the replicas (1000000 each: all traffic comes from haproxy)
#         ROOMCAST_LOCAL_NO_PROMETHEUS=1  skip Prometheus
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage="usage: $0 [--cluster] [N]   (N = number of replicas, at least 1, default 3)"
CLUSTER=0
N=""
for arg in "$@"; do
    case "$arg" in
        --cluster) CLUSTER=1 ;;
        -h | --help) printf '%s\n' "$usage"; exit 0 ;;
        *) [ -z "$N" ] || die "$usage"; N="$arg" ;;
    esac
done
N="${N:-3}"
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "$usage"
# A Redis Cluster of 3 masters, each with 1 replica.
CLUSTER_NODES=6
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
need redis-cli redis-tools
if [ "$CLUSTER" = 1 ]; then
    # The gateway's cluster bus uses sharded pub/sub (SSUBSCRIBE, Redis 7.0), and the nodes
    # get their bus port from cluster-port (7.0) since port + 10000 may not be free.
    redis_major="$(redis-server --version | sed -n 's/.* v=\([0-9]*\)\..*/\1/p')"
    [ "${redis_major:-0}" -ge 7 ] || die "--cluster needs Redis >= 7 ($(redis-server --version))"
fi
need haproxy haproxy
[ "${ROOMCAST_LOCAL_NO_PROMETHEUS:-0}" = 1 ] || need prometheus prometheus

rm -rf "$STATE"
mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/prometheus"

# Ports: redis, lb, haproxy stats, prometheus, then client+admin per replica; with --cluster
# then the client ports of cluster nodes 2..6 (node 1 has the redis port) and the six nodes'
# cluster bus ports.
extra=0
[ "$CLUSTER" = 1 ] && extra=$((2 * CLUSTER_NODES - 1))
read -r -a P <<<"$(free_ports $((4 + 2 * N + extra)))"
RP=("${P[0]}") # client port of each Redis node
BP=()          # cluster bus port of each node (--cluster)
ADDRS=()       # 127.0.0.1:port of each node
if [ "$CLUSTER" = 1 ]; then
    base=$((4 + 2 * N))
    for ((k = 1; k < CLUSTER_NODES; k++)); do
        RP+=("${P[$((base + k - 1))]}")
    done
    for ((k = 0; k < CLUSTER_NODES; k++)); do
        BP+=("${P[$((base + CLUSTER_NODES - 1 + k))]}")
        ADDRS+=("127.0.0.1:${RP[$k]}")
    done
fi
REDIS_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
{
    echo "# written by deploy/local/up.sh"
    echo "N=$N"
    echo "ROOMCAST_BIN=$(printf '%q' "$ROOMCAST_BIN")"
    if [ "$CLUSTER" = 1 ]; then
        # A Redis Cluster: nodes redis-1..redis-6 on REDIS_PORTS (REDIS_PORT is node 1's).
        echo "REDIS_MODE=cluster"
        echo "REDIS_PORTS=\"${RP[*]}\""
        echo "REDIS_BUS_PORTS=\"${BP[*]}\""
        echo "REDIS_NODES=$(IFS=,; echo "${ADDRS[*]}")"
    else
        echo "REDIS_MODE=standalone"
    fi
    echo "REDIS_PORT=${P[0]}"
    echo "REDIS_PASSWORD=$REDIS_PASSWORD"
    echo "REDIS_PREFIX=roomcast-local"
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
# rcli PORT ARGS...: redis-cli on a local node, the password from the environment.
rcli() {
    local port="$1"
    shift
    REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$port" "$@"
}
# wait_pong NAME PORT: waits until the server answers PING.
wait_pong() {
    local i
    for ((i = 0; i < 50; i++)); do
        rcli "$2" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    die "$1 did not start (log: $STATE/logs/$1.log)"
}
if [ "$CLUSTER" = 0 ]; then
    mkdir -p "$STATE/redis"
    printf 'requirepass %s\n' "$REDIS_PASSWORD" >"$STATE/redis/redis.conf"
    chmod 600 "$STATE/redis/redis.conf"
    start_bg redis redis-server redis-server "$STATE/redis/redis.conf" --port "$REDIS_PORT" --bind 127.0.0.1 \
        --save "" --appendonly no --dir "$STATE/redis"
    wait_pong redis "$REDIS_PORT"
    log "redis on 127.0.0.1:$REDIS_PORT"
else
    for ((k = 1; k <= CLUSTER_NODES; k++)); do
        dir="$STATE/redis-$k"
        mkdir -p "$dir"
        # masterauth: a node that becomes a replica authenticates to its master.
        printf 'requirepass %s\nmasterauth %s\n' "$REDIS_PASSWORD" "$REDIS_PASSWORD" >"$dir/redis.conf"
        chmod 600 "$dir/redis.conf"
        start_bg "redis-$k" redis-server redis-server "$dir/redis.conf" \
            --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 \
            --cluster-port "${BP[$((k - 1))]}" --port "${RP[$((k - 1))]}" --bind 127.0.0.1 \
            --save "" --appendonly no --dir "$dir"
    done
    for ((k = 1; k <= CLUSTER_NODES; k++)); do
        wait_pong "redis-$k" "${RP[$((k - 1))]}"
    done
    # redis-cli warns that masters and their replicas share a host: they do, on purpose.
    REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli --cluster create \
        "${ADDRS[@]}" --cluster-replicas 1 --cluster-yes \
        >"$STATE/logs/redis-cluster-create.log" 2>&1 \
        || { tail -n 20 "$STATE/logs/redis-cluster-create.log" >&2; die "redis-cli --cluster create failed (log: $STATE/logs/redis-cluster-create.log)"; }
    # Every node must see the whole cluster with all slots served before a gateway connects.
    for ((i = 0; i < 300; i++)); do
        ok=0
        for port in "${RP[@]}"; do
            info="$(rcli "$port" cluster info 2>/dev/null | tr -d '\r')"
            grep -qx 'cluster_state:ok' <<<"$info" && grep -qx "cluster_known_nodes:$CLUSTER_NODES" <<<"$info" \
                && ok=$((ok + 1))
        done
        [ "$ok" = "$CLUSTER_NODES" ] && break
        sleep 0.1
    done
    [ "$ok" = "$CLUSTER_NODES" ] || die "the Redis Cluster did not reach cluster_state:ok on all $CLUSTER_NODES nodes in 30s (logs: $STATE/logs/redis-*.log)"
    log "redis cluster (3 masters + 3 replicas) on 127.0.0.1:{${REDIS_PORTS// /,}}, bus ports {${REDIS_BUS_PORTS// /,}}"
fi

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
servers=""
for ((i = 1; i <= N; i++)); do
    servers+="    server local-$i 127.0.0.1:$(eval echo "\$REPLICA_${i}_PORT") check port $(eval echo "\$REPLICA_${i}_ADMIN")"$'\n'
done
cfg="$(<"$LOCAL_DIR/haproxy.cfg.in")"
cfg="${cfg//@MAXCONN@/$MAXCONN}"
cfg="${cfg//@LB_PORT@/$LB_PORT}"
cfg="${cfg//@CHECK_INTERVAL@/1s}"
cfg="${cfg//@SERVERS@/${servers%$'\n'}}"
{
    printf '%s\n' "$cfg"
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

roomcast local deployment ($N replicas$([ "$CLUSTER" = 1 ] && echo ", Redis Cluster")) is up. State: $STATE

  chat page        http://127.0.0.1:$LB_PORT/          (through haproxy)
  WebSocket        ws://127.0.0.1:$LB_PORT/ws
  haproxy stats    http://127.0.0.1:$HAPROXY_STATS_PORT/
TXT
if [ "$CLUSTER" = 1 ]; then
    echo "  redis cluster    $REDIS_NODES   (3 masters + 3 replicas; bus ports ${REDIS_BUS_PORTS// /,})"
    echo "                   (. $STATE/env; REDISCLI_AUTH=\$REDIS_PASSWORD redis-cli -c -p $REDIS_PORT cluster nodes)"
fi
[ "${ROOMCAST_LOCAL_NO_PROMETHEUS:-0}" = 1 ] || echo "  prometheus       http://127.0.0.1:$PROM_PORT/"
for ((i = 1; i <= N; i++)); do
    echo "  replica local-$i  http://127.0.0.1:$(eval echo "\$REPLICA_${i}_PORT")/   metrics http://127.0.0.1:$(eval echo "\$REPLICA_${i}_ADMIN")/metrics"
done
cat <<TXT

  load:            ${ROOMCAST_BIN%/*}/roomcast-bench --url ws://127.0.0.1:$LB_PORT/ws --connections 200 --rooms 10 --rate 100 --duration 30s
  drain one:       deploy/local/replica.sh restart 2
  stop everything: deploy/local/down.sh
TXT
