#!/usr/bin/env bash
# Baseline for the steady state, the fair etcd v3 form of the CoreOS TTL loop: one lease per
# registration, granted once with the key put on it, then `etcdctl lease keep-alive --once`
# every PERIOD seconds (one write a round, not a grant and a put). When the keepalive fails
# (the lease expired or etcd lost it), the next round grants a new lease and puts the key again.
# Bounded: it stops by itself after MAX_SECONDS.
# Usage: ttl-loop-keepalive.sh ETCDCTL ENDPOINT KEY VALUE PERIOD TTL OFFSET MAX_SECONDS
set -u
etcdctl=$1 endpoint=$2 key=$3 value=$4 period=$5 ttl=$6 offset=$7 max_seconds=$8

end=$((SECONDS + max_seconds))
lease=
sleep "$offset"
while ((SECONDS < end)); do
  if [ -z "$lease" ] || ! "$etcdctl" --endpoints "$endpoint" lease keep-alive --once "$lease" \
    >/dev/null 2>&1; then
    lease=$("$etcdctl" --endpoints "$endpoint" lease grant "$ttl" | awk '{print $2}')
    if [ -n "$lease" ]; then
      "$etcdctl" --endpoints "$endpoint" put "$key" "$value" --lease="$lease" >/dev/null || lease=
    fi
  fi
  sleep "$period"
done
