#!/usr/bin/env bash
# Baseline for the steady state: the CoreOS TTL-loop unit, `while true; do etcdctl set KEY VAL
# --ttl 60; sleep 45; done`, in etcd v3 terms: v3 has no per-key TTL, so each round grants a
# lease and puts the key on it (two writes a round). One of these runs per registration.
# Bounded: it stops by itself after MAX_SECONDS.
# Usage: ttl-loop.sh ETCDCTL ENDPOINT KEY VALUE PERIOD TTL OFFSET MAX_SECONDS
set -u
etcdctl=$1 endpoint=$2 key=$3 value=$4 period=$5 ttl=$6 offset=$7 max_seconds=$8

end=$((SECONDS + max_seconds))
sleep "$offset"
while ((SECONDS < end)); do
  lease=$("$etcdctl" --endpoints "$endpoint" lease grant "$ttl" | awk '{print $2}')
  "$etcdctl" --endpoints "$endpoint" put "$key" "$value" --lease="$lease" >/dev/null
  sleep "$period"
done
