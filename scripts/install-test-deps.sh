#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo: openssl (interoperability tests), curl, prlimit,
# kubectl (renders deploy/ with its built-in kustomize) and python3 for kubernetes-validate
# (validates the rendered manifests against the Kubernetes schemas; from PyPI, into a venv
# under target/ so nothing else on the machine changes).
# A fresh Debian-based machine may lack them; this is a no-op where they are present.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in openssl curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# Debian names the package after what it holds, not after the command. prlimit (a test
# starts trellis-ca with a small open-file limit) is in util-linux, present on most images.
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

venv=target/k8s-tools
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
