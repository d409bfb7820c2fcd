#!/usr/bin/env bash
# Removes what deploy/kind/up.sh made: the Helm release and the kind cluster.
set -uo pipefail
CLUSTER="${CLUSTER:-roomcast}"
RELEASE="${RELEASE:-chat}"
NAMESPACE="${NAMESPACE:-roomcast}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PATH="$ROOT/.tools/bin:$PATH"
helm uninstall "$RELEASE" -n "$NAMESPACE" --kube-context "kind-$CLUSTER" 2>/dev/null || true
kind delete cluster --name "$CLUSTER"
