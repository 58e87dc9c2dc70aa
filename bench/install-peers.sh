#!/usr/bin/env bash
# Installs the peer proxies `trellis-bench proxy` compares Trellis with, from Debian's
# packages: stunnel4, nginx with its stream module, haproxy. Bench only, never the tests.
# A no-op where they are present.
set -euo pipefail
missing=()
command -v stunnel4 >/dev/null 2>&1 || command -v stunnel >/dev/null 2>&1 || missing+=(stunnel4)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
# The stream module is a separate package on Debian (a dynamic module nginx loads).
ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1 || missing+=(libnginx-mod-stream)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -q
  # Debian starts services on install; the bench runs its own instances, so keep them off
  # (unless the machine already has a policy, which is then left as it is).
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
