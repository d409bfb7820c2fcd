# shellcheck shell=bash
# shellcheck disable=SC2034  # start_* functions return values in globals (REDIS_URL, GW_URL, ...)
# Helpers for scripts/bench: free loopback ports, starting and stopping redis-server,
# roomcast gateways and Socket.IO peer processes, all tracked by PID so a trap can stop
# exactly what this run started. Sourced, not executed.

BENCH_PIDS=()
BENCH_USED_PORTS=" "

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
  log "error: $*"
  BENCH_FAILED+=("error")
  exit 1
}

# Sets FREE_PORT to a loopback TCP port nobody listens on (below the ephemeral range, so
# the load generator's own sockets never take it).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    [[ $BENCH_USED_PORTS == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      BENCH_USED_PORTS+="$p "
      FREE_PORT=$p
      return 0
    fi
  done
}

# wait_until SECONDS CMD...: retries CMD every 0.2 s.
wait_until() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1"; }

# start_redis NAME: sets REDIS_URL and REDIS_PID.
start_redis() {
  free_port
  local port=$FREE_PORT
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --maxclients 10000 >"$BENCH_WORK/$1.log" 2>&1 &
  REDIS_PID=$!
  BENCH_PIDS+=("$REDIS_PID")
  REDIS_URL="redis://127.0.0.1:$port"
  wait_until 20 redis-cli -p "$port" ping || die "redis-server did not start (see $BENCH_WORK/$1.log)"
}

# start_redis_cluster NAME SHARDS: a Redis Cluster of SHARDS masters (no replicas) on free
# loopback ports, the 16384 slots split evenly (CLUSTER ADDSLOTSRANGE), joined with CLUSTER
# MEET; returns once every node reports cluster_state:ok with every node known. Sets
# CLUSTER_NODES (host:port,host:port,... for redis.nodes), CLUSTER_PORTS, CLUSTER_PIDS and
# CLUSTER_RANGES (first-last slot per shard), in shard order.
start_redis_cluster() {
  local name=$1 n=$2 i port bus dir="$BENCH_WORK/$1"
  mkdir -p "$dir"
  CLUSTER_PORTS=() CLUSTER_PIDS=() CLUSTER_RANGES=() CLUSTER_NODES=
  local buses=()
  for ((i = 0; i < n; i++)); do
    free_port
    port=$FREE_PORT
    # The cluster bus port, chosen explicitly (the default, port + 10000, may be taken).
    free_port
    bus=$FREE_PORT
    # --cluster-announce-ip: a node learns its own address only from a peer's MEET, so a
    # one-node cluster would list its slots' owner with an empty host in CLUSTER SLOTS,
    # which the gateway's client cannot connect to.
    redis-server --port "$port" --cluster-enabled yes --cluster-port "$bus" \
      --cluster-announce-ip 127.0.0.1 \
      --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000 \
      --save "" --appendonly no --bind 127.0.0.1 --daemonize no --dir "$dir" \
      --maxclients 10000 >"$dir/redis-$port.log" 2>&1 &
    CLUSTER_PIDS+=("$!")
    BENCH_PIDS+=("$!")
    CLUSTER_PORTS+=("$port")
    buses+=("$bus")
    CLUSTER_NODES+="${CLUSTER_NODES:+,}127.0.0.1:$port"
  done
  for ((i = 0; i < n; i++)); do
    port=${CLUSTER_PORTS[i]}
    wait_until 20 redis-cli -p "$port" ping || die "redis-server :$port did not start (see $dir/redis-$port.log)"
    local first=$((i * 16384 / n)) last=$(((i + 1) * 16384 / n - 1))
    CLUSTER_RANGES+=("$first-$last")
    # Distinct config epochs up front: no epoch collision to resolve after the MEET.
    redis-cli -p "$port" CLUSTER SET-CONFIG-EPOCH $((i + 1)) >/dev/null
    [[ $(redis-cli -p "$port" CLUSTER ADDSLOTSRANGE "$first" "$last") == OK ]] \
      || die "CLUSTER ADDSLOTSRANGE $first $last on :$port failed"
  done
  for ((i = 1; i < n; i++)); do
    [[ $(redis-cli -p "${CLUSTER_PORTS[0]}" CLUSTER MEET 127.0.0.1 "${CLUSTER_PORTS[i]}" "${buses[i]}") == OK ]] \
      || die "CLUSTER MEET 127.0.0.1 ${CLUSTER_PORTS[i]} failed"
  done
  wait_until 30 cluster_ok "$n" "${CLUSTER_PORTS[@]}" \
    || die "cluster $name ($n shards) did not reach cluster_state:ok (logs in $dir)"
}

# cluster_ok N PORT...: every node reports cluster_state:ok, N known nodes, all slots
# assigned.
cluster_ok() {
  local n=$1 port info
  shift
  for port in "$@"; do
    info=$(redis-cli -p "$port" CLUSTER INFO | tr -d '\r') || return 1
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx "cluster_known_nodes:$n" <<<"$info" || return 1
    grep -qx 'cluster_slots_assigned:16384' <<<"$info" || return 1
  done
}

# start_gateway NAME [REDIS]: sets GW_PID and GW_URL. REDIS is a redis:// URL, or
# `cluster:HOST:PORT,HOST:PORT,...` for a Redis Cluster (redis.mode = "cluster" with those
# seed nodes). Extra settings come from the caller's environment (ROOMCAST_*).
start_gateway() {
  local name=$1 redis=${2:-} bin=$ROOMCAST_BIN
  free_port
  local port=$FREE_PORT
  free_port
  local admin=$FREE_PORT
  (
    # The gateway reads every ROOMCAST_* variable as configuration and refuses unknown
    # keys: the script's own variables must not reach it.
    unset ROOMCAST_BIN ROOMCAST_BENCH_BIN
    export ROOMCAST_SERVER__LISTEN="127.0.0.1:$port"
    export ROOMCAST_ADMIN__LISTEN="127.0.0.1:$admin"
    export ROOMCAST_NODE__ID="$name"
    export ROOMCAST_LOG__LEVEL="${ROOMCAST_LOG__LEVEL:-warn}"
    export ROOMCAST_DRAIN__SPREAD="${ROOMCAST_DRAIN__SPREAD:-1s}"
    export ROOMCAST_DRAIN__TIMEOUT="${ROOMCAST_DRAIN__TIMEOUT:-5s}"
    # Every load-generator connection comes from 127.0.0.1: per-address limits out of the way.
    export ROOMCAST_LIMITS__CONNECTIONS_PER_IP="${ROOMCAST_LIMITS__CONNECTIONS_PER_IP:-1000000}"
    export ROOMCAST_LIMITS__CONNECTS_PER_SECOND_PER_IP="${ROOMCAST_LIMITS__CONNECTS_PER_SECOND_PER_IP:-1000000}"
    if [[ $redis == cluster:* ]]; then
      export ROOMCAST_REDIS__MODE=cluster ROOMCAST_REDIS__NODES="${redis#cluster:}"
    elif [[ -n $redis ]]; then
      export ROOMCAST_REDIS__URL="$redis"
    fi
    exec "$bin" serve
  ) >"$BENCH_WORK/$name.log" 2>&1 &
  GW_PID=$!
  BENCH_PIDS+=("$GW_PID")
  GW_URL="ws://127.0.0.1:$port/ws"
  wait_until 30 http_ok "http://127.0.0.1:$admin/readyz" \
    || die "gateway $name did not become ready (see $BENCH_WORK/$name.log)"
}

# start_sio NAME REDIS_URL: one Socket.IO peer process; sets SIO_PID and SIO_URL.
start_sio() {
  free_port
  local port=$FREE_PORT
  (
    cd "$BENCH_ROOT/benches/peers/socketio" || exit 1
    PORT=$port HOST=127.0.0.1 REDIS_URL=$2 exec node server.js
  ) >"$BENCH_WORK/$1.log" 2>&1 &
  SIO_PID=$!
  BENCH_PIDS+=("$SIO_PID")
  SIO_URL="ws://127.0.0.1:$port"
  wait_until 30 http_ok "http://127.0.0.1:$port/healthz" \
    || die "Socket.IO peer $1 did not start (see $BENCH_WORK/$1.log)"
}

# Installs the peer's npm packages once (node_modules is not committed).
install_sio_peer() {
  local dir="$BENCH_ROOT/benches/peers/socketio"
  command -v node >/dev/null || die "node is not installed (apt-get install -y nodejs npm)"
  if [[ ! -d $dir/node_modules/socket.io ]]; then
    log "installing the Socket.IO peer (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci failed"
  fi
}

# Stops every process this run started: SIGTERM, then SIGKILL after 10 s.
stop_all() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + 10))
  for pid in "${BENCH_PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  BENCH_PIDS=()
}

# Raises the open-file limit for this shell and its children (idle and full scenarios: 20,000
# connections need 20,000 descriptors in the gateway and as many in the load generator).
raise_fd_limit() {
  local want=$1
  if (($(ulimit -Hn) < want)); then ulimit -Hn "$want" 2>/dev/null || true; fi
  ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  if (($(ulimit -n) < want)); then
    log "warning: open files limit is $(ulimit -n) (< $want); run as root or raise it"
  fi
}

# run_bench NAME ARGS...: runs the load generator ($BENCH_BIN, roomcast-bench) with --json
# --fail-on-loss into $BENCH_RESULTS/NAME.json; records a failure instead of exiting.
run_bench() {
  local name=$1
  shift
  local out="$BENCH_RESULTS/$name.json"
  log "$name: roomcast-bench $*"
  if env -u ROOMCAST_BIN -u ROOMCAST_BENCH_BIN "$BENCH_BIN" --json --fail-on-loss "$@" >"$out" 2>"$BENCH_WORK/$name.bench.log"; then
    return 0
  fi
  log "$name: FAILED: $(tail -n 3 "$BENCH_WORK/$name.bench.log" | tr '\n' ' ')"
  BENCH_FAILED+=("$name")
  return 1
}

# process_alive PID NAME: records a failure when a server died during the run.
process_alive() {
  if ! kill -0 "$1" 2>/dev/null; then
    log "$2 (pid $1) is no longer running: crashed?"
    BENCH_FAILED+=("$2 crashed")
  fi
}

# VmRSS of a process, KiB.
proc_rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# utime + stime of a process, clock ticks (fields 14 and 15 of /proc/PID/stat, counted
# after the command name, which may contain spaces).
proc_cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# Established TCP connections to a local port (the gateway's side of each client socket).
established_count() { ss -Htn state established "( sport = :$1 )" | wc -l; }

# wait_cpu_quiet PID SECONDS: waits until the process used less than 10% of a core over one
# second (e.g. the presence of a burst of joins delivered); fails after SECONDS.
wait_cpu_quiet() {
  local pid=$1 deadline=$((SECONDS + $2)) a b hz
  hz=$(getconf CLK_TCK)
  a=$(proc_cpu_ticks "$pid") || return 1
  while ((SECONDS < deadline)); do
    sleep 1
    b=$(proc_cpu_ticks "$pid") || return 1
    (((b - a) * 10 <= hz)) && return 0
    a=$b
  done
  return 1
}

# A TcpExt counter of /proc/net/netstat (e.g. ListenOverflows: connections dropped because
# a listener's accept queue was full), for this network namespace.
tcp_ext_counter() {
  awk -v k="$1" '$1 == "TcpExt:" { if (!n) { for (i = 2; i <= NF; i++) idx[$i] = i; n = 1 } else print $idx[k] }' /proc/net/netstat
}

# A line of /proc/meminfo, KiB (e.g. Slab: kernel objects such as sockets).
meminfo_kib() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
