#!/usr/bin/env bash
# roomcast on minikube, from source:
#   1. starts minikube (profile "roomcast", 3 nodes) unless it runs
#   2. builds the image with docker as roomcast:dev and loads it (minikube image load)
#   3. helm upgrade --install chat ./helm, waits for the rollout, runs `helm test`
#   4. port-forwards the client Service to http://127.0.0.1:8080/ and opens the chat page
#      (or, with TUNNEL=1, keeps the LoadBalancer Service and asks you to run
#      `minikube tunnel -p roomcast` in another terminal)
# Needs: docker, minikube, kubectl, helm (scripts/install-chart-tools.sh for helm/kubectl).
# Env: PROFILE (roomcast), NODES (3), RELEASE (chat), NAMESPACE (roomcast), IMAGE
#      (roomcast:dev), LOCAL_PORT (8080), NO_OPEN=1, NO_FORWARD=1, TUNNEL=1
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROFILE="${PROFILE:-roomcast}"
NODES="${NODES:-3}"
RELEASE="${RELEASE:-chat}"
NAMESPACE="${NAMESPACE:-roomcast}"
IMAGE="${IMAGE:-roomcast:dev}"
LOCAL_PORT="${LOCAL_PORT:-8080}"
export PATH="$ROOT/.tools/bin:$PATH"

for tool in docker minikube kubectl helm; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing $tool (see docs/kubernetes.md)" >&2; exit 1; }
done

if ! minikube status -p "$PROFILE" >/dev/null 2>&1; then
    minikube start -p "$PROFILE" --nodes "$NODES"
fi
kubectl config use-context "$PROFILE" >/dev/null

echo "building $IMAGE"
docker build -t "$IMAGE" "$ROOT"
minikube image load "$IMAGE" -p "$PROFILE"

SERVICE_TYPE=ClusterIP
[ "${TUNNEL:-0}" = 1 ] && SERVICE_TYPE=LoadBalancer
helm upgrade --install "$RELEASE" "$ROOT/helm" \
    --namespace "$NAMESPACE" --create-namespace \
    --set image.repository="${IMAGE%:*}" --set image.tag="${IMAGE##*:}" \
    --set image.pullPolicy=Never \
    --set service.type="$SERVICE_TYPE" \
    --wait --timeout 5m "$@"
kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE" --timeout 5m
kubectl -n "$NAMESPACE" get pods -o wide
helm test "$RELEASE" -n "$NAMESPACE" --logs

if [ "${TUNNEL:-0}" = 1 ]; then
    echo
    echo "run 'minikube tunnel -p $PROFILE' in another terminal, then:"
    echo "  kubectl -n $NAMESPACE get svc $RELEASE   # EXTERNAL-IP, open http://EXTERNAL-IP/"
    exit 0
fi
[ "${NO_FORWARD:-0}" = 1 ] && exit 0
URL="http://127.0.0.1:$LOCAL_PORT/"
echo
echo "chat page: $URL   (Ctrl-C stops the port-forward; the release keeps running)"
echo "remove:    helm uninstall $RELEASE -n $NAMESPACE; minikube delete -p $PROFILE"
if [ "${NO_OPEN:-0}" != 1 ]; then
    (sleep 2; xdg-open "$URL" >/dev/null 2>&1 || open "$URL" >/dev/null 2>&1 || true) &
fi
exec kubectl -n "$NAMESPACE" port-forward "svc/$RELEASE" "$LOCAL_PORT:80"
