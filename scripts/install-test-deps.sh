#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo: openssl (interoperability tests) and curl.
# A fresh Debian-based machine may lack them; this is a no-op where they are present.
set -euo pipefail
missing=()
for tool in openssl curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
