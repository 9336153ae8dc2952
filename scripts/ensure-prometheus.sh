#!/usr/bin/env bash
# Makes sure Debian's prometheus package (the server and promtool) is on this machine, for the
# alert-rule unit tests and the test that scrapes a gateway with a real Prometheus.
# CI machines start clean: install the package when it is missing (we run as root there).
set -euo pipefail
if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "prometheus/promtool are missing; install Debian's prometheus package (needs root)." >&2
  exit 1
fi
echo "Installing prometheus from Debian's packages (first run only)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package may start a system-wide server on 9090; the tests start their own on free ports.
(service prometheus stop || true) >/dev/null 2>&1
command -v promtool >/dev/null
