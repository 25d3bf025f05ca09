#!/usr/bin/env bash
# Baseline: the seed's way. Its apache@.service ran `etcdctl set` in ExecStartPre= and
# `etcdctl rm` in ExecStop=, one etcdctl process per unit. Here that is driven by the Docker
# events stream so it can be timed from the same `start`/`die` events as the agent: one
# `etcdctl put` per container start and one `etcdctl del` per die, each in its own process
# (as each unit ran its own), nothing else.
# Usage: seed-follow.sh ETCDCTL ENDPOINT PREFIX GROUP_LABEL MAX_SECONDS
set -u
etcdctl=$1 endpoint=$2 prefix=$3 group=$4 max_seconds=$5

timeout --foreground "$max_seconds" docker events \
  --filter type=container --filter "label=$group" --filter event=start --filter event=die \
  --format '{{.Action}} {{index .Actor.Attributes "sidekick.bench.key"}}' |
  while read -r action key; do
    case $action in
      start) "$etcdctl" --endpoints "$endpoint" put "$prefix/$key" "127.0.0.1:${key##*-}" >/dev/null & ;;
      die) "$etcdctl" --endpoints "$endpoint" del "$prefix/$key" >/dev/null & ;;
    esac
  done
wait
