#!/bin/sh
# What the official nginx image's entrypoint does before nginx starts: source the executable
# /docker-entrypoint.d/*.envsh in order (15-local-resolvers.envsh is its own, for
# NGINX_ENTRYPOINT_LOCAL_RESOLVERS), then render /etc/nginx/templates/*.template with envsubst,
# substituting only variables the environment defines.
set -e
if [ -n "${NGINX_ENTRYPOINT_LOCAL_RESOLVERS:-}" ]; then
  NGINX_LOCAL_RESOLVERS=$(awk 'BEGIN{ORS=" "} $1=="nameserver" {print $2}' /etc/resolv.conf)
  export NGINX_LOCAL_RESOLVERS
fi
for script in $(find /docker-entrypoint.d/ -follow -type f -name '*.envsh' 2>/dev/null | sort -V); do
  if [ -x "$script" ]; then echo "sourcing $script"; . "$script"; fi
done
out=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
defined=$(printf '${%s} ' $(awk 'END { for (name in ENVIRON) print name }' </dev/null))
for t in /etc/nginx/templates/*.template; do
  [ -f "$t" ] || continue
  envsubst "$defined" < "$t" > "$out/$(basename "$t" .template)"
  echo "rendered $t -> $out/$(basename "$t" .template)"
done
exec "$@"
