#!/usr/bin/env bash
# The Letta conformance harness of this repository (tests/run-all.sh runs it).
# Start a REAL Letta server (letta==0.16.8, the last PyPI release that ships the server)
# fully offline on loopback:
#   * PostgreSQL 16.2 + pgvector 0.6.2 from the PyPI wheel `pgserver==0.1.4` (Letta >= 0.12
#     no longer runs on SQLite; Debian bookworm has no pgvector package)
#   * schema via `alembic upgrade head` from the letta-0.16.8 sdist (the wheel has no migrations)
#   * fake_llm.py: deterministic OpenAI-compatible stub (stdlib only) as the only LLM
#
# Usage:  ./start.sh          # install if needed, start everything, wait for health
#         ./start.sh stop     # stop letta, fake LLM and postgres (by recorded PIDs)
#         ./start.sh status
# Env knobs (defaults): LETTA_VENV=/tmp/letta-venv  LETTA_STATE=/tmp/letta-real
#   LETTA_PORT=8283  LETTA_PG_PORT=5433  FAKE_LLM_PORT=8399  FAKE_LLM_MODEL=fake-echo-1
# Needs: python3.11 + venv, network access to PyPI only on first run. Binds 127.0.0.1 only.
# When it cannot have them it says so in one line and exits 3 (nothing started), so the
# test command can report the suite as not run instead of failing on a missing file.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${LETTA_VENV:-/tmp/letta-venv}"
STATE="${LETTA_STATE:-/tmp/letta-real}"
LETTA_PORT="${LETTA_PORT:-8283}"
PG_PORT="${LETTA_PG_PORT:-5433}"
FAKE_LLM_PORT="${FAKE_LLM_PORT:-8399}"
FAKE_LLM_MODEL="${FAKE_LLM_MODEL:-fake-echo-1}"
LETTA_VERSION=0.16.8
PY="${PYTHON:-python3}"
PG_URI="postgresql://letta:letta@127.0.0.1:${PG_PORT}/letta"

log() { printf '[start.sh] %s\n' "$*" >&2; }
pgbin() { echo "$VENV/lib/python3.11/site-packages/pgserver/pginstall/bin"; }
pidfile() { echo "$STATE/$1.pid"; }
alive() { [ -f "$(pidfile "$1")" ] && kill -0 "$(cat "$(pidfile "$1")")" 2>/dev/null; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u lettapg -- "$@"; else "$@"; fi; }

stop_all() {
  for name in letta fake_llm; do
    if alive "$name"; then
      pid="$(cat "$(pidfile "$name")")"; log "stopping $name (pid $pid)"; kill "$pid" || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
    fi
    rm -f "$(pidfile "$name")"
  done
  if [ -f "$STATE/pg/data/postmaster.pid" ]; then
    log "stopping postgres"; as_pg "$(pgbin)/pg_ctl" -D "$STATE/pg/data" -m fast -w stop || true
  fi
}

case "${1:-start}" in
  stop) stop_all; exit 0 ;;
  status)
    for n in fake_llm letta; do alive "$n" && echo "$n up (pid $(cat "$(pidfile "$n")"))" || echo "$n down"; done
    curl -s "http://127.0.0.1:${LETTA_PORT}/v1/health/" || true; echo; exit 0 ;;
  start) ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

mkdir -p "$STATE"

# 0. what the first run needs ---------------------------------------------------------------
unavailable() { printf 'letta harness unavailable: %s\n' "$*" >&2; exit 3; }
if [ ! -x "$VENV/bin/letta" ]; then
  command -v "$PY" >/dev/null 2>&1 || unavailable "no $PY (install python3.11 and python3-venv)"
  [ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = 3.11 ] \
    || unavailable "$PY is not Python 3.11 (set PYTHON to a python3.11)"
  "$PY" -c 'import venv, ensurepip' 2>/dev/null || unavailable "$PY has no venv module (install python3-venv)"
  command -v curl >/dev/null 2>&1 || unavailable "no curl (install curl)"
fi

# 1. venv with pinned packages ------------------------------------------------------------
if [ ! -x "$VENV/bin/letta" ] || ! "$VENV/bin/python" -c 'import letta, asyncpg, pg8000, pgserver' 2>/dev/null; then
  log "creating venv $VENV (first run: ~250 packages, ~1 GB)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # The letta sdist (step 2 needs it too) doubles as the probe of the package index.
  mkdir -p "$STATE/src"
  "$VENV/bin/pip" download -q --no-deps --no-binary :all: "letta==$LETTA_VERSION" -d "$STATE/src" \
    >/dev/null 2>&1 || unavailable "the package index cannot be reached to install letta==$LETTA_VERSION"
  "$VENV/bin/pip" install -q -U pip uv
  "$VENV/bin/uv" pip install --python "$VENV/bin/python" -r "$HERE/requirements.lock.txt"
fi

# 2. letta sdist (alembic migrations live only there) -------------------------------------
SRC="$STATE/src/letta-$LETTA_VERSION"
if [ ! -f "$SRC/alembic.ini" ]; then
  log "fetching letta==$LETTA_VERSION sdist for alembic migrations"
  mkdir -p "$STATE/src"
  [ -f "$STATE/src/letta-$LETTA_VERSION.tar.gz" ] || "$VENV/bin/pip" download -q --no-deps --no-binary :all: "letta==$LETTA_VERSION" -d "$STATE/src"
  tar xzf "$STATE/src/letta-$LETTA_VERSION.tar.gz" -C "$STATE/src"
fi

# 3. postgres + pgvector (pgserver wheel), loopback only, trust auth -----------------------
PGB="$(pgbin)"
if [ "$(id -u)" = 0 ] && ! id lettapg >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin lettapg
fi
if [ ! -f "$STATE/pg/data/PG_VERSION" ]; then
  log "initdb $STATE/pg/data"
  rm -rf "$STATE/pg"; mkdir -p "$STATE/pg/data" "$STATE/pg/sock"
  [ "$(id -u)" = 0 ] && chown -R lettapg: "$STATE/pg"
  chmod 700 "$STATE/pg/data"
  as_pg "$PGB/initdb" -D "$STATE/pg/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$STATE/pg/initdb.log" 2>&1
fi
if ! "$PGB/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
  log "starting postgres on 127.0.0.1:$PG_PORT"
  as_pg "$PGB/pg_ctl" -D "$STATE/pg/data" -l "$STATE/pg/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $STATE/pg/sock" start >/dev/null
fi
PSQL=("$PGB/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
if [ "$("${PSQL[@]}" -d postgres -c "select 1 from pg_roles where rolname='letta'")" != 1 ]; then
  "${PSQL[@]}" -d postgres -c "CREATE ROLE letta LOGIN PASSWORD 'letta'" -c "CREATE DATABASE letta OWNER letta"
fi
"${PSQL[@]}" -d letta -c "CREATE EXTENSION IF NOT EXISTS vector"

# 4. schema migrations (idempotent) ---------------------------------------------------------
export HOME_LETTA="$STATE/home"; mkdir -p "$HOME_LETTA"
log "alembic upgrade head"
(cd "$SRC" && HOME="$HOME_LETTA" LETTA_PG_URI="$PG_URI" "$VENV/bin/alembic" upgrade head >"$STATE/alembic.log" 2>&1) \
  || { tail -20 "$STATE/alembic.log"; exit 1; }

# 5. fake LLM --------------------------------------------------------------------------------
if ! alive fake_llm; then
  log "starting fake LLM on 127.0.0.1:$FAKE_LLM_PORT"
  FAKE_LLM_HOST=127.0.0.1 FAKE_LLM_PORT="$FAKE_LLM_PORT" FAKE_LLM_MODEL="$FAKE_LLM_MODEL" \
    FAKE_LLM_LOG="$STATE/fake_llm.jsonl" nohup "$PY" "$HERE/fake_llm.py" >"$STATE/fake_llm.out" 2>&1 &
  echo $! >"$(pidfile fake_llm)"
  for _ in $(seq 1 50); do curl -sf -o /dev/null "http://127.0.0.1:$FAKE_LLM_PORT/health" && break; sleep 0.1; done
fi

# 6. letta server ------------------------------------------------------------------------------
if ! alive letta; then
  log "starting letta server $LETTA_VERSION on 127.0.0.1:$LETTA_PORT"
  T0=$(date +%s.%N)
  # Run from the state dir: the server writes openapi_letta.json into its working directory.
  (cd "$STATE" && HOME="$HOME_LETTA" LETTA_PG_URI="$PG_URI" \
    OPENAI_API_KEY=dummy OPENAI_BASE_URL="http://127.0.0.1:$FAKE_LLM_PORT/v1" \
    PYTHONWARNINGS=ignore exec nohup "$VENV/bin/letta" server --host 127.0.0.1 --port "$LETTA_PORT" \
    >"$STATE/letta.out" 2>&1) &
  echo $! >"$(pidfile letta)"
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "http://127.0.0.1:$LETTA_PORT/v1/health/" && break
    alive letta || { tail -30 "$STATE/letta.out"; log "letta died"; exit 1; }
    sleep 0.1
  done
  curl -sf -o /dev/null "http://127.0.0.1:$LETTA_PORT/v1/health/" || { log "letta not healthy after 60s"; exit 1; }
  log "letta healthy after $(awk "BEGIN{print $(date +%s.%N)-$T0}")s"
fi
curl -s "http://127.0.0.1:$LETTA_PORT/v1/health/"; echo
log "model handle: openai-proxy/$FAKE_LLM_MODEL   embedding: openai/text-embedding-3-small"
log "pids: letta=$(cat "$(pidfile letta)") fake_llm=$(cat "$(pidfile fake_llm)") postgres=$(head -1 "$STATE/pg/data/postmaster.pid")"
