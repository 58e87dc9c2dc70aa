#!/usr/bin/env bash
# The whole test suite: unit, integration and end-to-end tests (which run the real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
# End-to-end tests spawn the built binaries; build them first so `cargo test` finds them.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast "$@"
