#!/usr/bin/env bash
# Integration tests start their own nats-server; make sure the binary is there (Debian package, 2.9+).
set -euo pipefail
if command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ]; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "nats-server is required for the integration tests: apt-get install -y nats-server (or put it on PATH)" >&2
  exit 1
fi
echo "installing nats-server (apt-get)…" >&2
apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
