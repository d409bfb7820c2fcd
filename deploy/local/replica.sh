#!/usr/bin/env bash
# Stops, starts or restarts one gateway replica of the local deployment, the way Kubernetes
# replaces a pod: SIGTERM, wait for the drain (at most propagation delay + drain timeout +
# 5 s, then SIGKILL), start it again on the same ports, wait until /readyz answers 200.
# Usage: deploy/local/replica.sh stop|start|restart I
set -euo pipefail
# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
load_env
action="${1:-}"
i="${2:-}"
{ [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$N" ]; } || die "usage: $0 stop|start|restart I   (1..$N)"
case "$action" in
    stop) stop_replica "$i" ;;
    start) start_replica "$i" ;;
    restart) stop_replica "$i"; start_replica "$i" ;;
    *) die "usage: $0 stop|start|restart I" ;;
esac
log "replica local-$i: $action done"
