#!/usr/bin/env bash
# The whole test suite: unit, integration and end-to-end tests (which run the real binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
# End-to-end tests spawn the built binaries. Every binary package has an integration test,
# so `cargo test` builds all the binaries before it runs any test, with the same feature
# set as the tests (a separate `cargo build --bins` would compile much of the tree twice).
# A binary package without one would be missing on a fresh machine, so refuse that early.
for manifest in */Cargo.toml; do
    [ "$manifest" = fuzz/Cargo.toml ] && continue # its own workspace, built by fuzz.sh
    if grep -q '^\[\[bin\]\]' "$manifest" && [ ! -d "$(dirname "$manifest")/tests" ]; then
        echo "$(dirname "$manifest") builds a binary but has no tests/: cargo test would not build it" >&2
        exit 1
    fi
done
cargo test --workspace --no-fail-fast "$@"
