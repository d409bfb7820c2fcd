#!/usr/bin/env bash
# roomcast on a local kind cluster, from source:
#   1. creates the kind cluster "roomcast" (deploy/kind/cluster.yaml) unless it exists
#   2. builds the image with docker (Dockerfile at the repo root) as roomcast:dev
#   3. loads it into the cluster's nodes (kind load docker-image)
#   4. helm upgrade --install chat ./helm (3 replicas + bundled Redis), waits for the rollout
#   5. runs `helm test` (the roomcast probe through the Service)
#   6. port-forwards the client Service to http://127.0.0.1:8080/ and opens the chat page
# Needs: docker, kind, kubectl, helm (scripts/install-chart-tools.sh puts helm and kubectl
# in .tools/bin; kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation).
# Env: CLUSTER (roomcast), RELEASE (chat), NAMESPACE (roomcast), IMAGE (roomcast:dev),
#      LOCAL_PORT (8080), NO_OPEN=1 (do not open a browser), NO_FORWARD=1 (exit after install)
# Extra arguments go to helm, e.g.:  deploy/kind/up.sh --set replicaCount=5
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${CLUSTER:-roomcast}"
RELEASE="${RELEASE:-chat}"
NAMESPACE="${NAMESPACE:-roomcast}"
IMAGE="${IMAGE:-roomcast:dev}"
LOCAL_PORT="${LOCAL_PORT:-8080}"
export PATH="$ROOT/.tools/bin:$PATH"

for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "missing $tool (helm/kubectl: scripts/install-chart-tools.sh; kind: see docs/kubernetes.md)" >&2
        exit 1
    }
done

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --config "$ROOT/deploy/kind/cluster.yaml"
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

echo "building $IMAGE"
docker build -t "$IMAGE" "$ROOT"
kind load docker-image "$IMAGE" --name "$CLUSTER"

# kind has no LoadBalancer implementation: a ClusterIP Service plus a port-forward.
helm upgrade --install "$RELEASE" "$ROOT/helm" \
    --namespace "$NAMESPACE" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
    --set image.pullPolicy=Never \
    --set service.type=ClusterIP \
    --wait --timeout 5m "$@"
kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE" --timeout 5m
kubectl -n "$NAMESPACE" get pods -o wide
helm test "$RELEASE" -n "$NAMESPACE" --logs

[ "${NO_FORWARD:-0}" = 1 ] && exit 0
URL="http://127.0.0.1:$LOCAL_PORT/"
echo
echo "chat page: $URL   (Ctrl-C stops the port-forward; the release keeps running)"
echo "remove:    helm uninstall $RELEASE -n $NAMESPACE; kind delete cluster --name $CLUSTER"
if [ "${NO_OPEN:-0}" != 1 ]; then
    (sleep 2; xdg-open "$URL" >/dev/null 2>&1 || open "$URL" >/dev/null 2>&1 || true) &
fi
exec kubectl -n "$NAMESPACE" port-forward "svc/$RELEASE" "$LOCAL_PORT:80"
