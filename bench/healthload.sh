#!/usr/bin/env bash
# What healthchecks cost the host: N busybox containers whose HEALTHCHECK runs every INTERVAL
# ms, and the host's busy CPU share (/proc/stat, every CPU) and healthcheck execs a second
# over SECONDS, after a settle. Why bench/realistic.py's health kind checks every 5 s.
# Usage: healthload.sh [N] [INTERVAL_MS ...]   (default: 25 containers; 100 1000 5000 ms)
# Needs the bench's busybox image (sidekick-test/busybox:*, built by any bench or test run).
set -eu
n=${1:-25}
shift || true
intervals=${*:-100 1000 5000}
image=$(docker images --format '{{.Repository}}:{{.Tag}}' sidekick-test/busybox | head -1)
seconds=5 settle=10
[ -n "$image" ] || { echo 'no sidekick-test/busybox image: run the tests or ./bench/run once' >&2; exit 2; }

# whatever happens (a failed run, ^C), no healthchecking container outlives the script
trap 'docker ps -aq --filter label=sidekick-healthload=1 | xargs -r docker rm -f >/dev/null' EXIT

busy_total() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }

for interval in $intervals; do
  tag=sidekick-healthload:$interval
  if ! built=$(printf 'FROM %s\nHEALTHCHECK --interval=%sms --timeout=2s --retries=3 CMD %s\n' \
    "$image" "$interval" "cat /tmp/ready" | docker build -q -t "$tag" - 2>&1); then
    echo "$built" >&2
    exit 1
  fi
  ids=$(seq "$n" | xargs -P8 -I{} docker run -d --label sidekick-healthload=1 "$tag" \
    sh -c 'echo ok > /tmp/ready; exec sleep 3600')
  sleep "$settle"
  read -r busy0 total0 < <(busy_total)
  execs=$(timeout "$seconds" docker events --filter event=exec_die \
    --filter label=sidekick-healthload=1 | wc -l || true)
  read -r busy1 total1 < <(busy_total)
  echo "$n containers, healthcheck every $interval ms: $((execs / seconds)) execs/s," \
    "host busy $((100 * (busy1 - busy0) / (total1 - total0)))% of its $(grep -c '^cpu[0-9]' /proc/stat) CPUs"
  # shellcheck disable=SC2086
  docker rm -f $ids >/dev/null
  docker rmi "$tag" >/dev/null
done
