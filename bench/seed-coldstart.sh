#!/usr/bin/env bash
# Baseline for the cold start: what the seed's way does for N containers already running,
# one `etcdctl put` per container (as N units' ExecStartPre= would), 8 at a time.
# Usage: seed-coldstart.sh ETCDCTL ENDPOINT PREFIX LABEL
set -euo pipefail
etcdctl=$1 endpoint=$2 prefix=$3 label=$4

docker ps --filter "label=$label" --format '{{.Label "sidekick.bench.key"}}' |
  xargs -r -P 8 -I{} sh -c '"$1" --endpoints "$2" put "$3/$4" "127.0.0.1:${4##*-}" >/dev/null' \
    _ "$etcdctl" "$endpoint" "$prefix" {}
