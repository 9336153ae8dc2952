#!/usr/bin/env bash
# Makes sure Debian packages are on this machine, installing the missing ones with apt (CI
# machines start clean; we run as root there). One place for what redis, prometheus, buildah
# and the Go toolchain all need.
#
#   scripts/apt-ensure.sh [--stop SERVICE]... [--as NAME] [--with-recommends] NEED...
#
# A NEED is `command:package` (present when the command is on PATH, so a binary installed some
# other way counts too) or a bare `package` (present when dpkg has it installed). `--stop` stops
# a service the package started on install: the tests start their own servers on free ports.
# `--as` names the caller in messages. `--with-recommends` installs recommended packages too
# (the Go toolchain wants its C compiler for cgo).
set -euo pipefail
who="apt-ensure"
stop=()
recommends=(--no-install-recommends)
while [ $# -gt 0 ]; do
  case "$1" in
    --stop) stop+=("$2"); shift 2 ;;
    --as) who="$2"; shift 2 ;;
    --with-recommends) recommends=(); shift ;;
    *) break ;;
  esac
done
missing=()
for need in "$@"; do
  if [[ "$need" == *:* ]]; then
    command -v "${need%%:*}" >/dev/null 2>&1 || missing+=("${need#*:}")
  else
    dpkg-query -W -f='${Status}' "$need" 2>/dev/null | grep -q "install ok installed" || missing+=("$need")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
# A package can be named by two needs (prometheus and promtool): install it once.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" != "0" ]; then
  echo "$who: install Debian's ${missing[*]} (needs root)" >&2
  exit 1
fi
echo "$who: installing ${missing[*]} from Debian's packages (first run only)..." >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq "${recommends[@]}" "${missing[@]}" >/dev/null
for s in "${stop[@]}"; do
  (service "$s" stop || true) >/dev/null 2>&1
done
