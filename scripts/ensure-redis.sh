#!/usr/bin/env bash
# Makes sure a redis-server binary is on this machine, for the tests that run a real Redis.
# CI machines start clean: install Debian's package when it is missing (we run as root there).
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "redis-server is missing; install Debian's redis-server package (needs root)." >&2
  exit 1
fi
echo "Installing redis-server from Debian's packages (first run only)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# The package starts a system-wide server on 6379; the tests start their own on free ports.
(service redis-server stop || true) >/dev/null 2>&1
command -v redis-server >/dev/null
