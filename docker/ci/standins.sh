#!/usr/bin/env bash
# Stand-ins for the images CI cannot pull (no image registry is reachable from these machines), tagged with the names
# docker/Dockerfile and docker/docker-compose.yml use:
#   docker.io/library/python:3.11-slim          Debian bookworm (debootstrap) with python3 and pip; pip is configured
#                                               with this machine's CA bundle and local wheel indexes (/opt/wheels,
#                                               /opt/pypi*, mounted into builds with `podman build -v`)
#   docker.io/heartexlabs/label-studio:1.23.2   label-studio==1.23.2 from PyPI on that base
#   docker.io/library/redis:7.4-alpine          Debian's redis-server on that base
# Each is kept as localhost/cliplabel-ci/NAME:KEY, KEY a hash of what it is built from, and reused while the key
# matches (podman's image store is the cache between CI runs).
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"

# Read-only mounts of the host's local wheel indexes for RUN steps (those that exist here).
MOUNTS=()
for dir in /opt/wheels /opt/pypi /opt/pypi-more; do
  [ -d "$dir" ] && MOUNTS+=(-v "$dir:$dir:ro")
done
export MOUNTS

ca=/etc/ssl/certs/ca-certificates.crt
base_key=$( { sed -n '/^build_base()/,/^}/p' "$self"; cat "$ca"; } | sha256sum | cut -c1-16)

build_base() {
  local root; root=$(mktemp -d /var/tmp/cliplabel-base.XXXXXX)
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian >/dev/null
  # Like the official image: pip may install into the system Python, `python` exists.
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf python3 "$root/usr/bin/python"
  # PyPI is reached through a TLS-intercepting proxy here: the host's bundle holds its CA.
  cp "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
  cat > "$root/etc/pip.conf" <<PIP
[global]
cert = /etc/ssl/certs/ca-certificates.crt
find-links = /opt/wheels
extra-index-url = file:///opt/pypi/simple file:///opt/pypi-more/simple
disable-pip-version-check = true
PIP
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
  tar -C "$root" -c . | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$1" >/dev/null
  rm -rf "$root"
}

# ensure NAME TAG KEY BUILD-COMMAND...: reuse localhost/cliplabel-ci/NAME:KEY or build it, then tag it TAG.
ensure() {
  local name=$1 tag=$2 key=$3; shift 3
  local cached="localhost/cliplabel-ci/$name:$key" started
  started=$(date +%s)
  if podman image exists "$cached"; then
    echo "standins: $name cached ($cached)"
  else
    "$@" "$cached"
    echo "standins: $name built in $(( $(date +%s) - started ))s ($cached)"
  fi
  podman tag "$cached" "$tag"
}

containerfile_build() {  # FILE TAG
  podman build -q --pull=never --format docker "${MOUNTS[@]}" -f "$1" -t "$2" . >/dev/null
}

ensure base docker.io/library/python:3.11-slim "$base_key" build_base
ls_key=$( { echo "$base_key"; cat label-studio.Containerfile; } | sha256sum | cut -c1-16)
ensure label-studio docker.io/heartexlabs/label-studio:1.23.2 "$ls_key" containerfile_build label-studio.Containerfile
redis_key=$( { echo "$base_key"; cat redis.Containerfile redis-entrypoint.sh; } | sha256sum | cut -c1-16)
ensure redis docker.io/library/redis:7.4-alpine "$redis_key" containerfile_build redis.Containerfile
