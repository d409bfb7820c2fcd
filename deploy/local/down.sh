#!/usr/bin/env bash
# Stops everything deploy/local/up.sh started (only the processes it recorded), replicas
# first with SIGTERM so they drain, then haproxy, prometheus and redis (or the six nodes of
# the Redis Cluster of up.sh --cluster).
# Usage: deploy/local/down.sh [--keep]   (--keep leaves the state directory with its logs)
set -uo pipefail
# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -d "$STATE/pids" ] || { log "nothing running in $STATE"; exit 0; }
[ -f "$STATE/env" ] && load_env
DRAIN_PROPAGATION_DELAY="${DRAIN_PROPAGATION_DELAY:-1s}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-10s}"

# All replicas drain at the same time.
for f in "$STATE"/pids/replica-*.pid; do
    [ -e "$f" ] || continue
    name="$(basename "$f" .pid)"
    running "$name" && kill -TERM "$(cat "$f")" 2>/dev/null
done
# Then wait for each drain to end. Signal 0 only checks: a second SIGTERM would make the
# gateway skip its drain ("second signal; exiting now").
for f in "$STATE"/pids/replica-*.pid; do
    [ -e "$f" ] || continue
    stop_bg "$(basename "$f" .pid)" 0 "$(drain_wait_seconds)"
done
for name in haproxy prometheus redis; do
    stop_bg "$name" TERM 10
done
# The nodes of a Redis Cluster (up.sh --cluster): redis-1..redis-6.
for f in "$STATE"/pids/redis-*.pid; do
    [ -e "$f" ] || continue
    stop_bg "$(basename "$f" .pid)" TERM 10
done
if [ "${1:-}" = --keep ]; then
    log "stopped; logs kept in $STATE/logs"
else
    rm -rf "$STATE"
    log "stopped and removed $STATE"
fi
