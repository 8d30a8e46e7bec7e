#!/usr/bin/env bash
# CI's container engine: podman (Debian's), driven directly and through Debian's docker-compose via podman's Docker
# API socket. Installs what is missing, makes containers start on these machines, and starts the API service.
# Prints the DOCKER_HOST to export for docker-compose.
set -euo pipefail

missing=()
for tool in podman:podman debootstrap:debootstrap docker-compose:docker-compose curl:curl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "+ apt-get install ${missing[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

# These machines mount cgroups v1 and v2 side by side ("hybrid"), which crun refuses: use runc. And runc cannot raise
# RLIMIT_NOFILE/NPROC to podman's defaults here: keep the caller's limits.
conf=/etc/containers/containers.conf
if ! grep -qs '^# cliplabel-ci$' "$conf"; then
  echo "+ $conf: runtime = runc, default_ulimits = []" >&2
  mkdir -p /etc/containers
  [ -f "$conf" ] && cp "$conf" "$conf.before-cliplabel-ci"
  printf '# cliplabel-ci\n[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' > "$conf"
fi

# Docker's API for docker-compose; podman has no daemon, so `podman system service` serves it (no timeout).
sock=/run/podman/podman.sock
if ! curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  mkdir -p /run/podman
  setsid podman system service --time=0 "unix://$sock" >/tmp/podman-service.log 2>&1 < /dev/null &
  echo $! > /run/podman/service.pid
  for _ in $(seq 100); do curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS --unix-socket "$sock" http://d/_ping >/dev/null || { cat /tmp/podman-service.log >&2; exit 1; }
fi
echo "unix://$sock"
