#!/usr/bin/env bash
# Fuzzing (cargo-fuzz / libFuzzer, nightly): installs cargo-fuzz if missing, builds every
# target under fuzz/ once, then runs each for FUZZ_SECONDS (default 60) starting from the
# committed seeds in fuzz/seeds/<target>. Exits non-zero if any target finds a crash; the
# input is saved under fuzz/artifacts/<target>/ (turn it into a unit test beside the code it
# broke, then fix it).
#
#   scripts/fuzz.sh                         every target, 60 s each (what CI runs)
#   scripts/fuzz.sh csr config              some targets
#   FUZZ_SECONDS=3600 scripts/fuzz.sh csr   a longer run; the corpus it grows is kept in
#                                           fuzz/corpus/<target> (not committed) and reused
#   FUZZ_JOBS=2 FUZZ_SECONDS=0 scripts/fuzz.sh inbound
#                                           FUZZ_SECONDS=0: until a crash or Ctrl-C; FUZZ_JOBS
#                                           runs that many libFuzzer processes in parallel
#   FUZZ_SANITIZER=address scripts/fuzz.sh  with AddressSanitizer (slower build and runs)
#
# Reproduce a crash: cd fuzz && cargo +nightly fuzz run TARGET artifacts/TARGET/crash-...
# Targets: csr (the CA's CSR check, then signing), spiffe_id (IDs, trust domains, patterns),
# config (CA and sidecar TOML + validation), inbound (raw client bytes into the sidecar's
# real inbound TLS accept and policy path on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
# Our code forbids `unsafe` and cargo-fuzz does not instrument the C in aws-lc, so the
# default runs without a sanitizer: it builds and runs several times faster.
sanitizer=${FUZZ_SANITIZER:-none}
# Separate from the workspace's target dir: nightly, different flags, release profile.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/fuzz/target}

if ! cargo +"$toolchain" fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo +"$toolchain" install cargo-fuzz --locked
fi

cd fuzz
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +"$toolchain" fuzz list)
fi
start=$SECONDS
# `fuzz build` builds one target or all of them.
if [ $# -gt 0 ]; then
  for t in "${targets[@]}"; do cargo +"$toolchain" fuzz build --sanitizer "$sanitizer" "$t"; done
else
  cargo +"$toolchain" fuzz build --sanitizer "$sanitizer"
fi
echo "fuzz: built in $((SECONDS - start)) s" >&2
parallel=()
if [ "$jobs" -gt 1 ]; then
  parallel=(-jobs="$jobs" -workers="$jobs")
fi

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${seconds} s" >&2
  t0=$SECONDS
  # -timeout: one input may take at most 20 s (inbound waits for a 1.5 s handshake timeout);
  # -rss_limit_mb: far above any target's steady state, so a leak shows as a crash.
  if ! cargo +"$toolchain" fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
      "${parallel[@]}" >"corpus/$t.log" 2>&1; then
    failed+=("$t")
    tail -n 40 "corpus/$t.log" >&2
  fi
  grep -E '^stat::number_of_executed_units|^Done' "corpus/$t.log" | tail -n 2 >&2 || true
  echo "fuzz: $t finished in $((SECONDS - t0)) s" >&2
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no crash in ${targets[*]} (total $((SECONDS - start)) s)" >&2
