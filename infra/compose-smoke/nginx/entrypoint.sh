#!/bin/sh
# What the official nginx image's entrypoint does before nginx starts, as far as
# docker-compose.yml uses it: source the executable /docker-entrypoint.d/*.envsh in order, then
# render /etc/nginx/templates/*.template with envsubst, substituting only variables the
# environment defines.
set -e
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
