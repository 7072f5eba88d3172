#!/usr/bin/env bash
# The whole test-suite: the fast suite (`cargo test`: simulator, PostgreSQL,
# SQLite, real HTTP on loopback), the library built as a dependency of a new
# crate, and the conformance suite of the letta
# dialect against the real Letta server from ../shared/letta-real.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --locked

# The library as an embedder's path dependency (public API only, no warnings).
tests/embed-host.sh

letta="$(cd .. && pwd)/shared/letta-real/start.sh"
# Installs itself on the first run (a venv under /tmp) and is idempotent.
bash "$letta"
trap 'bash "$letta" stop' EXIT
AGENT_SERVICE_DIALECT=letta cargo test --locked --test letta_conformance -- --ignored
