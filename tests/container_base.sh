#!/usr/bin/env bash
# Build a Debian bookworm base image with debootstrap and tag it as the Dockerfile's default
# BASE_IMAGE, for machines that reach Debian's mirror and PyPI but no container registry.
#
#   tests/container_base.sh [TAG]        (default: python:3.11-slim-bookworm)
#
# The image holds python3, python3-venv, python3-pip and ca-certificates, plus the host's extra
# CA certificates from /usr/local/share/ca-certificates (a TLS-inspecting proxy's: without them
# pip inside `docker build` cannot reach PyPI). It does nothing when TAG already exists.
# Needs root, debootstrap and a running Docker engine. Env: DOCKER (client, default
# /usr/bin/docker), DEBIAN_MIRROR (default: the host's apt sources, else deb.debian.org).
set -euo pipefail

TAG=${1:-python:3.11-slim-bookworm}
DOCKER=${DOCKER:-/usr/bin/docker}

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "container_base: $TAG exists"
  exit 0
fi

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # deb822 (URIs: …) or one-line (deb URL bookworm main) sources; the first plain Debian one.
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
      /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | grep -v '^[[:space:]]*#' \
    | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /tmp/bidsapp-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "container_base: debootstrap bookworm from $mirror"
debootstrap --variant=minbase \
  --include=ca-certificates,python3,python3-venv,python3-pip \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -n 30 "$root.log"; exit 1; }
rm -f "$root.log"

# The host's extra CAs, so TLS through an inspecting proxy verifies in the build.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
fi

# Trim what an image does not need: apt lists and caches, docs, man pages, locales.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +

tar -C "$root" -c . | "$DOCKER" import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$TAG" >/dev/null
echo "container_base: imported $TAG"
