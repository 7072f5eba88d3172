#!/usr/bin/env bash
# The library as an embedder gets it: a new crate that depends on this one
# by path, offline, with `examples/embed.rs` as its main.rs. It must build
# on the public API alone (the `internals` feature off) and without a
# warning from this crate.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
cargo new --quiet --vcs none host
cd host
cargo add --quiet --offline --path "$root"
cargo add --quiet --offline pingora@0.9 --no-default-features --features proxy
cargo add --quiet --offline pingora-prometheus@0.9 async-trait tokio
cp "$root/examples/embed.rs" src/main.rs
# The example's allocator switch, declared (and left off) as an embedder
# who copies it would: an undeclared feature is a compiler warning.
printf '\n[features]\njemalloc = []\n' >> Cargo.toml
# Its own target dir, kept between runs: a check of the whole tree costs
# minutes the first time only.
CARGO_TARGET_DIR="$root/target/embed-host" cargo check --offline --color never 2>&1 | tee build.log
if grep -A3 '^warning' build.log | grep -q "$root"; then
  echo "embed-host: the library warns when built as a dependency" >&2
  exit 1
fi
echo "embed-host: ok"
