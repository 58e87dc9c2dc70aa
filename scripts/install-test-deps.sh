#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo: openssl (interoperability tests), curl,
# prlimit, kubectl (renders deploy/ with its built-in kustomize), python3 for kubernetes-validate
# (validates the rendered manifests against the Kubernetes schemas; from PyPI, into a venv
# under target/ so nothing else on the machine changes), a second venv with clients
# nobody here wrote: gRPC's C core (grpcio, as py-spiffe uses it) and the Prometheus text
# parser (prometheus-client), PyJWT and cryptography (an independent JOSE implementation
# that validates JWT-SVIDs and mints Kubernetes service-account tokens), and for the capture tests, which run pods as network
# namespaces: ip (iproute2), iptables and setpriv (util-linux); PostgreSQL, which the tests
# start themselves; and promtool (Debian's prometheus package), which checks and unit-tests
# the shipped alerting rules.
# A fresh Debian-based machine may lack them; this is a no-op where they are present.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in openssl curl iptables; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
# setpriv and prlimit (a test starts trellis-ca with a small open-file limit) are in
# util-linux, present on most images.
if ! command -v setpriv >/dev/null 2>&1 || ! command -v prlimit >/dev/null 2>&1; then
  missing+=(util-linux)
fi
# Debian names the package after what it holds, not after the command.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
# PostgreSQL (server tools in /usr/lib/postgresql/<version>/bin, psql in /usr/bin): the
# tests start their own cluster in a temp dir as the postgres user the package creates.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
  missing+=(postgresql)
fi
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing: prometheus (for promtool)" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  # The package would start a Prometheus server where an init system runs; only promtool
  # is wanted, so services are kept from starting while it installs (policy-rc.d exit
  # 101: "action forbidden"), unless the machine already has a policy of its own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus
fi

venv=target/k8s-tools
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi

pyvenv=target/py-tools
pins="grpcio==1.85.1 grpcio-tools==1.85.1 prometheus-client==0.26.0 PyJWT==2.15.1 cryptography==50.0.2"
if [ "$(cat "$pyvenv/pins" 2>/dev/null)" != "$pins" ]; then
  echo "installing $pins into $pyvenv" >&2
  rm -rf "$pyvenv"
  python3 -m venv "$pyvenv"
  # shellcheck disable=SC2086 # one argument per pin
  "$pyvenv/bin/pip" install --quiet --disable-pip-version-check $pins
  echo "$pins" >"$pyvenv/pins"
fi
