#!/usr/bin/env bash
# The local stack: a Kafka-API broker (Tansu, durable sqlite storage), the schema registry, an
# SMTP catcher (maildev), one PostgreSQL database per service, and the four services, each as its
# own process. Usage:
#   deploy/local/stack.sh demo     up, then push orders through every saga branch and print them
#   deploy/local/stack.sh up       start whatever is not running yet (idempotent)
#   deploy/local/stack.sh infra    start only broker, registry and SMTP catcher (what tests need)
#   deploy/local/stack.sh down     stop everything this script started
#   deploy/local/stack.sh status   show what is running
# Logs: .local/logs/<component>.log. State: .local/data. Process ids: .local/pids.
# Settings come from deploy/local/stack.env, overridable by environment variables.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/local/stack.env
source "$ROOT/deploy/local/stack.env"
cd "$ROOT"

STATE="$ROOT/.local"
LOGS="$STATE/logs"
PIDS="$STATE/pids"
DATA="$STATE/data"
TANSU_BIN="$SAGA_CACHE_DIR/tansu-$TANSU_VERSION/bin/tansu"
MAILDEV_BIN="$SAGA_CACHE_DIR/maildev-$MAILDEV_VERSION/node_modules/.bin/maildev"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/debug"

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }
warn() { printf '\033[33mWARNING: %s\033[0m\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for_port() { # host port name seconds
  local deadline=$((SECONDS + $4))
  until port_open "$1" "$2"; do
    ((SECONDS < deadline)) || fail "$3 did not start listening on $1:$2 within $4 s; see $LOGS/$3.log"
    sleep 0.3
  done
}

wait_for_http() { # url name seconds
  local deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || fail "$2 did not become ready ($1) within $3 s; see $LOGS/$2.log"
    sleep 0.5
  done
}

running() { # name -> true if its recorded process is alive
  [[ -f "$PIDS/$1.pid" ]] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null
}

start_process() { # name command...
  local name=$1; shift
  mkdir -p "$LOGS" "$PIDS"
  nohup "$@" >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}

check_prerequisites() {
  step "Checking prerequisites"
  command -v cargo >/dev/null || fail "cargo not found. Install Rust from https://rustup.rs and retry."
  command -v curl >/dev/null || fail "curl not found. Install it (apt-get install curl) and retry."
  port_open "$PG_HOST" "$PG_PORT" || fail "PostgreSQL is not reachable at $PG_HOST:$PG_PORT. Start it (e.g. pg_ctlcluster 15 main start) or set PG_HOST/PG_PORT in deploy/local/stack.env."
  info "cargo, curl and PostgreSQL at $PG_HOST:$PG_PORT found"
}

install_tansu() {
  if [[ -x "$TANSU_BIN" ]]; then return; fi
  step "Building the Tansu broker $TANSU_VERSION into $SAGA_CACHE_DIR (once; about 12-15 minutes on 2 cores)"
  mkdir -p "$SAGA_CACHE_DIR"
  cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features --features libsql \
    --root "$SAGA_CACHE_DIR/tansu-$TANSU_VERSION" >"$SAGA_CACHE_DIR/tansu-build.log" 2>&1 \
    || fail "building Tansu failed; see $SAGA_CACHE_DIR/tansu-build.log (it needs crates.io access and a C compiler)"
}

install_maildev() {
  if [[ -x "$MAILDEV_BIN" ]]; then return; fi
  command -v npm >/dev/null || fail "npm not found; the local SMTP catcher (maildev) needs Node.js and npm: apt-get install nodejs npm"
  step "Installing maildev $MAILDEV_VERSION (SMTP catcher) into $SAGA_CACHE_DIR (once; under a minute)"
  mkdir -p "$SAGA_CACHE_DIR/maildev-$MAILDEV_VERSION"
  npm install --prefix "$SAGA_CACHE_DIR/maildev-$MAILDEV_VERSION" --no-audit --no-fund "maildev@$MAILDEV_VERSION" \
    >"$SAGA_CACHE_DIR/maildev-install.log" 2>&1 \
    || fail "installing maildev failed; see $SAGA_CACHE_DIR/maildev-install.log"
}

build_platform() {
  step "Building the platform binaries (first build about 5 minutes on 2 cores)"
  (cd "$ROOT" && cargo build --bins --quiet) || fail "cargo build failed; see the compiler output above"
}

start_broker() {
  if port_open 127.0.0.1 "$BROKER_PORT"; then info "broker already listening on 127.0.0.1:$BROKER_PORT"; return; fi
  step "Starting the broker on 127.0.0.1:$BROKER_PORT (durable sqlite storage in .local/data/broker.db)"
  mkdir -p "$DATA"
  start_process broker "$TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
    --storage-engine "sqlite://.local/data/broker.db" # the broker resolves this path from the working directory
  wait_for_port 127.0.0.1 "$BROKER_PORT" broker 30
  index_broker_headers
}

# Tansu 0.6.0 looks up each fetched record's headers in a table without an index on them, so
# fetching slows down with every record stored (docs/local-stack.md). Adding the index changes
# no data; it needs python3's sqlite3 module, and the stack works without it, only slower.
index_broker_headers() {
  command -v python3 >/dev/null || { warn "python3 not found; the broker's record headers stay unindexed"; return 0; }
  python3 - "$DATA/broker.db" <<'PY' || warn "could not index the broker's record headers"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
if db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'header'").fetchone()[0]:
    db.execute("CREATE INDEX IF NOT EXISTS header_by_record ON header (topition, offset_id)")
db.commit()
PY
}

start_registry() {
  if port_open 127.0.0.1 "$REGISTRY_PORT"; then info "schema registry already listening on 127.0.0.1:$REGISTRY_PORT"; return; fi
  step "Starting the schema registry on 127.0.0.1:$REGISTRY_PORT (schemas kept in the _schemas topic)"
  REGISTRY_LISTEN="127.0.0.1:$REGISTRY_PORT" start_process schema-registry "$BIN/schema-registry"
  wait_for_http "http://127.0.0.1:$REGISTRY_PORT/subjects" schema-registry 60
}

start_maildev() {
  if port_open 127.0.0.1 "$SMTP_PORT"; then info "SMTP catcher already listening on 127.0.0.1:$SMTP_PORT"; return; fi
  step "Starting maildev: SMTP on 127.0.0.1:$SMTP_PORT, inbox at http://127.0.0.1:$MAILDEV_WEB_PORT"
  start_process maildev "$MAILDEV_BIN" --smtp "$SMTP_PORT" --web "$MAILDEV_WEB_PORT" --ip 127.0.0.1
  wait_for_http "http://127.0.0.1:$MAILDEV_WEB_PORT/email" maildev 30
}

prepare_topics_databases_schemas() {
  step "Creating topics ($TOPIC_PARTITIONS partitions, unlimited retention), databases and schemas"
  "$BIN/sagactl" topics create
  "$BIN/sagactl" databases create
  "$BIN/sagactl" schemas register
}

start_services() {
  local name port database
  for entry in $SERVICES; do
    name=${entry%%:*}; port=${entry##*:}
    if running "$name" || port_open 127.0.0.1 "$port"; then info "$name already running on port $port"; continue; fi
    step "Starting $name on 127.0.0.1:$port"
    database="saga_${name%-service}"
    HTTP_LISTEN="127.0.0.1:$port" DATABASE_URL="$POSTGRES_SERVER_URL/$database" start_process "$name" "$BIN/$name"
  done
  for entry in $SERVICES; do
    name=${entry%%:*}; port=${entry##*:}
    wait_for_http "http://127.0.0.1:$port/health/ready" "$name" 90
    info "$name ready: http://127.0.0.1:$port/health/ready"
  done
}

up_infra() {
  check_prerequisites
  install_tansu
  install_maildev
  build_platform
  start_broker
  start_registry
  start_maildev
  prepare_topics_databases_schemas
}

stop_all() {
  step "Stopping the local stack"
  local names=()
  for entry in $SERVICES; do names+=("${entry%%:*}"); done
  names+=(maildev schema-registry broker)
  for name in "${names[@]}"; do
    if running "$name"; then
      kill -TERM "$(cat "$PIDS/$name.pid")" 2>/dev/null || true
      # graceful shutdown finishes in-flight work; give it up to 30 s before killing
      for _ in $(seq 1 150); do running "$name" || break; sleep 0.2; done
      running "$name" && kill -KILL "$(cat "$PIDS/$name.pid")" 2>/dev/null || true
      info "stopped $name"
    fi
    rm -f "$PIDS/$name.pid"
  done
}

show_status() {
  local name port
  for entry in broker:$BROKER_PORT schema-registry:$REGISTRY_PORT maildev:$SMTP_PORT $SERVICES; do
    name=${entry%%:*}; port=${entry##*:}
    if port_open 127.0.0.1 "$port"; then echo "up    $name (127.0.0.1:$port)"; else echo "down  $name (127.0.0.1:$port)"; fi
  done
}

case "${1:-up}" in
  up) up_infra; start_services; step "The platform is up. Logs: $LOGS" ;;
  demo)
    up_infra; start_services
    step "Pushing orders through every branch of the saga"
    "$BIN/sagactl" demo
    step "The platform is up. Logs: $LOGS; stop it with deploy/local/stack.sh down" ;;
  infra) up_infra; step "Broker, registry and SMTP catcher are up. Logs: $LOGS" ;;
  down) stop_all ;;
  status) show_status ;;
  *) echo "usage: $0 demo|up|infra|down|status" >&2; exit 2 ;;
esac
