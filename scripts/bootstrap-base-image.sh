#!/usr/bin/env bash
# Bootstraps a stand-in for the Dockerfile's base image from Debian's packages, for machines
# that reach no image registry (this one): Debian bookworm (as python:3.11-slim-bookworm is)
# with its python3 (3.11), venv, `python` and CA certificates, tagged under the base's name so
# that the Dockerfile builds unchanged. Usage: bootstrap-base-image.sh IMAGE_NAME
#
# The stand-in trusts the CA certificates this machine trusts (/usr/local/share/ca-certificates,
# where an egress proxy's CA lives) and tells pip to use the system bundle, so that the build's
# `pip install` reaches PyPI the way this machine does. The real base image needs neither.
set -euo pipefail
image="$1"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
hooks=(
  --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"'
  --customize-hook='if [ -d /usr/local/share/ca-certificates ]; then cp -a /usr/local/share/ca-certificates/. "$1/usr/local/share/ca-certificates/"; fi'
  --customize-hook='chroot "$1" update-ca-certificates >/dev/null 2>&1'
  --customize-hook='printf "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n" > "$1/etc/pip.conf"'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*'
)
mmdebstrap --quiet --variant=minbase --format=tar \
  --include=python3,python3-venv,python-is-python3,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  "${hooks[@]}" bookworm "$work/rootfs.tar"
ctr="$(buildah from scratch)"
buildah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd python3 "$ctr"
buildah commit --quiet --format docker --rm "$ctr" "$image" >/dev/null
echo "bootstrapped $image from Debian bookworm" >&2
