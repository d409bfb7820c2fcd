#!/usr/bin/env bash
# End-to-end check of the deployment topology without containers (deploy/local):
#   1. starts Redis + 3 gateway replicas + haproxy + Prometheus (deploy/local/up.sh 3)
#   2. sends a few refused frames through haproxy (so error and disconnect series exist),
#      then drives a load through haproxy with the project's own client (roomcast-bench)
#   3. while the load runs, evaluates EVERY PromQL expression of grafana/roomcast.json (and
#      the dashboard's variable queries) against Prometheus' HTTP API; an expression that
#      returns no data fails the check (e.g. a metric the gateway does not export)
#   4. rolling restart under load: bench --resume while each replica in turn gets SIGTERM
#      (as Kubernetes sends), drains, exits and is started again; the bench report must
#      show 0 lost and 0 duplicated messages
#   5. Redis Cluster (deploy/local/up.sh --cluster 3: 3 masters + 3 replicas): the replicas run
#      with redis.mode = cluster and are ready through haproxy; a message sent by a client on
#      one replica reaches a client on another; the room's channel is a sharded one
#      (PUBSUB SHARDCHANNELS on exactly one master, the one owning its slot) and no node has
#      it as a classic PUBSUB channel; down.sh then stops every process it started
# Everything is torn down at the end, also on failure (logs are kept on failure).
#
# Env: ROOMCAST_BIN (default target/release/roomcast)
#      ROOMCAST_BENCH_BIN (the load generator; default target/release/roomcast-bench, built
#      with `cargo build --release -p roomcast-bench` when it is missing)
#      CHECK_LOCAL_CONNECTIONS / CHECK_LOCAL_ROOMS / CHECK_LOCAL_RATE  (60 / 6 / 60)
#      CHECK_LOCAL_CLUSTER  1 (default): all of the above; 0: skip 5; only: just 5
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
export ROOMCAST_BIN="${ROOMCAST_BIN:-$ROOT/target/release/roomcast}"
case "$ROOMCAST_BIN" in /*) ;; *) ROOMCAST_BIN="$ROOT/$ROOMCAST_BIN" ;; esac
# Not exported: the replicas read every ROOMCAST_* variable as configuration and refuse
# unknown keys (deploy/local drops only ROOMCAST_BIN and ROOMCAST_LOCAL_*).
BENCH_BIN_DEFAULT="$ROOT/target/release/roomcast-bench"
ROOMCAST_BENCH_BIN="${ROOMCAST_BENCH_BIN:-$BENCH_BIN_DEFAULT}"
export -n ROOMCAST_BENCH_BIN
case "$ROOMCAST_BENCH_BIN" in /*) ;; *) ROOMCAST_BENCH_BIN="$ROOT/$ROOMCAST_BENCH_BIN" ;; esac
OUT="$(mktemp -d /tmp/roomcast-check-local.XXXXXX)"
export ROOMCAST_LOCAL_STATE="$OUT/state"
CONNECTIONS="${CHECK_LOCAL_CONNECTIONS:-60}"
ROOMS="${CHECK_LOCAL_ROOMS:-6}"
RATE="${CHECK_LOCAL_RATE:-60}"
REPLICAS=3
CLUSTER_CHECK="${CHECK_LOCAL_CLUSTER:-1}"
case "$CLUSTER_CHECK" in 0 | 1 | only) ;; *) echo "CHECK_LOCAL_CLUSTER must be 0, 1 or only" >&2; exit 1 ;; esac
CLUSTER_STATE="$OUT/state-cluster"

PASSED=()
FAILED=()
pass() { PASSED+=("$1"); printf 'ok    %s\n' "$1"; }
fail() { FAILED+=("$1"); printf 'FAIL  %s\n' "$1"; [ -n "${2:-}" ] && [ -f "$2" ] && sed 's/^/      /' "$2" | tail -n 40; }
step() { printf '\n== %s\n' "$*"; }

BENCH_PID=""
CHAT_PID=""
cleanup() {
    if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill "$BENCH_PID" 2>/dev/null
        wait "$BENCH_PID" 2>/dev/null
    fi
    if [ -n "$CHAT_PID" ] && kill -0 "$CHAT_PID" 2>/dev/null; then
        kill "$CHAT_PID" 2>/dev/null
        wait "$CHAT_PID" 2>/dev/null
    fi
    # Both deployments: the standalone one and the Redis Cluster one (check 5).
    local st
    for st in "$OUT/state" "$CLUSTER_STATE"; do
        ROOMCAST_LOCAL_STATE="$st" "$ROOT/deploy/local/down.sh" --keep >/dev/null 2>&1
    done
    if [ "${#FAILED[@]}" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$OUT"
    else
        echo "logs and reports kept in $OUT"
    fi
}
trap cleanup EXIT
trap 'FAILED+=("interrupted"); exit 130' INT TERM

summary() {
    echo
    echo "check-local: ${#PASSED[@]} passed, ${#FAILED[@]} failed"
    for f in "${FAILED[@]}"; do echo "  failed: $f"; done
    [ "${#FAILED[@]}" -eq 0 ]
}

[ -x "$ROOMCAST_BIN" ] || { echo "no gateway binary at $ROOMCAST_BIN (cargo build --release, or set ROOMCAST_BIN)" >&2; exit 1; }
# The load generator is its own package: `cargo build --release` at the root does not build it.
# (Check 5 alone does not need it.)
if [ "$CLUSTER_CHECK" != only ]; then
    if [ ! -x "$ROOMCAST_BENCH_BIN" ] && [ "$ROOMCAST_BENCH_BIN" = "$BENCH_BIN_DEFAULT" ] && command -v cargo >/dev/null; then
        echo "building the load generator (cargo build --release -p roomcast-bench)"
        cargo build --release --quiet -p roomcast-bench
    fi
    [ -x "$ROOMCAST_BENCH_BIN" ] || { echo "no load generator binary at $ROOMCAST_BENCH_BIN (cargo build --release -p roomcast-bench, or set ROOMCAST_BENCH_BIN)" >&2; exit 1; }
fi

# Prometheus instant query; prints the JSON answer.
prom() { curl -fsS --max-time 10 "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1"; }
# Prints the first value of an instant query, or nothing.
prom_value() {
    prom "$1" 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
print(r[0]["value"][1] if r else "")' 2>/dev/null
}
# wait_prom EXPR MIN SECONDS: waits until EXPR's first value is >= MIN.
wait_prom() {
    local i v
    for ((i = 0; i < $3; i++)); do
        v="$(prom_value "$1")"
        if [ -n "$v" ] && python3 -c "import sys; sys.exit(0 if float('$v') >= float('$2') else 1)" 2>/dev/null; then
            return 0
        fi
        sleep 1
    done
    return 1
}

# bench_check NAME JSON: the bench report has 0 lost, 0 duplicated (and prints the totals).
bench_check() {
    python3 - "$2" "${3:-}" <<'EOF'
import json, sys
path, need_reconnects = sys.argv[1], sys.argv[2] == "reconnects"
try:
    report = json.load(open(path))
except Exception as e:
    sys.exit(f"no JSON report in {path}: {e}")
totals = report.get("totals", report)
missing = [k for k in ("lost", "duplicated") if k not in totals]
if missing:
    sys.exit(f"report has no {missing} (keys: {sorted(totals)})")
keys = ("sent", "acked", "deliveries", "lost", "duplicated", "reordered", "unrecovered",
        "members_not_joined", "disconnects", "reconnects", "connect_errors")
print("  ".join(f"{k}={totals[k]}" for k in keys if k in totals))
problems = [f"{k}={totals[k]}" for k in ("lost", "duplicated", "unrecovered", "members_not_joined")
            if totals.get(k, 0)]
if not totals.get("deliveries", 1):
    problems.append("nothing delivered")
if need_reconnects and not totals.get("reconnects", 0):
    problems.append("no client reconnected: the restarts did not move anyone")
if problems:
    sys.exit("; ".join(problems))
EOF
}

# ---------------------------------------------------------------------------------------
# Check 5: the same topology on a Redis Cluster (deploy/local/up.sh --cluster).
# rcli PORT ARGS...: redis-cli on a node of the local deployment, the password from its env.
rcli() {
    local port="$1"
    shift
    REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -p "$port" "$@" 2>&1 | tr -d '\r'
}
# owns_slot PORT SLOT: the node on PORT is a master serving SLOT (its "myself" line of
# CLUSTER NODES lists a range holding it; entries in brackets are slots being migrated).
owns_slot() {
    rcli "$1" cluster nodes | awk -v s="$2" '
        $3 ~ /myself/ && $3 ~ /master/ {
            for (i = 9; i <= NF; i++) {
                if ($i ~ /^\[/) continue
                n = split($i, r, "-")
                if (s + 0 >= r[1] + 0 && s + 0 <= r[n] + 0) found = 1
            }
        }
        END { exit !found }'
}
# gone PID: the process has exited (a zombie waiting for its reaper counts as exited).
gone() {
    [ ! -d "/proc/$1" ] || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null
}

cluster_checks() {
    local i t port role n_master n_slave bad pids pid alive room channel slot owner listed
    local classic replicas_listing expected
    step "Redis Cluster (3 masters + 3 replicas) + $REPLICAS replicas + haproxy + Prometheus (deploy/local/up.sh --cluster)"
    export ROOMCAST_LOCAL_STATE="$CLUSTER_STATE"
    if "$ROOT/deploy/local/up.sh" --cluster "$REPLICAS" >"$OUT/up-cluster.log" 2>&1; then
        pass "deploy/local/up.sh --cluster $REPLICAS"
    else
        fail "deploy/local/up.sh --cluster $REPLICAS" "$OUT/up-cluster.log"
        return 1
    fi
    # shellcheck disable=SC1091
    . "$ROOMCAST_LOCAL_STATE/env"
    echo "redis cluster $REDIS_NODES, load balancer ws://127.0.0.1:$LB_PORT/ws"

    # Every node: cluster_state:ok and knows all six; three masters, three replicas.
    n_master=0
    n_slave=0
    bad=""
    for port in $REDIS_PORTS; do
        rcli "$port" cluster info | grep -qx 'cluster_state:ok' || bad="$bad $port"
        role="$(rcli "$port" role | head -n1)"
        case "$role" in master) n_master=$((n_master + 1)) ;; slave) n_slave=$((n_slave + 1)) ;; esac
    done
    if [ -z "$bad" ] && [ "$n_master" = 3 ] && [ "$n_slave" = 3 ]; then
        pass "Redis Cluster: cluster_state:ok on all 6 nodes, 3 masters + 3 replicas"
    else
        fail "Redis Cluster: cluster_state:ok on all 6 nodes (not ok on:${bad:- none}), 3 masters + 3 replicas (got $n_master + $n_slave)"
    fi

    # The replicas got the cluster settings (and no redis.url, which cluster mode refuses),
    # and the load balancer sends traffic to ready replicas.
    bad=""
    for ((i = 1; i <= REPLICAS; i++)); do
        pid="$(cat "$ROOMCAST_LOCAL_STATE/pids/replica-$i.pid" 2>/dev/null)"
        tr '\0' '\n' <"/proc/$pid/environ" >"$OUT/replica-$i.environ" 2>/dev/null
        grep -qx 'ROOMCAST_REDIS__MODE=cluster' "$OUT/replica-$i.environ" \
            && grep -qxF "ROOMCAST_REDIS__NODES=$REDIS_NODES" "$OUT/replica-$i.environ" \
            && ! grep -q '^ROOMCAST_REDIS__URL=' "$OUT/replica-$i.environ" || bad="$bad local-$i(env)"
        curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$(eval echo "\$REPLICA_${i}_ADMIN")/readyz" || bad="$bad local-$i(readyz)"
        rm -f "$OUT/replica-$i.environ"
    done
    curl -fsS --max-time 2 -o "$OUT/readyz-cluster.json" "http://127.0.0.1:$LB_PORT/readyz" || bad="$bad haproxy(readyz)"
    if [ -z "$bad" ]; then
        pass "replicas run with redis.mode=cluster and the 6 nodes as seeds (no redis.url); /readyz 200 through haproxy"
    else
        fail "replicas run with redis.mode=cluster, ready through haproxy (failed:$bad)"
    fi

    # Two clients on two different replicas, in one room; each one's message reaches the other.
    # They stay connected (so the replicas stay subscribed) until $OUT/chat.stop appears.
    room="cluster-check-$(python3 -c 'import secrets; print(secrets.token_hex(4))')"
    channel="$REDIS_PREFIX:{$room}:ch"
    rm -f "$OUT/chat.ready" "$OUT/chat.stop"
    python3 - "$room" "$OUT/chat.ready" "$OUT/chat.stop" "$REPLICA_1_PORT" "$REPLICA_2_PORT" \
        >"$OUT/chat-cluster.log" 2>&1 <<'EOF' &
# Minimal RFC 6455 clients (standard library only), one per replica.
import base64, json, os, socket, struct, sys, time
room, ready, stop = sys.argv[1], sys.argv[2], sys.argv[3]
ports = [int(p) for p in sys.argv[4:]]
class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                sys.exit(f"port {port}: connection closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            sys.exit(f"port {port}: no upgrade: {head[:200]!r}")
    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        hdr = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    def send_json(self, obj):
        self.send(0x1, json.dumps(obj).encode())
    def parse(self):
        # One complete frame from the buffer, or None (nothing consumed).
        b = self.buf
        if len(b) < 2:
            return None
        n, off = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, off = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, off = struct.unpack("!Q", b[2:10])[0], 10
        if len(b) < off + n:
            return None
        self.buf = b[off + n:]
        return b[0] & 0x0F, b[off:off + n]
    def frames(self, timeout):
        # Yields the JSON text frames arriving within timeout; answers pings.
        deadline = time.time() + timeout
        while True:
            f = self.parse()
            if f is None:
                left = deadline - time.time()
                if left <= 0:
                    return
                self.s.settimeout(min(left, 0.5))
                try:
                    chunk = self.s.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    raise EOFError("closed by the server")
                self.buf += chunk
                continue
            op, data = f
            if op == 0x1:
                yield json.loads(data)
            elif op == 0x9:
                self.send(0xA, data)
            elif op == 0x8:
                raise EOFError(f"closed by the server: {data!r}")
    def wait_for(self, what, pred, timeout=10):
        for f in self.frames(timeout):
            if f.get("type") == "error":
                sys.exit(f"{what}: error frame {f}")
            if pred(f):
                return f
        sys.exit(f"no {what} within {timeout}s")
a, b = Client(ports[0]), Client(ports[1])
na = a.wait_for("welcome (a)", lambda f: f.get("type") == "welcome")["node"]
nb = b.wait_for("welcome (b)", lambda f: f.get("type") == "welcome")["node"]
print(f"client a on {na}, client b on {nb}, room {room}")
if na == nb:
    sys.exit("both clients are on the same replica")
for c, name in ((a, "alice"), (b, "bob")):
    c.send_json({"type": "join", "room": room, "name": name})
    c.wait_for(f"joined ({name})", lambda f: f.get("type") == "joined" and f.get("room") == room)
for src, dst, text in ((b, a, f"from {nb}"), (a, b, f"from {na}")):
    src.send_json({"type": "send", "room": room, "text": text, "ref": "r1"})
    src.wait_for(f"ack of {text!r}", lambda f: f.get("type") == "ack")
    m = dst.wait_for(f"message {text!r} on the other replica",
                     lambda f: f.get("type") == "message" and f.get("room") == room and f.get("text") == text)
    print(f"delivered across replicas: {text!r} id {m.get('id')}")
open(ready, "w").write("ok\n")
deadline = time.time() + 120
while not os.path.exists(stop) and time.time() < deadline:
    for c in (a, b):
        for f in c.frames(0.2):
            pass
for c in (a, b):
    c.send(0x8, struct.pack("!H", 1000))
    c.s.close()
EOF
    CHAT_PID=$!
    for ((t = 0; t < 300; t++)); do
        [ -f "$OUT/chat.ready" ] && break
        kill -0 "$CHAT_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -f "$OUT/chat.ready" ]; then
        pass "a message sent on one replica reaches a client on another (both ways, room $room)"
    else
        fail "a message sent on one replica reaches a client on another" "$OUT/chat-cluster.log"
    fi

    # While both replicas are subscribed: the room's channel is a shard channel of the master
    # owning its slot, and no node carries a classic (PUBLISH/SUBSCRIBE) room channel.
    slot="$(rcli "$REDIS_PORT" cluster keyslot "$channel")"
    : >"$OUT/pubsub-cluster.log"
    for ((t = 0; t < 25; t++)); do
        listed=""
        owner=""
        classic=""
        replicas_listing=""
        for port in $REDIS_PORTS; do
            role="$(rcli "$port" role | head -n1)"
            if rcli "$port" pubsub shardchannels "$channel" | grep -qxF "$channel"; then
                if [ "$role" = master ]; then listed="$listed $port"; else replicas_listing="$replicas_listing $port"; fi
            fi
            [ "$role" = master ] && owns_slot "$port" "$slot" && owner="$port"
            classic="$classic$(rcli "$port" pubsub channels | grep -E "^$REDIS_PREFIX:\{.*\}:ch$" | sed "s/^/ $port:/" | tr -d '\n')"
        done
        [ "$listed" = " $owner" ] && [ -z "$classic" ] && break
        sleep 0.2
    done
    {
        echo "channel $channel, slot $slot, owning master 127.0.0.1:${owner:-none}"
        echo "PUBSUB SHARDCHANNELS lists it on masters:${listed:- none} (replicas:${replicas_listing:- none})"
        echo "classic room channels (PUBSUB CHANNELS):${classic:- none}"
        for port in $REDIS_PORTS; do
            echo "  $port $(rcli "$port" role | head -n1): shard [$(rcli "$port" pubsub shardchannels | paste -sd' ')] classic [$(rcli "$port" pubsub channels | paste -sd' ')]"
        done
    } >>"$OUT/pubsub-cluster.log"
    if [ -n "$owner" ] && [ "$listed" = " $owner" ] && [ -z "$classic" ]; then
        pass "room channel $channel: PUBSUB SHARDCHANNELS on its owning master only (127.0.0.1:$owner), no classic room channel on any node"
        sed 's/^/      /' "$OUT/pubsub-cluster.log"
    else
        fail "room channel $channel is a shard channel of its owning master only, and no node has classic room channels" "$OUT/pubsub-cluster.log"
    fi
    touch "$OUT/chat.stop"
    wait "$CHAT_PID" 2>/dev/null
    CHAT_PID=""

    # down.sh stops every process up.sh started: replicas, haproxy, Prometheus, six nodes.
    pids=""
    for f in "$ROOMCAST_LOCAL_STATE"/pids/*.pid; do
        [ -e "$f" ] || continue
        pids="$pids $(basename "$f" .pid)=$(cat "$f")"
    done
    "$ROOT/deploy/local/down.sh" --keep >"$OUT/down-cluster.log" 2>&1
    # (A process may take a moment from its last signal to its exit.)
    for ((t = 0; t < 30; t++)); do
        alive=""
        n=0
        for pid in $pids; do
            n=$((n + 1))
            gone "${pid#*=}" || alive="$alive $pid"
        done
        for port in $REDIS_PORTS $LB_PORT; do
            (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null && alive="$alive port-$port"
        done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    # 6 redis nodes, the replicas, haproxy (and Prometheus unless skipped).
    expected=$((6 + REPLICAS + 1))
    [ "${ROOMCAST_LOCAL_NO_PROMETHEUS:-0}" = 1 ] || expected=$((expected + 1))
    if [ -z "$alive" ] && [ "$n" = "$expected" ]; then
        pass "deploy/local/down.sh stopped all $n processes (6 redis nodes, $REPLICAS replicas, haproxy, prometheus)"
    else
        echo "recorded:$pids; still there:${alive:- none}" >>"$OUT/down-cluster.log"
        fail "deploy/local/down.sh stopped all $expected processes (recorded $n, still there:${alive:- none})" "$OUT/down-cluster.log"
    fi
}

if [ "$CLUSTER_CHECK" = only ]; then
    cluster_checks
    summary
    exit
fi

# ---------------------------------------------------------------------------------------
step "start Redis + $REPLICAS replicas + haproxy + Prometheus (deploy/local/up.sh)"
if "$ROOT/deploy/local/up.sh" "$REPLICAS" >"$OUT/up.log" 2>&1; then
    pass "deploy/local/up.sh $REPLICAS"
else
    fail "deploy/local/up.sh $REPLICAS" "$OUT/up.log"
    summary
    exit 1
fi
# shellcheck disable=SC1091
. "$ROOMCAST_LOCAL_STATE/env"
LB="ws://127.0.0.1:$LB_PORT/ws"
echo "load balancer $LB, prometheus http://127.0.0.1:$PROM_PORT/"

if curl -fsS --max-time 5 "http://127.0.0.1:$LB_PORT/" -o "$OUT/page.html" && grep -qi '<html' "$OUT/page.html"; then
    pass "chat page served through haproxy"
else
    fail "chat page served through haproxy"
fi

# ---------------------------------------------------------------------------------------
step "refused frames through haproxy (error and disconnect series)"
if python3 - "127.0.0.1" "$LB_PORT" >"$OUT/poke.log" 2>&1 <<'EOF'
# A minimal RFC 6455 client (standard library only): sends frames the gateway must refuse
# and checks the error codes, then closes normally.
import base64, json, os, socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("connection closed during the handshake")
    buf += chunk
head, buf = buf.split(b"\r\n\r\n", 1)
if b" 101 " not in head.split(b"\r\n")[0]:
    sys.exit(f"no upgrade: {head[:200]!r}")
def send(opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    hdr = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
    s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
def recv_exact(n):
    global buf
    while len(buf) < n:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    out, buf = buf[:n], buf[n:]
    return out
def recv():
    b0, b1 = recv_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exact(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", recv_exact(8))[0]
    return b0 & 0x0F, recv_exact(n)
def next_json():
    while True:
        op, data = recv()
        if op == 0x1:
            return json.loads(data)
        if op == 0x9:
            send(0xA, data)
        elif op == 0x8:
            raise EOFError("closed by the server")
welcome = next_json()
print("welcome:", welcome)
want = {"p1": "unknown_type", "p2": "invalid_room", "p3": "not_joined"}
send(0x1, json.dumps({"type": "shout", "ref": "p1"}).encode())
send(0x1, json.dumps({"type": "join", "room": "no spaces allowed", "name": "poke", "ref": "p2"}).encode())
send(0x1, json.dumps({"type": "send", "room": "never-joined", "text": "hi", "ref": "p3"}).encode())
got = {}
while len(got) < len(want):
    f = next_json()
    if f.get("type") == "error":
        got[f.get("ref")] = f.get("code")
print("errors:", got)
send(0x8, struct.pack("!H", 1000))
try:
    while recv()[0] != 0x8:
        pass
except EOFError:
    pass
s.close()
sys.exit(0 if got == want else f"expected {want}, got {got}")
EOF
then
    pass "refused frames answered with unknown_type, invalid_room, not_joined"
else
    fail "refused frames answered with unknown_type, invalid_room, not_joined" "$OUT/poke.log"
fi

# ---------------------------------------------------------------------------------------
step "load through haproxy: roomcast-bench, $CONNECTIONS connections, $ROOMS rooms, $RATE msg/s"
"$ROOMCAST_BENCH_BIN" --url "$LB" --connections "$CONNECTIONS" --rooms "$ROOMS" --rate "$RATE" \
    --duration 45s --json --quiet --fail-on-loss >"$OUT/bench-load.json" 2>"$OUT/bench-load.err" &
BENCH_PID=$!
if wait_prom "sum(roomcast_connections)" "$CONNECTIONS" 90 \
    && wait_prom "sum(rate(roomcast_messages_delivered_total[15s]))" 1 60; then
    pass "Prometheus sees $CONNECTIONS connections and deliveries on the replicas"
else
    echo "connections: $(prom_value 'sum(roomcast_connections)'), bench log:" >"$OUT/wait.log"
    tail -n 20 "$OUT/bench-load.err" >>"$OUT/wait.log"
    fail "Prometheus sees $CONNECTIONS connections and deliveries on the replicas" "$OUT/wait.log"
fi
# Let a full rate window of samples accumulate under load.
sleep 16

step "every PromQL expression of grafana/roomcast.json returns data"
if python3 - "$ROOT/grafana/roomcast.json" "http://127.0.0.1:$PROM_PORT" >"$OUT/promql.log" 2>&1 <<'EOF'
import json, re, sys, time, urllib.parse, urllib.request
dash_path, prom = sys.argv[1], sys.argv[2]
dash = json.load(open(dash_path))
VARS = {"__rate_interval": "15s", "__interval": "15s", "__range": "5m", "pod": ".*", "namespace": ".*"}
def subst(expr):
    def var(m):
        name = m.group(1) or m.group(2)
        if name not in VARS:
            raise SystemExit(f"unknown dashboard variable ${name} in: {expr}")
        return VARS[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", var, expr)
exprs = []  # (where, promql, required label or None)
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            if t.get("expr"):
                exprs.append((f'panel "{p.get("title")}" {t.get("refId")}', t["expr"], None))
        walk(p.get("panels", []))
walk(dash.get("panels", []))
for v in dash.get("templating", {}).get("list", []):
    if v.get("type") != "query":
        continue
    q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
    m = re.fullmatch(r"\s*label_values\((?:(.*),\s*)?(\w+)\)\s*", q)
    if not m:
        raise SystemExit(f"variable {v['name']}: unsupported query {q!r}")
    selector, label = m.group(1) or f'{{{m.group(2)}!=""}}', m.group(2)
    exprs.append((f'variable ${v["name"]}', f"count by ({label}) ({selector})", label))
# Each metric named anywhere in the dashboard must exist on its own as well.
for name in sorted(set(re.findall(r"\broomcast_[a-z_]+", json.dumps(dash)))):
    exprs.append((f"metric {name}", f"count({name})", None))
def query(q):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body)
    return body["data"]["result"]
bad = 0
for where, expr, label in exprs:
    q = subst(expr)
    result, err = [], None
    for _ in range(15):  # a series can take a scrape or two to appear
        try:
            result = query(q)
            err = None
        except Exception as e:
            err = e
        if result and (label is None or all(r["metric"].get(label) for r in result)):
            break
        time.sleep(1)
    if err or not result:
        bad += 1
        print(f"NO DATA  {where}\n         {q}\n         {err or 'empty result'}")
        continue
    sample = ", ".join(f'{r["metric"]}={r["value"][1]}' for r in result[:3])
    print(f"data     {where}: {len(result)} series  ({sample[:160]})")
print(f"{len(exprs) - bad} of {len(exprs)} expressions returned data")
sys.exit(1 if bad else 0)
EOF
then
    pass "$(tail -n1 "$OUT/promql.log")"
else
    fail "dashboard PromQL: $(tail -n1 "$OUT/promql.log")" "$OUT/promql.log"
fi
grep -E '^(data|NO DATA)' "$OUT/promql.log" | cut -c1-150 | sed 's/^/      /'

step "the load run completes with no loss"
wait "$BENCH_PID"
rc=$?
BENCH_PID=""
if [ $rc -eq 0 ] && bench_check load "$OUT/bench-load.json" >"$OUT/bench-load.check" 2>&1; then
    pass "bench through haproxy: $(tail -n1 "$OUT/bench-load.check")"
else
    { echo "bench exit status $rc"; cat "$OUT/bench-load.check" 2>/dev/null; tail -n 20 "$OUT/bench-load.err"; } >"$OUT/bench-load.fail"
    fail "bench through haproxy" "$OUT/bench-load.fail"
fi

# ---------------------------------------------------------------------------------------
step "rolling restart under load: SIGTERM each replica in turn, bench --resume"
"$ROOMCAST_BENCH_BIN" --url "$LB" --connections "$CONNECTIONS" --rooms "$ROOMS" --rate "$RATE" \
    --duration 60s --resume --json --quiet --fail-on-loss \
    >"$OUT/bench-rolling.json" 2>"$OUT/bench-rolling.err" &
BENCH_PID=$!
# Wait until the bench's clients are connected and publishing before the first restart.
if ! wait_prom "sum(roomcast_connections)" "$CONNECTIONS" 90 \
    || ! wait_prom "sum(rate(roomcast_messages_delivered_total[5s]))" 1 60; then
    fail "bench connected before the rolling restart" "$OUT/bench-rolling.err"
fi
restarted=0
for ((i = 1; i <= REPLICAS; i++)); do
    before="$(prom_value "sum(roomcast_connections{pod=\"local-$i\"})")"
    if "$ROOT/deploy/local/replica.sh" restart "$i" >>"$OUT/rolling.log" 2>&1; then
        restarted=$((restarted + 1))
        echo "      replica local-$i: had ${before:-?} connections, drained, exited, restarted, ready"
    else
        fail "restart replica local-$i" "$OUT/rolling.log"
    fi
    # Like maxUnavailable 0 / maxSurge 1: the next pod goes only once this one is back and
    # the load balancer sends it traffic again.
    wait_http_ok=0
    for ((t = 0; t < 30; t++)); do
        curl -fsS --max-time 1 "http://127.0.0.1:$LB_PORT/readyz" >/dev/null 2>&1 && { wait_http_ok=1; break; }
        sleep 1
    done
    [ "$wait_http_ok" = 1 ] || fail "load balancer ready after restarting local-$i"
    sleep 3
done
if kill -0 "$BENCH_PID" 2>/dev/null; then
    pass "rolling restart of $restarted/$REPLICAS replicas finished while the bench was still publishing"
else
    fail "rolling restart finished while the bench was still publishing (the bench ended first: raise --duration)"
fi
wait "$BENCH_PID"
rc=$?
BENCH_PID=""
if [ $rc -eq 0 ] && bench_check rolling "$OUT/bench-rolling.json" reconnects >"$OUT/bench-rolling.check" 2>&1; then
    pass "rolling restart: 0 lost, 0 duplicated ($(tail -n1 "$OUT/bench-rolling.check"))"
else
    { echo "bench exit status $rc"; cat "$OUT/bench-rolling.check" 2>/dev/null; tail -n 20 "$OUT/bench-rolling.err"; } >"$OUT/bench-rolling.fail"
    fail "rolling restart: 0 lost, 0 duplicated" "$OUT/bench-rolling.fail"
fi
# A drained replica exits and its counters go with it: look back over the whole run.
drains="$(prom_value 'sum(max_over_time(roomcast_disconnects_total{reason="drain"}[15m]))')"
draining="$(prom_value 'max(max_over_time(roomcast_draining[15m]))')"
if [ -n "$drains" ] && python3 -c "import sys; sys.exit(0 if float('$drains') > 0 and float('${draining:-0}') == 1 else 1)"; then
    pass "Prometheus saw the drains (roomcast_draining reached 1; drain disconnects >= $drains)"
else
    fail "Prometheus saw the drains (roomcast_draining=${draining:-none}, drain disconnects=${drains:-none})"
fi

if [ "$CLUSTER_CHECK" = 1 ]; then
    # Stop the standalone deployment first (2 cores: the cluster run wants them).
    "$ROOT/deploy/local/down.sh" --keep >"$OUT/down.log" 2>&1
    cluster_checks
fi

summary
