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

# start_gateway NAME [REDIS_URL]: sets GW_PID and GW_URL. Extra settings come from the
# caller's environment (ROOMCAST_*).
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
    if [[ -n $redis ]]; then export ROOMCAST_REDIS__URL="$redis"; fi
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

# Raises the open-file limit for this shell and its children (idle scenario: 20,000
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
