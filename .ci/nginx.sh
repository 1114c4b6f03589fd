#!/usr/bin/env bash
# The serving gateway's tests run Debian's nginx with its JavaScript module (mlpipe.serving.gateway,
# gateway_js) and its stream module (the TCP front's per-address connection cap); install
# nginx-light, libnginx-mod-http-js and libnginx-mod-stream when missing (CI runs as root).
# Debian's package may try to start the system service; policy-rc.d 101 keeps it from doing so,
# the tests start their own nginx.
set -euo pipefail
if { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } \
  && [ -f /usr/lib/nginx/modules/ngx_http_js_module.so ] \
  && [ -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "nginx: the serving gateway needs Debian's nginx-light, libnginx-mod-http-js and" \
    "libnginx-mod-stream; run 'sudo apt-get install -y nginx-light libnginx-mod-http-js" \
    "libnginx-mod-stream' (or serve with gateway=off)" >&2
  exit 1
fi
echo "nginx: installing Debian's nginx-light + libnginx-mod-http-js + libnginx-mod-stream" >&2
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
created=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx-light libnginx-mod-http-js \
  libnginx-mod-stream >/dev/null
if [ "$created" = 1 ]; then rm -f "$policy"; fi
