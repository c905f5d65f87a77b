#!/usr/bin/env bash
# Process control for the local cluster (deploy/local/up.sh): every process is started through here, so its
# command line, pid and log live under $KVGATE_LOCAL_DIR and the chaos suite can kill and restart it exactly.
#   ctl.sh start NAME CMD...   start CMD in the background (log: logs/NAME.log), remember pid and command
#   ctl.sh kill NAME           kill -9 (a crash); the command stays remembered
#   ctl.sh revive NAME         start NAME again with its remembered command
#   ctl.sh stop NAME           SIGTERM, wait up to 10 s, then SIGKILL; prints how long it took ("N ms", or "killed")
#   ctl.sh pid NAME            the pid if NAME runs, else nothing (exit 1)
#   ctl.sh names               every NAME started in this directory, in start order
set -euo pipefail
RUN=${KVGATE_LOCAL_DIR:?KVGATE_LOCAL_DIR must name the cluster directory}
mkdir -p "$RUN/pids" "$RUN/cmds" "$RUN/logs"

running() { # pid → 0 if that pid is alive and is the process we started (not a reused pid)
  local pid=$1 name=$2
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ -r /proc/$pid/environ ]] || return 0
  tr "\\0" "\\n" 2>/dev/null < "/proc/$pid/environ" | grep -qx "KVGATE_LOCAL_NAME=$name"
}

pid_of() { local f="$RUN/pids/$1"; [[ -f "$f" ]] && cat "$f" || true; }

launch() { # NAME: run its remembered command
  local name=$1
  local -a cmd
  mapfile -d '' cmd < "$RUN/cmds/$name"
  # setsid: its own session, so a terminal's signals never reach it and kill -9 takes only it
  KVGATE_LOCAL_NAME=$name setsid "${cmd[@]}" >>"$RUN/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/pids/$name"
}

case "${1:-}" in
  start)
    name=$2; shift 2
    if running "$(pid_of "$name")" "$name"; then echo "ctl: $name already runs" >&2; exit 1; fi
    printf '%s\0' "$@" > "$RUN/cmds/$name"
    grep -qx "$name" "$RUN/names" 2>/dev/null || echo "$name" >> "$RUN/names"
    launch "$name"
    ;;
  revive)
    name=$2
    [[ -f "$RUN/cmds/$name" ]] || { echo "ctl: no command remembered for $name" >&2; exit 1; }
    if running "$(pid_of "$name")" "$name"; then echo "ctl: $name already runs" >&2; exit 1; fi
    echo "--- revived $(date -u +%FT%TZ)" >> "$RUN/logs/$name.log"
    launch "$name"
    ;;
  kill)
    name=$2; pid=$(pid_of "$name")
    if running "$pid" "$name"; then kill -9 "$pid"; fi
    for _ in $(seq 1 50); do running "$pid" "$name" || exit 0; sleep 0.1; done
    echo "ctl: $name ($pid) did not die" >&2; exit 1
    ;;
  stop)
    name=$2; pid=$(pid_of "$name")
    running "$pid" "$name" || { echo "not running"; exit 0; }
    kill -TERM "$pid"
    t0=$(date +%s%N)
    for _ in $(seq 1 100); do
      if ! running "$pid" "$name"; then echo "$(( ($(date +%s%N) - t0) / 1000000 )) ms"; exit 0; fi
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    echo "killed"
    ;;
  pid)
    name=$2; pid=$(pid_of "$name")
    running "$pid" "$name" && echo "$pid" || exit 1
    ;;
  names)
    cat "$RUN/names" 2>/dev/null || true
    ;;
  *)
    sed -n '2,10p' "$0" >&2; exit 2
    ;;
esac
