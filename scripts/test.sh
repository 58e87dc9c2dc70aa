#!/usr/bin/env bash
# The whole test suite: unit, integration and end-to-end tests (which run the real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
# End-to-end tests spawn the built binaries. Every binary package has an integration test,
# so `cargo test` builds all the binaries before it runs any test, with the same feature
# set as the tests (a separate `cargo build --bins` would compile much of the tree twice).
cargo test --workspace --no-fail-fast "$@"
