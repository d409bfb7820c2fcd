#!/usr/bin/env bash
# Checks the Helm chart in ./helm with the real helm binary and kubernetes-validate:
#   - helm lint --strict, default values and every helm/ci/*-values.yaml set
#   - helm template of each set, every manifest validated (strict) against Kubernetes 1.29
#     and the newest version kubernetes-validate knows (ServiceMonitor is skipped: it is a
#     Prometheus Operator CRD with no built-in schema)
#   - wrong values (helm/ci/invalid/*.yaml) must make helm template fail, with the message
#     in the file's "# expect: TEXT" line when it has one
#   - the rendered TOML config of each set passes `$ROOMCAST_BIN config --check FILE`
#   - terminationGracePeriodSeconds == propagationDelay + timeout + margin (several sets)
#   - identity (auth.*): [auth]/[auth.jwt] rendered, the HS256 key only as a mounted file
#     (existing or generated Secret), trustedProxies defaulted for the ingress, the jwt-mode
#     helm test (probe --mint, or a token Secret), checksum/auth, and `roomcast token` minting
#     a verifiable token from a rendered config plus a key file
#   - server API and hooks (api.*, hooks.*): off by default (no API Secret, no [api] or
#     [hooks], no volumes); on, the API key only as a mounted file (api.keys_file, from a
#     generated or existing Secret), the hooks' HMAC key likewise (hooks.secret_file),
#     [api]/[hooks.publish] rendered, checksum/api, NOTES telling how to read the key; a
#     hook URL without hooks.existingSecret fails the render (helm/ci/invalid); and a gateway
#     started from the rendered config with the generated key file serves `roomcast api`
#   - external Redis Cluster / Sentinel (redis.mode): the cluster and sentinel sets
#     render ROOMCAST_REDIS__MODE and NODES / SENTINELS + SENTINEL_MASTER (never a URL), no
#     bundled Redis, the password only from a secretKeyRef, TLS and the CA bundle (Secret or
#     ConfigMap) mounted read-only as ROOMCAST_REDIS__TLS_CA_FILE; the default renders none
#     of it; every wrong combination (helm/ci/invalid/redis-*.yaml) fails with its message;
#     and the gateway, given the rendered variables, reports that very Redis configuration
#   - large deployments: the default renders no sysctls (podSecurityContext otherwise as
#     given); the large set (helm/ci/large-values.yaml) renders podSecurityContext.sysctls
#     into the pod's securityContext, limits.max_connections = 100000 into the config, and a
#     memory limit of at least 64 MiB + max_connections x the measured bytes per connection
#     (BENCHMARKS.md, "Scale scenarios"); a sysctl value that is not a string fails
#     (helm/ci/invalid/sysctl-value-number.yaml)
#   - the dashboard: helm/dashboards/roomcast.json is a regular file, byte-identical to
#     grafana/roomcast.json (the single source; a copy, not a symlink, so helm prints no
#     symlink warning), `helm template` and `helm package` carry exactly that file, no helm
#     command warns about a symbolic link, and it only uses metric names listed in
#     docs/operations.md
# Exits non-zero on any failure and prints a summary.
#
# Env: ROOMCAST_BIN (default target/release/roomcast; must exist, or set
#      CHECK_CHART_SKIP_BINARY=1 to skip the config --check step, reported as SKIPPED).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
CHART="$ROOT/helm"
OUT="$(mktemp -d /tmp/roomcast-check-chart.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
ROOMCAST_BIN="${ROOMCAST_BIN:-$ROOT/target/release/roomcast}"
K8S_OLD="1.29.0"

"$ROOT/scripts/install-chart-tools.sh" >/dev/null || { echo "FAIL: could not install chart tools" >&2; exit 1; }
HELM="$ROOT/.tools/bin/helm"
PY="$ROOT/.tools/venv/bin/python"
K8S_NEW="$("$PY" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')"

PASSED=()
FAILED=()
SKIPPED=()
pass() { PASSED+=("$1"); printf 'ok    %s\n' "$1"; }
fail() { FAILED+=("$1"); printf 'FAIL  %s\n' "$1"; [ -n "${2:-}" ] && sed 's/^/      /' "$2" | head -n 40; }
skip() { SKIPPED+=("$1"); printf 'skip  %s\n' "$1"; }

# helm's stderr, kept in $OUT/helm-stderr.log as well: a symlink in the chart would make
# every helm command print "found symbolic link in path"; the dashboard section checks none did.
helm_q() { "$HELM" "$@" 2> >(tee -a "$OUT/helm-stderr.log" >&2); }

echo "helm $("$HELM" version --short), kubernetes-validate against $K8S_OLD and $K8S_NEW"
echo

# --- value sets ------------------------------------------------------------------------
SETS=(default)
for f in "$CHART"/ci/*-values.yaml; do SETS+=("$(basename "$f" -values.yaml)"); done
values_args() { [ "$1" = default ] || echo "-f $CHART/ci/$1-values.yaml"; }

for set in "${SETS[@]}"; do
    # shellcheck disable=SC2046
    if helm_q lint --strict "$CHART" $(values_args "$set") >"$OUT/lint-$set.log" 2>&1; then
        pass "helm lint --strict ($set)"
    else
        fail "helm lint --strict ($set)" "$OUT/lint-$set.log"
    fi
    # shellcheck disable=SC2046
    if helm_q template chat "$CHART" --namespace chat $(values_args "$set") \
        >"$OUT/render-$set.yaml" 2>"$OUT/render-$set.err"; then
        pass "helm template ($set)"
    else
        fail "helm template ($set)" "$OUT/render-$set.err"
        continue
    fi
    for version in "$K8S_OLD" "$K8S_NEW"; do
        if "$PY" - "$OUT/render-$set.yaml" "$version" >"$OUT/validate-$set-$version.log" 2>&1 <<'EOF'
import sys, yaml, kubernetes_validate
path, version = sys.argv[1], sys.argv[2]
bad = 0
count = 0
for doc in yaml.safe_load_all(open(path)):
    if not doc:
        continue
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
    if kind == "ServiceMonitor":
        # A Prometheus Operator CRD: kubernetes-validate has no schema for it.
        print(f"skipped {kind}/{name}: CRD (monitoring.coreos.com/v1), no built-in schema")
        continue
    count += 1
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        print(f"valid   {kind}/{name}")
    except Exception as e:  # ValidationError, SchemaNotFoundError, ...
        bad += 1
        print(f"INVALID {kind}/{name}: {e}")
if count == 0:
    print("no manifests rendered")
    sys.exit(1)
sys.exit(1 if bad else 0)
EOF
        then
            n="$(grep -c '^valid' "$OUT/validate-$set-$version.log")"
            s="$(grep -c '^skipped' "$OUT/validate-$set-$version.log")"
            extra=""
            [ "$s" != 0 ] && extra=", $s ServiceMonitor skipped (CRD, no built-in schema)"
            pass "kubernetes-validate $version ($set): $n manifests valid$extra"
        else
            fail "kubernetes-validate $version ($set)" "$OUT/validate-$set-$version.log"
        fi
    done
done

# --- wrong values must fail ------------------------------------------------------------
for f in "$CHART"/ci/invalid/*.yaml; do
    name="$(basename "$f" .yaml)"
    expect="$(sed -n 's/^# expect: //p' "$f" | head -n1)"
    if helm_q template chat "$CHART" -f "$f" >"$OUT/invalid-$name.out" 2>"$OUT/invalid-$name.err"; then
        fail "wrong values rejected: $name (helm template succeeded)" "$f"
    elif [ -n "$expect" ] && ! grep -qF -- "$expect" "$OUT/invalid-$name.err"; then
        { echo "expected the message: $expect"; echo "--- got:"; cat "$OUT/invalid-$name.err"; } >"$OUT/invalid-$name.fail"
        fail "wrong values rejected: $name (not with the expected message)" "$OUT/invalid-$name.fail"
    else
        why="$(grep -m1 "at '" "$OUT/invalid-$name.err" || grep -m1 -E "execution error|Error" "$OUT/invalid-$name.err")"
        pass "wrong values rejected: $name ($(echo "$why" | sed 's/^ *- //; s/^Error: execution error at ([^)]*): //' | cut -c1-100))"
    fi
done
# The headline case of the brief, spelled out: a string where the schema wants an integer.
if helm_q template chat "$CHART" --set-string replicaCount=three >/dev/null 2>"$OUT/three.err" ; then
    fail "replicaCount=three rejected by the schema"
elif grep -q "/replicaCount" "$OUT/three.err"; then
    pass "replicaCount=three rejected by the schema"
else
    fail "replicaCount=three rejected by the schema (other error)" "$OUT/three.err"
fi

# --- rendered config passes the gateway's own check -------------------------------------
extract_config() {
    "$PY" - "$1" "$2" <<'EOF'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap" and "roomcast.toml" in (doc.get("data") or {}):
        open(sys.argv[2], "w").write(doc["data"]["roomcast.toml"])
        sys.exit(0)
sys.exit("no ConfigMap with roomcast.toml")
EOF
}
if [ ! -x "$ROOMCAST_BIN" ] && [ "${CHECK_CHART_SKIP_BINARY:-0}" = 1 ]; then
    skip "roomcast config --check on the rendered config (no binary at $ROOMCAST_BIN)"
else
    for set in "${SETS[@]}"; do
        [ -f "$OUT/render-$set.yaml" ] || continue
        if ! extract_config "$OUT/render-$set.yaml" "$OUT/roomcast-$set.toml" 2>"$OUT/extract-$set.err"; then
            fail "config extracted from the ConfigMap ($set)" "$OUT/extract-$set.err"
            continue
        fi
        if [ ! -x "$ROOMCAST_BIN" ]; then
            echo "no roomcast binary at $ROOMCAST_BIN (build it, or set ROOMCAST_BIN)" >"$OUT/config-$set.log"
            fail "roomcast config --check ($set)" "$OUT/config-$set.log"
            continue
        fi
        # Only the file is checked: keep ROOMCAST_* variables of this shell out of it.
        # In jwt mode the file names key files the pod mounts (auth.jwt.secret_file under
        # /var/run/secrets/roomcast/jwt, public_key_file): `config --check` validates keys and
        # values only and does not open those files (the gateway reads them at start), so
        # they need not exist here; the minting check below reads a real key file.
        unset_args=()
        while IFS= read -r var; do unset_args+=(-u "$var"); done \
            < <(env | sed -n 's/^\(ROOMCAST_[A-Z0-9_]*\)=.*/\1/p')
        if env "${unset_args[@]}" "$ROOMCAST_BIN" config --check "$OUT/roomcast-$set.toml" >"$OUT/config-$set.log" 2>&1; then
            pass "roomcast config --check ($set)"
        else
            { echo "exit status $?"; cat "$OUT/config-$set.log"; echo "--- file:"; cat "$OUT/roomcast-$set.toml"; } >"$OUT/config-$set.fail"
            fail "roomcast config --check ($set)" "$OUT/config-$set.fail"
        fi
    done
fi

# --- jwt mode: the rendered config + the mounted key file mint a token ------------------
# What the helm test pod does (`roomcast probe --config /etc/roomcast/roomcast.toml --mint`)
# and what NOTES tell operators to run (`roomcast token --config ...`): the same config file,
# with secret_file pointed at a local copy of the key from the rendered Secret (generated
# set) or a stand-in key (existing Secret), must mint an HS256 token carrying the
# configured iss/aud, verifiable with that key.
mint_check() {
    local set="$1" key="$2"
    local toml="$OUT/roomcast-$set.toml" local_toml="$OUT/mint-$set.toml" keyfile="$OUT/mint-$set.key"
    [ -f "$toml" ] || return
    local no_env=()
    while IFS= read -r var; do no_env+=(-u "$var"); done \
        < <(env | sed -n 's/^\(ROOMCAST_[A-Z0-9_]*\)=.*/\1/p')
    printf '%s\n' "$key" >"$keyfile"
    sed "s#^secret_file = .*#secret_file = \"$keyfile\"#" "$toml" >"$local_toml"
    if env "${no_env[@]}" "$ROOMCAST_BIN" token --config "$local_toml" --sub helm-check --name Check \
        >"$OUT/mint-$set.token" 2>"$OUT/mint-$set.err" \
        && "$PY" - "$OUT/mint-$set.token" "$keyfile" "$toml" >>"$OUT/mint-$set.err" 2>&1 <<'EOF'
import base64, hashlib, hmac, json, sys, tomllib
token = open(sys.argv[1]).read().strip()
key = open(sys.argv[2]).read().rstrip().encode()
jwt = tomllib.load(open(sys.argv[3], "rb"))["auth"]["jwt"]
h, p, sig = token.split(".")
dec = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
assert json.loads(dec(h))["alg"] == "HS256", "alg"
assert hmac.compare_digest(dec(sig), hmac.new(key, f"{h}.{p}".encode(), hashlib.sha256).digest()), "signature"
claims = json.loads(dec(p))
assert claims["sub"] == "helm-check" and claims["name"] == "Check", claims
if "issuer" in jwt: assert claims.get("iss") == jwt["issuer"], ("iss", claims)
if "audience" in jwt:
    aud = claims.get("aud"); aud = aud if isinstance(aud, list) else [aud]
    assert jwt["audience"] in aud, ("aud", claims)
print("ok:", claims)
EOF
    then
        pass "jwt: roomcast token mints a valid HS256 token from the rendered config + key file ($set)"
    else
        fail "jwt: roomcast token mints a valid HS256 token from the rendered config + key file ($set)" "$OUT/mint-$set.err"
    fi
}
if [ -x "$ROOMCAST_BIN" ]; then
    if [ -f "$OUT/render-jwt-generated.yaml" ]; then
        generated_key="$("$PY" -c '
import base64, sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Secret" and d["metadata"]["name"] == "chat-jwt":
        print(base64.b64decode(d["data"]["jwt-secret"]).decode())' "$OUT/render-jwt-generated.yaml")"
        mint_check jwt-generated "$generated_key"
    fi
    mint_check jwt "stand-in-key-for-the-existing-secret"
fi

# --- server API: the rendered config + the generated key file serve /api/v1 -------------
# What a pod does with api.enabled: `roomcast serve` with the rendered config, whose
# api.keys_file points at the mounted Secret. Here keys_file points at a local copy of the
# generated key (memory bus, loopback ports); `roomcast api` with that key publishes and
# reads the message back, and a wrong key is refused.
api_serve_check() {
    local toml="$OUT/roomcast-api.toml" local_toml="$OUT/serve-api.toml" keyfile="$OUT/serve-api.keys"
    local name="api: a gateway from the rendered config serves /api/v1 with the generated key file"
    [ -f "$toml" ] && [ -f "$OUT/render-api.yaml" ] || { fail "$name (no rendered api set)"; return; }
    "$PY" -c '
import base64, sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Secret" and d["metadata"]["name"] == "chat-api":
        print(base64.b64decode(d["data"]["api-key"]).decode())' "$OUT/render-api.yaml" >"$keyfile"
    local ports client admin
    ports="$("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"
    read -r client admin <<<"$ports"
    sed -e "s#^keys_file = .*#keys_file = \"$keyfile\"#" \
        -e "s#^listen = \"0.0.0.0:8080\"#listen = \"127.0.0.1:$client\"#" \
        -e "s#^listen = \"0.0.0.0:9090\"#listen = \"127.0.0.1:$admin\"#" "$toml" >"$local_toml"
    local no_env=()
    while IFS= read -r var; do no_env+=(-u "$var"); done \
        < <(env | sed -n 's/^\(ROOMCAST_[A-Z0-9_]*\)=.*/\1/p')
    env "${no_env[@]}" ROOMCAST_NODE__ID=chart-check "$ROOMCAST_BIN" serve --config "$local_toml" \
        >"$OUT/serve-api.log" 2>&1 &
    local pid=$! ok=0 i
    for i in $(seq 1 100); do
        "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
            "http://127.0.0.1:$admin/readyz" 2>/dev/null && { ok=1; break; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    local url="http://127.0.0.1:$client" log="$OUT/serve-api-cli.log"
    if [ "$ok" = 1 ] \
        && id="$(env "${no_env[@]}" "$ROOMCAST_BIN" api publish chart-check "hello" --key-file "$keyfile" --url "$url" 2>>"$log")" \
        && env "${no_env[@]}" "$ROOMCAST_BIN" api history chart-check --key-file "$keyfile" --url "$url" 2>>"$log" | grep -qF "\"id\":\"$id\"" \
        && ! env "${no_env[@]}" ROOMCAST_API_KEY=not-the-generated-key-0000 "$ROOMCAST_BIN" api history chart-check --url "$url" 2>>"$log"; then
        pass "$name"
    else
        { echo "ready=$ok"; cat "$log" 2>/dev/null; echo "--- gateway:"; tail -n 20 "$OUT/serve-api.log"; } >"$OUT/serve-api.fail"
        fail "$name" "$OUT/serve-api.fail"
    fi
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}
if [ -x "$ROOMCAST_BIN" ]; then
    api_serve_check
fi

# --- external Redis Cluster / Sentinel: the gateway reads what the chart renders --------
# What a pod with redis.mode cluster / sentinel gets: the rendered config file plus
# the Deployment's ROOMCAST_REDIS__* variables (the password is a secretKeyRef, left out;
# the CA bundle path points at a stand-in CA here). `roomcast config` must load them (the
# checks a pod runs at start: host:port lists, no redis.url in these modes, a readable CA
# bundle) and print that very Redis configuration.
redis_env_check() {
    local set="$1"
    local name="redis ($set): the gateway loads the rendered ROOMCAST_REDIS__* variables as that configuration"
    if [ ! -f "$OUT/render-$set.yaml" ] || [ ! -f "$OUT/roomcast-$set.toml" ]; then
        fail "$name (set not rendered)"
        return
    fi
    [ -f "$OUT/redis-ca.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$OUT/redis-ca.key" -subj /CN=check-chart-redis-ca -days 1 -out "$OUT/redis-ca.pem" >/dev/null 2>&1
    local vars=()
    while IFS= read -r line; do vars+=("$line"); done < <("$PY" - "$OUT/render-$set.yaml" "$OUT/redis-ca.pem" <<'EOF'
import sys, yaml
dep = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]:
    if e["name"].startswith("ROOMCAST_REDIS__") and "value" in e:
        v = sys.argv[2] if e["name"] == "ROOMCAST_REDIS__TLS_CA_FILE" else e["value"]
        print(f'{e["name"]}={v}')
EOF
)
    local no_env=()
    while IFS= read -r var; do no_env+=(-u "$var"); done \
        < <(env | sed -n 's/^\(ROOMCAST_[A-Z0-9_]*\)=.*/\1/p')
    if env "${no_env[@]}" "${vars[@]}" "$ROOMCAST_BIN" config --config "$OUT/roomcast-$set.toml" \
        >"$OUT/redis-effective-$set.toml" 2>"$OUT/redis-effective-$set.err" \
        && "$PY" - "$OUT/redis-effective-$set.toml" "$OUT/render-$set.yaml" "$OUT/redis-ca.pem" \
            >>"$OUT/redis-effective-$set.err" 2>&1 <<'EOF'
import sys, tomllib, yaml
got = tomllib.load(open(sys.argv[1], "rb"))["redis"]
docs = [d for d in yaml.safe_load_all(open(sys.argv[2])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
cm = next(d for d in docs if d["kind"] == "ConfigMap" and "roomcast.toml" in d.get("data", {}))
want = {"mode": env["ROOMCAST_REDIS__MODE"], "prefix": tomllib.loads(cm["data"]["roomcast.toml"])["redis"]["prefix"]}
if want["mode"] == "cluster":
    want["nodes"] = env["ROOMCAST_REDIS__NODES"].split(",")
else:
    want["sentinels"] = env["ROOMCAST_REDIS__SENTINELS"].split(",")
    want["sentinel_master"] = env["ROOMCAST_REDIS__SENTINEL_MASTER"]
if "ROOMCAST_REDIS__USERNAME" in env: want["username"] = env["ROOMCAST_REDIS__USERNAME"]
if "ROOMCAST_REDIS__TLS" in env: want["tls"] = env["ROOMCAST_REDIS__TLS"] == "true"
if "ROOMCAST_REDIS__REPLICA_ACKS" in env: want["replica_acks"] = int(env["ROOMCAST_REDIS__REPLICA_ACKS"])
if "ROOMCAST_REDIS__TLS_CA_FILE" in env: want["tls_ca_file"] = sys.argv[3]
bad = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
assert not bad, f"expected vs effective: {bad}"
assert "url" not in got, f"a redis.url in {want['mode']} mode: {got['url']}"
print("effective [redis]:", got)
EOF
    then
        pass "$name"
    else
        { echo "variables: ${vars[*]}"; cat "$OUT/redis-effective-$set.err"; echo "--- roomcast config:"; cat "$OUT/redis-effective-$set.toml"; } >"$OUT/redis-effective-$set.fail"
        fail "$name" "$OUT/redis-effective-$set.fail"
    fi
}
if [ -x "$ROOMCAST_BIN" ]; then
    redis_env_check cluster
    redis_env_check sentinel
fi

# --- terminationGracePeriodSeconds follows the drain settings ---------------------------
check_grace() {
    local label="$1" margin="$2"; shift 2
    if ! helm_q template chat "$CHART" "$@" >"$OUT/grace.yaml" 2>"$OUT/grace.err"; then
        fail "terminationGracePeriodSeconds ($label): render failed" "$OUT/grace.err"
        return
    fi
    if "$PY" - "$OUT/grace.yaml" "$margin" >"$OUT/grace.log" 2>&1 <<'EOF'
import math, re, sys, yaml
def ms(s):
    s = str(s).strip()
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", s)
    if s == "0":
        return 0
    if not m:
        raise SystemExit(f"cannot parse {s!r}")
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}[m.group(2)]
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
cfg = next(d for d in docs if d["kind"] == "ConfigMap" and "roomcast.toml" in d.get("data", {}))
toml = cfg["data"]["roomcast.toml"]
section = re.search(r"^\[drain\]\n((?:[a-z_]+ = .*\n?)+)", toml, re.M).group(1)
drain = dict(re.findall(r'^([a-z_]+) = "([^"]*)"', section, re.M))
dep = next(d for d in docs if d["kind"] == "Deployment")
got = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
# The margin is not in the config file: the caller passes the value it set (chart default 5s).
margin = ms(sys.argv[2])
want = math.ceil((ms(drain["propagation_delay"]) + ms(drain["timeout"]) + margin) / 1000)
print(f"config drain: {drain}; margin {margin} ms; expected {want}, rendered {got}")
sys.exit(0 if got == want else 1)
EOF
    then
        pass "terminationGracePeriodSeconds ($label): $(tail -n1 "$OUT/grace.log" | sed 's/.*expected/expected/')"
    else
        fail "terminationGracePeriodSeconds ($label)" "$OUT/grace.log"
    fi
}
check_grace "defaults: 5s + 25s + 5s" 5s
check_grace "1500ms + 1m + 5s" 5s -f "$CHART/ci/everything-values.yaml"
check_grace "0s + 90s + 2s" 2s --set drain.propagationDelay=0s --set drain.timeout=90s \
    --set drain.gracePeriodMargin=2s
check_grace "250ms + 3s + 500ms" 500ms --set drain.propagationDelay=250ms \
    --set drain.timeout=3s --set drain.spread=2s --set drain.gracePeriodMargin=500ms

# --- checksum/config rolls pods when the config changes ---------------------------------
sum_of() { helm_q template chat "$CHART" "$@" --show-only templates/deployment.yaml | sed -n 's/.*checksum\/config: //p'; }
a="$(sum_of)"; b="$(sum_of --set history.size=100)"; c="$(sum_of --set replicaCount=7)"
if [ -n "$a" ] && [ "$a" != "$b" ] && [ "$a" = "$c" ]; then
    pass "checksum/config changes with the config (history.size) and only then (not replicaCount)"
else
    echo "default=$a history.size=100 -> $b replicaCount=7 -> $c" >"$OUT/checksum.log"
    fail "checksum/config changes with the config" "$OUT/checksum.log"
fi

# checksum/auth (jwt mode) rolls pods when the key source or the public key changes.
auth_sum() { helm_q template chat "$CHART" --set auth.mode=jwt "$@" --show-only templates/deployment.yaml | sed -n 's/.*checksum\/auth: //p'; }
a="$(auth_sum --set auth.jwt.existingSecret=k1)"; b="$(auth_sum --set auth.jwt.existingSecret=k2)"
c="$(auth_sum --set auth.jwt.existingSecret=k1 --set-file auth.jwt.publicKey=tests/keys/rsa_public.pem)"
d="$(auth_sum --set auth.jwt.existingSecret=k1 --set replicaCount=7)"
if [ -n "$a" ] && [ "$a" != "$b" ] && [ "$a" != "$c" ] && [ "$a" = "$d" ]; then
    pass "checksum/auth changes with auth.jwt.existingSecret and publicKey (not replicaCount)"
else
    echo "k1=$a k2=$b k1+publicKey=$c k1+replicaCount=7 -> $d" >"$OUT/checksum-auth.log"
    fail "checksum/auth changes with auth.jwt.existingSecret and publicKey" "$OUT/checksum-auth.log"
fi

# checksum/api rolls pods when the API/hooks values change (the gateway reads key files at
# start), not with unrelated values.
api_sum() { helm_q template chat "$CHART" --set api.enabled=true "$@" --show-only templates/deployment.yaml | sed -n 's/.*checksum\/api: //p'; }
a="$(api_sum --set api.existingSecret=k1)"; b="$(api_sum --set api.existingSecret=k2)"
c="$(api_sum --set api.existingSecret=k1 --set hooks.existingSecret=h1)"; d="$(api_sum --set api.existingSecret=k1 --set replicaCount=7)"
if [ -n "$a" ] && [ "$a" != "$b" ] && [ "$a" != "$c" ] && [ "$a" = "$d" ]; then
    pass "checksum/api changes with api.existingSecret and hooks.existingSecret (not replicaCount)"
else
    echo "k1=$a k2=$b k1+hooks=$c k1+replicaCount=7 -> $d" >"$OUT/checksum-api.log"
    fail "checksum/api changes with api.existingSecret and hooks.existingSecret" "$OUT/checksum-api.log"
fi

# NOTES: how to read the API key, only when the API is on (rendered by a client-side dry run).
notes() { helm_q install chat "$CHART" --namespace chat --dry-run=client "$@" 2>&1 | sed -n '/^NOTES:/,$p'; }
notes >"$OUT/notes-default.txt"; notes --set api.enabled=true >"$OUT/notes-api.txt"
notes --set api.enabled=true --set api.existingSecret=my-keys --set api.existingSecretKey=keys.txt >"$OUT/notes-api-existing.txt"
if grep -q '^NOTES:' "$OUT/notes-default.txt" && ! grep -q 'Server API' "$OUT/notes-default.txt" \
    && grep -qF "kubectl -n chat get secret chat-api -o jsonpath='{.data.api-key}' | base64 -d" "$OUT/notes-api.txt" \
    && grep -qF "kubectl -n chat get secret my-keys -o jsonpath='{.data.keys\.txt}'" "$OUT/notes-api-existing.txt"; then
    pass "NOTES tell how to read the API key (generated or existing Secret), only with api.enabled"
else
    cat "$OUT"/notes-*.txt >"$OUT/notes.log" 2>&1
    fail "NOTES tell how to read the API key" "$OUT/notes.log"
fi

# An external standalone Redis keeps its URL and may add an ACL user, TLS and a CA bundle
# (here from a ConfigMap, with a rediss:// URL instead of tls: true); no redis.mode variable.
redis_sa="$(helm_q template chat "$CHART" --set redis.enabled=false \
    --set redis.external.url=rediss://redis.data.svc.cluster.local:6380/1 --set redis.external.username=chat \
    --set redis.external.caConfigMap.name=corp-ca --show-only templates/deployment.yaml 2>"$OUT/redis-standalone.err")"
if printf '%s\n' "$redis_sa" | "$PY" -c '
import sys, yaml
p = yaml.safe_load(sys.stdin)["spec"]["template"]["spec"]; c = p["containers"][0]
env = {e["name"]: e for e in c["env"] if e["name"].startswith("ROOMCAST_REDIS__")}
vol = next(v for v in p["volumes"] if v["name"] == "redis-ca")
assert sorted(env) == ["ROOMCAST_REDIS__PASSWORD", "ROOMCAST_REDIS__TLS_CA_FILE", "ROOMCAST_REDIS__URL", "ROOMCAST_REDIS__USERNAME"], sorted(env)
assert env["ROOMCAST_REDIS__URL"]["value"] == "rediss://redis.data.svc.cluster.local:6380/1"
assert env["ROOMCAST_REDIS__USERNAME"]["value"] == "chat"
assert env["ROOMCAST_REDIS__TLS_CA_FILE"]["value"] == "/etc/roomcast-redis-ca/ca.crt"
assert vol["configMap"] == {"name": "corp-ca", "defaultMode": 292, "items": [{"key": "ca.crt", "path": "ca.crt"}]}, vol
assert "secretKeyRef" in env["ROOMCAST_REDIS__PASSWORD"]["valueFrom"]
' >"$OUT/redis-standalone.log" 2>&1; then
    pass "external standalone Redis: URL, username and a CA bundle (rediss://, caConfigMap), no redis.mode variable"
else
    cat "$OUT/redis-standalone.err" >>"$OUT/redis-standalone.log"
    fail "external standalone Redis: URL, username and a CA bundle (rediss://, caConfigMap), no redis.mode variable" "$OUT/redis-standalone.log"
fi

# NOTES name the Redis topology and the egress ports the gateway needs.
notes -f "$CHART/ci/cluster-values.yaml" >"$OUT/notes-cluster.txt"
notes -f "$CHART/ci/sentinel-values.yaml" >"$OUT/notes-sentinel.txt"
if grep -qF 'Bus: external Redis Cluster, seed nodes clustercfg.chat-prod.abc123.use1.cache.amazonaws.com:6379, 10.0.12.7:6380, TLS with the CA bundle from Secret redis-ca.' "$OUT/notes-cluster.txt" \
    && grep -qF '(ports 6379, 6380)' "$OUT/notes-cluster.txt" \
    && grep -qF 'Bus: Redis Sentinel, master "mymaster" through the sentinels redis-sentinel-0.' "$OUT/notes-sentinel.txt" \
    && grep -qF '(port 26379)' "$OUT/notes-sentinel.txt" \
    && grep -qF 'Bus: bundled Redis (chat-redis).' "$OUT/notes-default.txt"; then
    pass "NOTES name the Redis topology (bundled, Cluster, Sentinel) and the egress ports"
else
    cat "$OUT"/notes-cluster.txt "$OUT"/notes-sentinel.txt >"$OUT/notes-redis.log" 2>&1
    fail "NOTES name the Redis topology and the egress ports" "$OUT/notes-redis.log"
fi

# --- structure checks on the rendered sets ---------------------------------------------
"$PY" - "$OUT" >"$OUT/structure.log" 2>&1 <<'EOF'
import sys, yaml, os, json
out = sys.argv[1]
def load(name):
    p = os.path.join(out, f"render-{name}.yaml")
    return [d for d in yaml.safe_load_all(open(p)) if d] if os.path.exists(p) else None
problems = []
def kinds(docs): return [d["kind"] for d in docs]
def one(docs, kind): return next((d for d in docs if d["kind"] == kind), None)
d = load("default")
dep = one(d, "Deployment")
spec = dep["spec"]
pod = spec["template"]["spec"]
c = pod["containers"][0]
env = {e["name"]: e for e in c["env"]}
checks = {
  "default: 3 replicas": spec.get("replicas") == 3,
  "default: maxUnavailable 0 / maxSurge 1": spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1},
  "default: args serve --config /etc/roomcast/roomcast.toml": c["args"] == ["serve", "--config", "/etc/roomcast/roomcast.toml"],
  "default: ROOMCAST_NODE__ID from metadata.name": env["ROOMCAST_NODE__ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name",
  "default: ROOMCAST_REDIS__URL is the bundled redis": env["ROOMCAST_REDIS__URL"]["value"] == "redis://chat-redis:6379",
  "default: ROOMCAST_REDIS__PASSWORD from the chart's Secret": env["ROOMCAST_REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "chat-secrets",
  "default: probes on the admin port (/healthz, /healthz, /readyz)":
      (c["startupProbe"]["httpGet"], c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]) ==
      ({"path": "/healthz", "port": "admin"}, {"path": "/healthz", "port": "admin"}, {"path": "/readyz", "port": "admin"}),
  "default: restricted securityContext": c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["runAsNonRoot"]
      and c["securityContext"]["capabilities"]["drop"] == ["ALL"] and not c["securityContext"]["allowPrivilegeEscalation"]
      and c["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
  "default: enableServiceLinks false (no injected ROOMCAST_* variables)": pod.get("enableServiceLinks") is False,
  "default: topologySpread ScheduleAnyway": pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "ScheduleAnyway",
  "default: client Service LoadBalancer 80 -> http": any(x["kind"] == "Service" and x["metadata"]["name"] == "chat" and x["spec"]["type"] == "LoadBalancer"
      and x["spec"]["ports"][0]["port"] == 80 for x in d),
  "default: admin Service ClusterIP 9090": any(x["kind"] == "Service" and x["metadata"]["name"] == "chat-admin" and x["spec"]["type"] == "ClusterIP"
      and x["spec"]["ports"][0]["port"] == 9090 for x in d),
  "default: bundled Redis StatefulSet redis:7": one(d, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]["image"] == "redis:7",
  "default: PodDisruptionBudget maxUnavailable 1": one(d, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1,
  "default: no HPA, ServiceMonitor, NetworkPolicy, Ingress, dashboard": not set(kinds(d)) & {"HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy", "Ingress"}
      and not any(x["kind"] == "ConfigMap" and x["metadata"]["name"].endswith("-dashboard") for x in d),
  "default: helm test Pod runs probe --url ws://chat:80/ws": any(x["kind"] == "Pod" and x["metadata"]["annotations"].get("helm.sh/hook") == "test"
      and x["spec"]["containers"][0]["args"][:3] == ["probe", "--url", "ws://chat:80/ws"] for x in d),
}
e = load("external-redis")
if e:
    edep = one(e, "Deployment"); eenv = {x["name"]: x for x in edep["spec"]["template"]["spec"]["containers"][0]["env"]}
    checks["external-redis: no bundled Redis"] = one(e, "StatefulSet") is None
    checks["external-redis: URL from redis.external.url"] = eenv["ROOMCAST_REDIS__URL"]["value"] == "redis://redis.data.svc.cluster.local:6379/2"
    checks["external-redis: password from secrets.existingSecret"] = eenv["ROOMCAST_REDIS__PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "roomcast-credentials"
    checks["external-redis: chart creates no Secret"] = one(e, "Secret") is None
    checks["external-redis: no redis.mode/nodes/sentinels/TLS variables, no CA volume (standalone)"] = \
        not any(n.startswith("ROOMCAST_REDIS__") and n not in ("ROOMCAST_REDIS__URL", "ROOMCAST_REDIS__PASSWORD") for n in eenv) \
        and not any(v["name"] == "redis-ca" for v in edep["spec"]["template"]["spec"]["volumes"])
h = load("hpa")
if h:
    checks["hpa: autoscaling/v2 HPA, Deployment without replicas"] = one(h, "HorizontalPodAutoscaler")["apiVersion"] == "autoscaling/v2" and "replicas" not in one(h, "Deployment")["spec"]
s = load("servicemonitor")
if s:
    sm = one(s, "ServiceMonitor")
    labels = {r["targetLabel"] for r in sm["spec"]["endpoints"][0]["relabelings"]}
    checks["servicemonitor: admin port, pod and namespace relabelings"] = sm["spec"]["endpoints"][0]["port"] == "admin" and {"pod", "namespace"} <= labels
g = load("dashboard")
if g:
    cm = next(x for x in g if x["kind"] == "ConfigMap" and x["metadata"]["name"].endswith("-dashboard"))
    checks['dashboard: ConfigMap labelled grafana_dashboard: "1"'] = cm["metadata"]["labels"].get("grafana_dashboard") == "1"
    checks["dashboard: ConfigMap holds grafana/roomcast.json exactly"] = cm["data"]["roomcast.json"] == open("grafana/roomcast.json").read().rstrip("\n")
n = load("networkpolicy")
if n:
    checks["networkpolicy: gateway and redis policies"] = sorted(x["metadata"]["name"] for x in n if x["kind"] == "NetworkPolicy") == ["chat", "chat-redis"]
i = load("ingress")
if i:
    ing = one(i, "Ingress")
    a = ing["metadata"]["annotations"]
    checks["ingress: nginx proxy-read/send-timeout 3600"] = a.get("nginx.ingress.kubernetes.io/proxy-read-timeout") == "3600" and a.get("nginx.ingress.kubernetes.io/proxy-send-timeout") == "3600"
r = load("replicas5")
if r:
    checks["replicas5: 5 replicas and a PDB"] = one(r, "Deployment")["spec"]["replicas"] == 5 and one(r, "PodDisruptionBudget") is not None

# --- identity (auth.*) ---
import tomllib
PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
def toml_of(docs):
    return tomllib.loads(next(x for x in docs if x["kind"] == "ConfigMap" and "roomcast.toml" in x.get("data", {}))["data"]["roomcast.toml"])
def gateway(docs):
    p = one(docs, "Deployment")["spec"]["template"]["spec"]
    return p, p["containers"][0]
def test_pod(docs):
    return next(x for x in docs if x["kind"] == "Pod" and x["metadata"]["annotations"].get("helm.sh/hook") == "test")["spec"]
def vol(pod, name): return next((v for v in pod.get("volumes", []) if v["name"] == name), None)
def mount(c, name): return next((m for m in c.get("volumeMounts", []) if m["name"] == name), None)
def secret_env(c):
    return [e["name"] for e in c.get("env", []) if "JWT" in e["name"] or "AUTH" in e["name"]]
cfg = toml_of(d)
dpod, dc = gateway(d)
checks["default: [auth] mode anonymous, no [auth.jwt], no jwt volumes"] = cfg["auth"]["mode"] == "anonymous" \
    and "jwt" not in cfg["auth"] and vol(dpod, "jwt-secret") is None and vol(dpod, "jwt-public-key") is None
checks["default: trusted_proxies empty without an ingress"] = cfg["server"]["trusted_proxies"] == []
checks["default: permessage-deflate on, frames from 512 bytes (server.compression, compression_min_bytes)"] = \
    (cfg["server"].get("compression"), cfg["server"].get("compression_min_bytes")) == (True, 512)
checks["default: helm test probe unchanged (no --mint, no token)"] = "--mint" not in test_pod(d)["containers"][0]["args"] \
    and "env" not in test_pod(d)["containers"][0]
# --- large deployments (podSecurityContext.sysctls, memory sized from maxConnections) ---
# The idle RSS per connection measured by `scripts/bench full` (BENCHMARKS.md, "Scale
# scenarios"), and the base the sizing adds (docs/operations.md, "Large deployments").
PER_CONNECTION_BYTES = 4454
BASE_BYTES = 64 * 2**20
def quantity(q):
    import re
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    f = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    return float(m.group(1)) * f[m.group(2)]
checks["default: no sysctls in the pod securityContext, the rest of podSecurityContext as given"] = \
    dpod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}}
big = load("large")
if big:
    bpod, bc = gateway(big)
    bcfg = toml_of(big)
    checks["large: podSecurityContext.sysctls rendered into the pod securityContext (safe sysctls only)"] = \
        bpod["securityContext"].get("sysctls") == [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"},
                                                   {"name": "net.ipv4.tcp_keepalive_time", "value": "600"}] \
        and bpod["securityContext"].get("runAsUser") == 65532
    mc = bcfg["limits"]["max_connections"]
    need = BASE_BYTES + mc * PER_CONNECTION_BYTES
    checks[f"large: limits.max_connections {mc} and a memory limit >= 64 MiB + {mc} x {PER_CONNECTION_BYTES} B "
           f"(= {need / 2**20:.0f} MiB), request <= limit"] = mc == 100000 \
        and quantity(bc["resources"]["limits"]["memory"]) >= need \
        and quantity(bc["resources"]["requests"]["memory"]) <= quantity(bc["resources"]["limits"]["memory"])
if i:
    checks["ingress: trusted_proxies defaults to the private ranges"] = toml_of(i)["server"]["trusted_proxies"] == PRIVATE
j = load("jwt")
if j:
    jc = toml_of(j); jpod, jcont = gateway(j); jt = test_pod(j)
    key_file = jc["auth"]["jwt"].get("secret_file", "")
    v = vol(jpod, "jwt-secret"); m = mount(jcont, "jwt-secret")
    checks["jwt: [auth]/[auth.jwt] rendered (mode, timeout, refresh_notice, issuer, audience, leeway)"] = \
        (jc["auth"]["mode"], jc["auth"]["timeout"], jc["auth"]["refresh_notice"]) == ("jwt", "3s", "2m") \
        and (jc["auth"]["jwt"].get("issuer"), jc["auth"]["jwt"].get("audience"), jc["auth"]["jwt"].get("leeway")) == ("https://auth.example.com/", "roomcast", "10s")
    checks["jwt: HS256 key = existingSecret's key mounted as the secret_file"] = v is not None and m is not None \
        and v["secret"]["secretName"] == "roomcast-jwt" and v["secret"]["items"] == [{"key": "hs256-key", "path": "secret"}] \
        and key_file == m["mountPath"] + "/secret" and m.get("readOnly") is True
    checks["jwt: no generated Secret, no key in the environment"] = not any(x["kind"] == "Secret" and x["metadata"]["name"] == "chat-jwt" for x in j) \
        and secret_env(jcont) == []
    checks["jwt: checksum/auth pod annotation"] = "checksum/auth" in one(j, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    checks["jwt: trusted_proxies defaults to the private ranges (ingress on)"] = jc["server"]["trusted_proxies"] == PRIVATE
    checks["jwt: helm test probe mints with --config and the same key file"] = jt["containers"][0]["args"][-3:] == ["--config", "/etc/roomcast/roomcast.toml", "--mint"] \
        and vol(jt, "jwt-secret") == v and mount(jt["containers"][0], "jwt-secret") == m \
        and vol(jt, "config")["configMap"]["name"] == "chat-config"
g2 = load("jwt-generated")
if g2:
    gc = toml_of(g2); gpod, gcont = gateway(g2)
    sec = next((x for x in g2 if x["kind"] == "Secret" and x["metadata"]["name"] == "chat-jwt"), None)
    import base64
    key = base64.b64decode(sec["data"]["jwt-secret"]).decode() if sec else ""
    checks["jwt-generated: Secret chat-jwt with a random key of 32+ characters"] = len(key) >= 32 and key.isalnum()
    checks["jwt-generated: mounted as the secret_file, key not in any ConfigMap"] = vol(gpod, "jwt-secret")["secret"]["secretName"] == "chat-jwt" \
        and gc["auth"]["jwt"]["secret_file"] == mount(gcont, "jwt-secret")["mountPath"] + "/secret" \
        and not any(key in json.dumps(x) for x in g2 if x["kind"] == "ConfigMap")
w = load("jwt-jwks")
if w:
    wc = toml_of(w); wpod, wcont = gateway(w); wt = test_pod(w)
    pk = next((x for x in w if x["kind"] == "ConfigMap" and x["metadata"]["name"] == "chat-jwt-public-key"), None)
    checks["jwt-jwks: jwks_url and public_key_file from a ConfigMap, no HS256 key or Secret"] = pk is not None \
        and pk["data"]["public-key.pem"].startswith("-----BEGIN PUBLIC KEY-----") \
        and wc["auth"]["jwt"]["jwks_url"] == "https://idp.example.com/.well-known/jwks.json" \
        and wc["auth"]["jwt"]["public_key_file"] == mount(wcont, "jwt-public-key")["mountPath"] + "/public-key.pem" \
        and "secret_file" not in wc["auth"]["jwt"] and vol(wpod, "jwt-secret") is None \
        and not any(x["kind"] == "Secret" and x["metadata"]["name"] == "chat-jwt" for x in w)
    checks["jwt-jwks: helm test token from tests.tokenSecret (no --mint)"] = "--mint" not in wt["containers"][0]["args"] \
        and wt["containers"][0]["env"] == [{"name": "ROOMCAST_PROBE_TOKEN", "valueFrom": {"secretKeyRef": {"name": "roomcast-test-token", "key": "token"}}}]
    checks["jwt-jwks: trusted_proxies as given (not defaulted)"] = wc["server"]["trusted_proxies"] == ["10.244.0.0/16", "fd00::/8"]

# --- server API and hooks (api.*, hooks.*) ---
import base64
def secret(docs, name): return next((x for x in docs if x["kind"] == "Secret" and x["metadata"]["name"] == name), None)
def env_names(c): return [e["name"] for e in c.get("env", [])]
dann = one(d, "Deployment")["spec"]["template"]["metadata"]["annotations"]
checks["default: API off (no Secret chat-api, no [api]/[hooks], no api/hooks volumes, no checksum/api)"] = \
    secret(d, "chat-api") is None and "api" not in cfg and "hooks" not in cfg \
    and vol(dpod, "api-keys") is None and vol(dpod, "hooks-secret") is None and "checksum/api" not in dann
a = load("api")
if a:
    ac = toml_of(a); apod, acont = gateway(a)
    sec = secret(a, "chat-api")
    key = base64.b64decode(sec["data"]["api-key"]).decode() if sec else ""
    v = vol(apod, "api-keys"); m = mount(acont, "api-keys")
    checks["api: Secret chat-api with a random key of 48 characters"] = len(key) == 48 and key.isalnum()
    checks["api: the key mounted read-only as api.keys_file (only the key, as keys)"] = v is not None and m is not None \
        and v["secret"]["secretName"] == "chat-api" and v["secret"]["items"] == [{"key": "api-key", "path": "keys"}] \
        and ac["api"]["keys_file"] == m["mountPath"] + "/keys" and m.get("readOnly") is True
    checks["api: key in no ConfigMap and not in the environment"] = not any(key in json.dumps(x) for x in a if x["kind"] == "ConfigMap") \
        and not any("API" in n for n in env_names(acont)) and key not in json.dumps(one(a, "Deployment"))
    checks["api: [api] idempotency_ttl, kick_ttl, requests_per_second, max_body_bytes rendered"] = \
        (ac["api"]["idempotency_ttl"], ac["api"]["kick_ttl"], ac["api"]["requests_per_second"], ac["api"]["max_body_bytes"]) == ("30m", "90s", 200, 16384)
    checks["api: no hooks, checksum/api annotation"] = "hooks" not in ac and vol(apod, "hooks-secret") is None \
        and "checksum/api" in one(a, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    checks["api: the helm test pod gets no API key"] = vol(test_pod(a), "api-keys") is None
ah = load("api-hooks")
if ah:
    hc = toml_of(ah); hpod, hcont = gateway(ah)
    av = vol(hpod, "api-keys"); am = mount(hcont, "api-keys")
    hv = vol(hpod, "hooks-secret"); hm = mount(hcont, "hooks-secret")
    checks["api-hooks: API keys from existingSecret (no generated Secret)"] = secret(ah, "chat-api") is None \
        and av["secret"]["secretName"] == "roomcast-api-keys" and av["secret"]["items"] == [{"key": "keys", "path": "keys"}] \
        and hc["api"]["keys_file"] == am["mountPath"] + "/keys"
    checks["api-hooks: HMAC key from hooks.existingSecret mounted read-only as hooks.secret_file"] = hv is not None and hm is not None \
        and hv["secret"]["secretName"] == "roomcast-hooks" and hv["secret"]["items"] == [{"key": "hmac", "path": "secret"}] \
        and hc["hooks"]["secret_file"] == hm["mountPath"] + "/secret" and hm.get("readOnly") is True and "secret" not in hc["hooks"]
    checks["api-hooks: [hooks.publish] url, timeout, on_error rendered"] = hc["hooks"]["publish"] == \
        {"url": "https://backend.chat.svc.cluster.local/hooks/publish", "timeout": "500ms", "on_error": "allow"}

# --- external Redis Cluster / Sentinel (redis.mode) ---
def redis_env(docs):
    return {x["name"]: x for x in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"] if x["name"].startswith("ROOMCAST_REDIS__")}
def plain(env): return {k: v.get("value") for k, v in env.items() if "value" in v}
denv = redis_env(d)
checks["default: only ROOMCAST_REDIS__URL and __PASSWORD (no redis.mode etc. for older gateways)"] = sorted(denv) == ["ROOMCAST_REDIS__PASSWORD", "ROOMCAST_REDIS__URL"] \
    and not any(v["name"] == "redis-ca" for v in pod["volumes"]) and "checksum/redis-ca" not in dep["spec"]["template"]["metadata"]["annotations"]
def password_from_secret(env, name):
    p = env.get("ROOMCAST_REDIS__PASSWORD", {})
    return "value" not in p and p.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == name \
        and p["valueFrom"]["secretKeyRef"]["key"] == "redis-password"
def ca_mounted(docs, kind, name, key):
    p = one(docs, "Deployment")["spec"]["template"]["spec"]; c = p["containers"][0]
    v = next((x for x in p["volumes"] if x["name"] == "redis-ca"), None)
    m = next((x for x in c["volumeMounts"] if x["name"] == "redis-ca"), None)
    src = (v or {}).get({"Secret": "secret", "ConfigMap": "configMap"}[kind], {})
    return v is not None and m is not None and m.get("readOnly") is True \
        and src.get({"Secret": "secretName", "ConfigMap": "name"}[kind]) == name \
        and src.get("items") == [{"key": key, "path": "ca.crt"}] \
        and plain(redis_env(docs)).get("ROOMCAST_REDIS__TLS_CA_FILE") == m["mountPath"] + "/ca.crt"
def no_value_in_configmaps(docs, *values):
    return not any(v in json.dumps(x) for x in docs if x["kind"] == "ConfigMap" for v in values)
cl = load("cluster")
if cl:
    cenv = redis_env(cl); cplain = plain(cenv)
    checks["cluster: ROOMCAST_REDIS__MODE=cluster and NODES = the seed nodes, comma-separated"] = cplain.get("ROOMCAST_REDIS__MODE") == "cluster" \
        and cplain.get("ROOMCAST_REDIS__NODES") == "clustercfg.chat-prod.abc123.use1.cache.amazonaws.com:6379,10.0.12.7:6380"
    checks["cluster: no Redis URL (env or config), no sentinel variables"] = "ROOMCAST_REDIS__URL" not in cenv \
        and not any(k.startswith("ROOMCAST_REDIS__SENTINEL") for k in cenv) and "url" not in toml_of(cl).get("redis", {})
    checks["cluster: no bundled Redis (StatefulSet, Service, NetworkPolicy chat-redis)"] = one(cl, "StatefulSet") is None \
        and not any(x["metadata"]["name"] == "chat-redis" for x in cl) \
        and sorted(x["metadata"]["name"] for x in cl if x["kind"] == "NetworkPolicy") == ["chat"]
    checks["cluster: password from a secretKeyRef on secrets.existingSecret, chart creates no Secret"] = password_from_secret(cenv, "roomcast-credentials") \
        and one(cl, "Secret") is None
    checks["cluster: ROOMCAST_REDIS__USERNAME and ROOMCAST_REDIS__TLS=true"] = cplain.get("ROOMCAST_REDIS__USERNAME") == "roomcast" \
        and cplain.get("ROOMCAST_REDIS__TLS") == "true"
    checks["cluster: replicaAcks renders ROOMCAST_REDIS__REPLICA_ACKS=1"] = cplain.get("ROOMCAST_REDIS__REPLICA_ACKS") == "1"
    checks["cluster: CA bundle from caSecret mounted read-only as ROOMCAST_REDIS__TLS_CA_FILE, checksum/redis-ca"] = ca_mounted(cl, "Secret", "redis-ca", "ca.pem") \
        and "checksum/redis-ca" in one(cl, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    checks["cluster: redis.prefix still in the config file"] = toml_of(cl)["redis"] == {"prefix": "chat-prod"}
se = load("sentinel")
if se:
    senv = redis_env(se); splain = plain(senv)
    checks["sentinel: ROOMCAST_REDIS__MODE=sentinel, SENTINELS (comma-separated) and SENTINEL_MASTER"] = splain.get("ROOMCAST_REDIS__MODE") == "sentinel" \
        and splain.get("ROOMCAST_REDIS__SENTINELS") == ",".join(f"redis-sentinel-{i}.redis-sentinel.data.svc.cluster.local:26379" for i in range(3)) \
        and splain.get("ROOMCAST_REDIS__SENTINEL_MASTER") == "mymaster"
    checks["sentinel: no Redis URL, no NODES, no bundled Redis"] = "ROOMCAST_REDIS__URL" not in senv and "ROOMCAST_REDIS__NODES" not in senv \
        and "url" not in toml_of(se).get("redis", {}) and one(se, "StatefulSet") is None
    sec = next((x for x in se if x["kind"] == "Secret" and x["metadata"]["name"] == "chat-secrets"), None)
    checks["sentinel: password from a secretKeyRef on the chart's Secret, in no ConfigMap or plain env"] = password_from_secret(senv, "chat-secrets") \
        and sec is not None and base64.b64decode(sec["data"]["redis-password"]).decode() == "s3ntinelPassw0rd" \
        and no_value_in_configmaps(se, "s3ntinelPassw0rd") and "s3ntinelPassw0rd" not in json.dumps(one(se, "Deployment"))
    checks["sentinel: CA bundle from caConfigMap mounted read-only as ROOMCAST_REDIS__TLS_CA_FILE, TLS on, no username"] = ca_mounted(se, "ConfigMap", "redis-ca-bundle", "ca.crt") \
        and splain.get("ROOMCAST_REDIS__TLS") == "true" and "ROOMCAST_REDIS__USERNAME" not in senv
for name, ok in checks.items():
    print(("ok    " if ok else "FAIL  ") + name)
sys.exit(0 if all(checks.values()) else 1)
EOF
while read -r line; do
    case "$line" in
        "ok    "*) pass "${line#ok    }" ;;
        "FAIL  "*) fail "${line#FAIL  }" ;;
        *) fail "structure check crashed: $line" ;;
    esac
done <"$OUT/structure.log"

# PDB only with more than one replica.
if helm_q template chat "$CHART" --set replicaCount=1 --show-only templates/pdb.yaml >/dev/null 2>&1; then
    fail "no PodDisruptionBudget with replicaCount 1"
else
    pass "no PodDisruptionBudget with replicaCount 1"
fi

# --- the dashboard: one source, carried into the chart and the package ------------------
if [ -L "$CHART/dashboards/roomcast.json" ]; then
    echo "helm/dashboards/roomcast.json is a symlink (helm warns about it on every command); replace it with a copy: rm helm/dashboards/roomcast.json && cp grafana/roomcast.json helm/dashboards/roomcast.json" >"$OUT/dash-copy.log"
    fail "helm/dashboards/roomcast.json is a regular file identical to grafana/roomcast.json" "$OUT/dash-copy.log"
elif [ ! -f "$CHART/dashboards/roomcast.json" ]; then
    echo "helm/dashboards/roomcast.json is missing; copy it: cp grafana/roomcast.json helm/dashboards/roomcast.json" >"$OUT/dash-copy.log"
    fail "helm/dashboards/roomcast.json is a regular file identical to grafana/roomcast.json" "$OUT/dash-copy.log"
elif ! cmp "$ROOT/grafana/roomcast.json" "$CHART/dashboards/roomcast.json" >"$OUT/dash-copy.log" 2>&1; then
    echo "helm/dashboards/roomcast.json differs from grafana/roomcast.json (the source); copy it: cp grafana/roomcast.json helm/dashboards/roomcast.json" >>"$OUT/dash-copy.log"
    fail "helm/dashboards/roomcast.json is a regular file identical to grafana/roomcast.json" "$OUT/dash-copy.log"
else
    pass "helm/dashboards/roomcast.json is a regular file identical to grafana/roomcast.json"
fi
if helm_q package "$CHART" -d "$OUT/pkg" >"$OUT/package.log" 2>&1 \
    && tar -xzf "$OUT"/pkg/roomcast-*.tgz -C "$OUT/pkg" roomcast/dashboards/roomcast.json \
    && cmp -s "$OUT/pkg/roomcast/dashboards/roomcast.json" "$ROOT/grafana/roomcast.json"; then
    pass "helm package carries grafana/roomcast.json"
else
    fail "helm package carries grafana/roomcast.json" "$OUT/package.log"
fi
if tar -xzf "$OUT"/pkg/roomcast-*.tgz -C "$OUT/pkg" 2>/dev/null \
    && helm_q template chat "$OUT/pkg/roomcast" --set monitoring.dashboard.enabled=true >/dev/null 2>"$OUT/pkg-render.err"; then
    pass "the packaged chart renders (dashboard on)"
else
    fail "the packaged chart renders (dashboard on)" "$OUT/pkg-render.err"
fi
# Every helm command above sent its stderr through helm_q into helm-stderr.log; one more
# template and lint here with stderr read directly (no process substitution to wait for).
"$HELM" template chat "$CHART" --set monitoring.dashboard.enabled=true >/dev/null 2>"$OUT/direct.err" || true
"$HELM" lint "$CHART" >/dev/null 2>>"$OUT/direct.err" || true
wait 2>/dev/null || true
if cat "$OUT/helm-stderr.log" "$OUT/direct.err" 2>/dev/null | grep -i 'symbolic link' >"$OUT/symlink-warn.log"; then
    fail "no helm command warns about a symbolic link in the chart" "$OUT/symlink-warn.log"
else
    pass "no helm command warns about a symbolic link in the chart"
fi
if "$PY" - >"$OUT/dash.log" 2>&1 <<'EOF'
import json, re, sys
dash = json.load(open("grafana/roomcast.json"))
documented = set(re.findall(r"^\| `(roomcast_[a-z_]+)", open("docs/operations.md").read(), re.M))
used = set(re.findall(r"roomcast_[a-z_]+", json.dumps(dash)))
base = lambda m: re.sub(r"_(bucket|sum|count)$", "", m) if re.sub(r"_(bucket|sum|count)$", "", m) in documented else m
unknown = sorted(m for m in used if base(m) not in documented)
print("metrics used:", ", ".join(sorted(used)))
if unknown:
    print("NOT in docs/operations.md:", ", ".join(unknown))
    sys.exit(1)
assert dash.get("schemaVersion", 0) >= 36, "schemaVersion"
names = [v["name"] for v in dash["templating"]["list"]]
assert names[:3] == ["datasource", "namespace", "pod"], names
EOF
then
    pass "dashboard uses only metric names from docs/operations.md"
else
    fail "dashboard uses only metric names from docs/operations.md" "$OUT/dash.log"
fi

# --- summary ---------------------------------------------------------------------------
echo
echo "check-chart: ${#PASSED[@]} passed, ${#FAILED[@]} failed, ${#SKIPPED[@]} skipped"
for f in "${FAILED[@]}"; do echo "  failed: $f"; done
for s in "${SKIPPED[@]}"; do echo "  skipped: $s"; done
[ "${#FAILED[@]}" -eq 0 ]
