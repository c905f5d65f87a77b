#!/usr/bin/env bash
# Stops exactly the processes deploy/local/up.sh started (routers first, NATS last): SIGTERM, up to 10 s each, then
# SIGKILL. Prints one line per process: how long it took to exit, or that it had to be killed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export KVGATE_LOCAL_DIR=${KVGATE_LOCAL_DIR:-$ROOT/deploy/local/run}
CTL="$ROOT/deploy/local/ctl.sh"
[[ -s "$KVGATE_LOCAL_DIR/names" ]] || { echo "down.sh: no cluster in $KVGATE_LOCAL_DIR"; exit 0; }
order() { # routers, shims, engines, indexers, then NATS
  local n
  for pre in router shim engine indexer nats; do for n in $("$CTL" names); do [[ $n == $pre-* ]] && echo "$n"; done; done
}
status=0
for n in $(order); do
  r=$("$CTL" stop "$n")
  echo "$n: $r"
  [[ $r == killed ]] && status=1
done
exit $status
