#!/usr/bin/env bash
# A real multi-process kvgate cluster on this machine, every part its own process on loopback:
#   nats-server ×3 as one JetStream cluster (streams and the workers bucket replicated R3),
#   2 indexers, 4 simulated engines each with its shim, 2 routers (port $KVGATE_PORT, default 8080, and the next).
# Logs, pids, NATS stores and snapshots go to $KVGATE_LOCAL_DIR (default deploy/local/run). deploy/local/down.sh
# stops exactly these processes. Environment (all optional):
#   KVGATE_PORT          first router's port (default 8080; the second router takes the next port)
#   KVGATE_LOCAL_DIR     cluster directory (default deploy/local/run)
#   KVGATE_LOCAL_BASE    base of the other ports (default 14000: NATS 14222-14224, indexers 14090/14091, engines 141xx,
#                        engine events 142xx/143xx, shims 144xx)
#   KVGATE_LOCAL_ENGINES simulated engines (default 4)
#   KVGATE_LOCAL_SPEEDUP simulated-time speedup of the engines (default 1)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export KVGATE_LOCAL_DIR=${KVGATE_LOCAL_DIR:-$ROOT/deploy/local/run}
RUN=$KVGATE_LOCAL_DIR
PORT=${KVGATE_PORT:-8080}
BASE=${KVGATE_LOCAL_BASE:-14000}
ENGINES=${KVGATE_LOCAL_ENGINES:-4}
SPEEDUP=${KVGATE_LOCAL_SPEEDUP:-1}
CTL="$ROOT/deploy/local/ctl.sh"
KVGATE=(node "$ROOT/bin/kvgate.js")
MODEL=qwen3-8b

# nats-server: $KVGATE_NATS_SERVER, else on PATH, else where Debian's package puts it (/usr/sbin is not on every PATH)
NATS_SERVER=${KVGATE_NATS_SERVER:-$(command -v nats-server || true)}
for c in /usr/sbin/nats-server /usr/local/bin/nats-server; do [[ -n "$NATS_SERVER" || ! -x $c ]] || NATS_SERVER=$c; done
[[ -n "$NATS_SERVER" && -x "$NATS_SERVER" ]] || { echo "up.sh: nats-server not found (PATH, /usr/sbin, /usr/local/bin, KVGATE_NATS_SERVER); Debian: apt-get install nats-server" >&2; exit 1; }
command -v node >/dev/null || { echo "up.sh: node (20+) is not on PATH" >&2; exit 1; }
[[ -d "$ROOT/node_modules/tsx" ]] || { echo "up.sh: dependencies missing: run npm install (or npm ci) in $ROOT first" >&2; exit 1; }
if [[ -s "$RUN/names" ]]; then
  for n in $("$CTL" names); do
    if "$CTL" pid "$n" >/dev/null; then echo "up.sh: a cluster already runs in $RUN ($n); deploy/local/down.sh first" >&2; exit 1; fi
  done
fi
# from here on a failure (a process that never gets ready) stops whatever this run started: nothing is left behind
trap 'echo "up.sh: the cluster did not come up (logs: $RUN/logs); stopping what started" >&2; tail -n 5 "$RUN"/logs/*.log >&2 2>/dev/null || true; "$ROOT/deploy/local/down.sh" >/dev/null 2>&1 || true' ERR
rm -rf "$RUN"
mkdir -p "$RUN/nats" "$RUN/snapshots"

NATS_URL=""
for i in 1 2 3; do
  p=$((BASE + 221 + i)); c=$((BASE + 2221 + i)); m=$((BASE + 3221 + i))
  routes=""
  for j in 1 2 3; do [[ $j == "$i" ]] || routes+="nats-route://127.0.0.1:$((BASE + 2221 + j)), "; done
  cat > "$RUN/nats/n$i.conf" <<CONF
server_name: n$i
host: 127.0.0.1
port: $p
http: 127.0.0.1:$m
jetstream { store_dir: "$RUN/nats/n$i" }
cluster { name: kvgate-local, host: 127.0.0.1, port: $c, routes: [ ${routes%, } ] }
CONF
  "$CTL" start "nats-$i" "$NATS_SERVER" -c "$RUN/nats/n$i.conf"
  NATS_URL+="nats://127.0.0.1:$p,"
done
NATS_URL=${NATS_URL%,}
echo "$NATS_URL" > "$RUN/nats-url"
# JetStream must have a meta leader before anything creates a replicated stream
for i in 1 2 3; do node "$ROOT/deploy/local/wait.mjs" "http://127.0.0.1:$((BASE + 3221 + i))/healthz?js-enabled-only=true" --timeout-ms 30000; done
node -e '
  const url = process.argv[1], t0 = Date.now();
  (async () => { for (;;) {
    try { const j = await (await fetch(url)).json(); if (j.meta_cluster && j.meta_cluster.leader) return; } catch {}
    if (Date.now() - t0 > 30000) { console.error("up.sh: JetStream elected no meta leader in 30 s"); process.exit(1); }
    await new Promise((r) => setTimeout(r, 200));
  } })();' "http://127.0.0.1:$((BASE + 3222))/jsz"

export KVGATE_NATS_REPLICAS=3 KVGATE_LOG_LEVEL=${KVGATE_LOG_LEVEL:-info}
for i in 0 1; do
  "$CTL" start "indexer-$i" "${KVGATE[@]}" indexer --nats "$NATS_URL" --id "indexer-$i" --host 127.0.0.1 --port $((BASE + 90 + i)) --snapshot-dir "$RUN/snapshots" --snapshot-ms 5000
done
for i in $(seq 0 $((ENGINES - 1))); do
  "$CTL" start "engine-$i" "${KVGATE[@]}" sim-engine --host 127.0.0.1 --port $((BASE + 100 + i)) --engine-id "engine-$i" --speedup "$SPEEDUP" \
    --kv-events-endpoint "tcp://127.0.0.1:$((BASE + 200 + i))" --kv-replay-endpoint "tcp://127.0.0.1:$((BASE + 300 + i))"
  "$CTL" start "shim-$i" "${KVGATE[@]}" shim --nats "$NATS_URL" --worker-id "sim-$i" --model "$MODEL" --host 127.0.0.1 --port $((BASE + 400 + i)) \
    --engine-url "http://127.0.0.1:$((BASE + 100 + i))" --kv-events "tcp://127.0.0.1:$((BASE + 200 + i))" --kv-replay "tcp://127.0.0.1:$((BASE + 300 + i))"
done
for i in 0 1; do
  "$CTL" start "router-$i" "${KVGATE[@]}" router --nats "$NATS_URL" --id "router-$i" --host 127.0.0.1 --port $((PORT + i)) --tokenizer qwen3
done

for i in 0 1; do node "$ROOT/deploy/local/wait.mjs" "http://127.0.0.1:$((BASE + 90 + i))/readyz" --timeout-ms 60000; done
for i in 0 1; do node "$ROOT/deploy/local/wait.mjs" "http://127.0.0.1:$((PORT + i))/readyz" liveWorkers "$ENGINES" --timeout-ms 60000; done
cat <<MSG
kvgate local cluster up ($RUN):
  routers   http://127.0.0.1:$PORT  http://127.0.0.1:$((PORT + 1))
  indexers  http://127.0.0.1:$((BASE + 90))/debug/workers  http://127.0.0.1:$((BASE + 91))/debug/workers
  NATS      $NATS_URL (JetStream R3)
  engines   $ENGINES simulated, each behind its shim; logs in $RUN/logs
try:  curl -s http://127.0.0.1:$PORT/v1/completions -H 'content-type: application/json' -d '{"model":"$MODEL","prompt":"Hello","max_tokens":8}'
stop: deploy/local/down.sh
MSG
