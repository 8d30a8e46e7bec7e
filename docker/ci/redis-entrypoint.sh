#!/bin/sh
# What the official redis image's entrypoint does, for the stand-in: options alone mean redis-server; drop root to
# the redis user after taking ownership of /data; without a config file, turn protected mode off (a container is
# reached from other addresses, and protected mode would answer every such client DENIED).
set -e
case "$1" in -*) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi
if [ "$1" = redis-server ] && [ ! -f "${2:-}" ]; then
  shift
  set -- redis-server --protected-mode no "$@"
fi
exec "$@"
