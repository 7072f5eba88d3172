#!/usr/bin/env bash
# One command: build in release, make sure PostgreSQL runs and nginx is
# installed (the pass-through comparison), run the benchmark, print the table.
# The table is also written to bench/results/<date>.md.
#   bench/run.sh            # full run, about 8 minutes after the build
#   bench/run.sh --quick    # shorter phases
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx
fi
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi

# The pooled phase puts Debian's PgBouncer in front of PostgreSQL.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer
fi

# The shared-limits phase counts in the machine's Redis.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null 2>&1 || {
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
  }
  redis-server --daemonize yes --save '' --appendonly no
fi

cargo build --release --locked --features bench --bin eai-gateway --example bench --example pingora_floor --example embed
# 10,000 chats in flight need 10,000+ sockets in the load generator and the gateway.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/examples/bench "$@"
