#!/usr/bin/env bash
# Removes what deploy/minikube/up.sh made: the Helm release and the minikube profile.
set -uo pipefail
PROFILE="${PROFILE:-roomcast}"
RELEASE="${RELEASE:-chat}"
NAMESPACE="${NAMESPACE:-roomcast}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export PATH="$ROOT/.tools/bin:$PATH"
helm uninstall "$RELEASE" -n "$NAMESPACE" --kube-context "$PROFILE" 2>/dev/null || true
minikube delete -p "$PROFILE"
