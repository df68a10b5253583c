#!/usr/bin/env bash
# The local stack: Apache Kafka in KRaft mode (one node, or three with KAFKA_NODES=3), the schema
# registry, an SMTP catcher (maildev), PostgreSQL with one database per service, the four
# services and the saga dashboard, each as its own process. Usage:
#   deploy/local/stack.sh demo     up, then push orders through every saga branch, print them and
#                                  the dashboard's address
#   deploy/local/stack.sh up       start whatever is not running yet (idempotent)
#   deploy/local/stack.sh infra    start only PostgreSQL, Kafka, registry and SMTP catcher (what tests need)
#   deploy/local/stack.sh down     stop everything this script started (PostgreSQL keeps running)
#   deploy/local/stack.sh status   show what is running, every Kafka node included
#   deploy/local/stack.sh replay-bench [sagactl replay-bench args]
#                                  infra, then measure replay: events/s per service (release build)
#   deploy/local/stack.sh bench [--quick] [--instances N]
#                                  the standard benchmark on release binaries: the machine's limits,
#                                  saturation, two open-loop rates, cost per saga; prints one table;
#                                  --instances runs N instances of every service (SERVICE_INSTANCES)
# Logs: .local/logs/<component>.log. State: .local/data. Process ids: .local/pids.
# Secrets the stack made up (an API key per scope, ORDER_API_KEY, READ_API_KEY and ADMIN_API_KEY;
# the registry's credentials, SCHEMA_REGISTRY_USER_INFO): .local/secrets.env (SAGA_SECRETS_FILE),
# which every process the stack starts reads; `source .local/secrets.env` gives them to yours.
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
SECRETS="$SAGA_SECRETS_FILE"
REGISTRY_USERS="$STATE/registry-users"
KAFKA_NODE="$ROOT/deploy/kafka/node.sh"
# A SASL_SSL cluster keeps its own data: its storage holds the SCRAM accounts it was formatted with.
KAFKA_DATA="$DATA/kafka"
[[ "$KAFKA_SECURITY" == sasl_ssl ]] && KAFKA_DATA="$DATA/kafka-sasl_ssl"
MAILDEV_BIN="$SAGA_CACHE_DIR/maildev-$MAILDEV_VERSION/node_modules/.bin/maildev"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# The build the stack builds and runs: debug (the default), or release (`bench` always uses it).
SAGA_PROFILE="${SAGA_PROFILE:-debug}"
[[ "$SAGA_PROFILE" == debug || "$SAGA_PROFILE" == release ]] || { echo "SAGA_PROFILE must be debug or release, not '$SAGA_PROFILE'" >&2; exit 2; }
BIN="$TARGET_DIR/$SAGA_PROFILE"

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
  command -v java >/dev/null || fail "java not found; Apache Kafka needs Java 17 or later (apt-get install openjdk-17-jre-headless)."
  command -v mvn >/dev/null || fail "mvn not found; Apache Kafka's jars are fetched with Maven (apt-get install maven)."
  info "cargo, curl, java and mvn found"
}

is_local_host() { [[ "$1" == 127.0.0.1 || "$1" == localhost || "$1" == ::1 ]]; }

as_root_or_fail() { # what-needs-root
  [[ $EUID -eq 0 ]] || fail "$1 needs root; run that step as root, or start PostgreSQL yourself and set PG_HOST/PG_PORT/PG_USER/PG_PASSWORD in deploy/local/stack.env."
}

# PostgreSQL: a server that answers is used as it is. Otherwise, on this machine, the stack owns
# it: installs Debian's package if missing, creates a cluster on PG_PORT if there is none, sets
# max_connections before starting it, and gives PG_USER the password PG_PASSWORD.
ensure_postgres() {
  if port_open "$PG_HOST" "$PG_PORT"; then
    info "PostgreSQL answers at $PG_HOST:$PG_PORT; using it as it is"
  else
    is_local_host "$PG_HOST" || fail "PostgreSQL at $PG_HOST:$PG_PORT does not answer. Start it, or set PG_HOST/PG_PORT in deploy/local/stack.env."
    start_owned_postgres
  fi
  psql -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 \
    || fail "PostgreSQL at $PG_HOST:$PG_PORT refuses user $PG_USER with the configured password. Set PG_USER/PG_PASSWORD in deploy/local/stack.env (or POSTGRES_SERVER_URL)."
  local max_connections
  max_connections=$(psql -d postgres -Atqc 'SHOW max_connections')
  info "PostgreSQL at $PG_HOST:$PG_PORT: logged in as $PG_USER, max_connections $max_connections"
  ((max_connections >= 100)) || warn "max_connections is $max_connections; the four services alone may open 32 connections, a harness run beside them as many again"
}

start_owned_postgres() {
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    as_root_or_fail "Installing PostgreSQL (apt-get install postgresql)"
    step "Installing PostgreSQL from Debian's packages (once; about a minute)"
    mkdir -p "$LOGS"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } >"$LOGS/postgresql-install.log" 2>&1 \
      || fail "installing PostgreSQL failed; see $LOGS/postgresql-install.log"
  fi
  as_root_or_fail "Starting PostgreSQL (pg_ctlcluster)"
  local version cluster status
  # pg_lsclusters -h: version, name, port, status, owner, data dir, log file
  read -r version cluster status < <(pg_lsclusters -h | awk -v port="$PG_PORT" '$3 == port {print $1, $2, $4; exit}') || true
  if [[ -z "${cluster:-}" ]]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    cluster=saga
    step "Creating PostgreSQL cluster $version/$cluster on port $PG_PORT"
    pg_createcluster -p "$PG_PORT" "$version" "$cluster" >/dev/null || fail "pg_createcluster failed"
  fi
  step "Starting PostgreSQL $version/$cluster on port $PG_PORT (max_connections $PG_MAX_CONNECTIONS)"
  pg_conftool "$version" "$cluster" set max_connections "$PG_MAX_CONNECTIONS"
  # Installing the package may have started the cluster already; the new setting needs a restart.
  pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" "$([[ ${status:-} == online ]] && echo restart || echo start)" \
    || fail "PostgreSQL $version/$cluster did not start; see /var/log/postgresql/postgresql-$version-$cluster.log"
  wait_for_port 127.0.0.1 "$PG_PORT" postgresql 60
  local password=${PG_PASSWORD//\'/\'\'}
  # As the operating system's postgres user over the local socket (peer authentication).
  env -u PGPASSWORD runuser -u postgres -- psql -h /var/run/postgresql -p "$PG_PORT" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -q >/dev/null <<SQL || fail "could not give PostgreSQL user $PG_USER its password"
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN CREATE ROLE "$PG_USER"; END IF;
END \$\$;
ALTER ROLE "$PG_USER" WITH LOGIN CREATEDB PASSWORD '$password';
SQL
}

fetch_kafka() {
  if [[ ! -f "$SAGA_CACHE_DIR/kafka-$("$KAFKA_NODE" version)/libs/.complete" ]]; then
    step "Fetching Apache Kafka $("$KAFKA_NODE" version) with Maven into $SAGA_CACHE_DIR (once)"
  fi
  "$KAFKA_NODE" fetch >/dev/null || fail "could not fetch Apache Kafka"
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

build_platform() { # [cargo package flags]: all binaries by default, of the SAGA_PROFILE build
  local profile=()
  [[ "$SAGA_PROFILE" == release ]] && profile=(--release)
  step "Building the platform binaries ($SAGA_PROFILE; a first build takes minutes on 2 cores, a first release build far longer)"
  (cd "$ROOT" && cargo build "${profile[@]}" --bins --quiet "$@") || fail "cargo build failed; see the compiler output above"
}

kafka_node_port() { echo $((KAFKA_BASE_PORT + 2 * ($1 - 1))); }

# Starts every Kafka node that is not running (a node restarted keeps its data), then waits until
# the cluster's metadata lists every node.
start_kafka() {
  local id port
  for ((id = 1; id <= KAFKA_NODES; id++)); do
    port=$(kafka_node_port "$id")
    if running "kafka-$id"; then info "Kafka node $id already running (127.0.0.1:$port)"; continue; fi
    # Not started by this stack (another checkout's, say); the readiness check below tells
    # whether it is the Kafka node it should be.
    if port_open 127.0.0.1 "$port"; then info "something already listens on 127.0.0.1:$port, where Kafka node $id belongs; using it"; continue; fi
    step "Starting Kafka node $id of $KAFKA_NODES on 127.0.0.1:$port ($KAFKA_SECURITY; data in ${KAFKA_DATA#"$ROOT/"}/node-$id)"
    start_process "kafka-$id" "$KAFKA_NODE" run "$KAFKA_DATA" "$id" "$KAFKA_NODES" "$KAFKA_BASE_PORT"
  done
  step "Waiting for the Kafka cluster: metadata listing all $KAFKA_NODES node(s)"
  "$BIN/sagactl" kafka ready --brokers "$KAFKA_NODES" --timeout-secs 120 \
    || fail "the Kafka cluster did not come up; see $LOGS/kafka-*.log"
}

# Appends `export KEY=VALUE` to the secrets file (mode 600) unless KEY is there already: a
# secret keeps the value it was first given, and each key is added on its own, beside the
# others. Delete a line to have that secret made up anew (and restart what uses it).
ensure_secret() { # key value
  mkdir -p "$(dirname "$SECRETS")"
  [[ -f "$SECRETS" ]] || (umask 077 && : >"$SECRETS")
  chmod 600 "$SECRETS"
  grep -Eq "^(export[[:space:]]+)?$1=" "$SECRETS" || printf 'export %s=%s\n' "$1" "$2" >>"$SECRETS"
}

random_secret() { od -An -tx1 -N16 /dev/urandom | tr -d ' \n'; }

# The registry's read-write user `saga` gets a password made up on the first start; every client
# the stack starts (sagactl, the services) gets it from SCHEMA_REGISTRY_USER_INFO, and the
# registry from its users file, rewritten from the secret on every start so that both agree.
prepare_secrets() {
  # The services' API keys, one per scope: placing and reading orders; reading what the saga did;
  # operating (stock adjustments, redrives). The services accept them, sagactl sends them.
  ensure_secret ORDER_API_KEY "saga_orders_$(random_secret)"
  ensure_secret READ_API_KEY "saga_read_$(random_secret)"
  ensure_secret ADMIN_API_KEY "saga_admin_$(random_secret)"
  ensure_secret SCHEMA_REGISTRY_USER_INFO "saga:$(random_secret)"
  if [[ "$KAFKA_SECURITY" == sasl_ssl ]]; then
    # Kafka's client account `saga` and the brokers' own; the CA and the broker's certificate.
    ensure_secret KAFKA_SASL_PASSWORD "$(random_secret)"
    ensure_secret KAFKA_BROKER_PASSWORD "$(random_secret)"
    "$ROOT/deploy/kafka/tls.sh" "$KAFKA_TLS_DIR" || fail "making the Kafka TLS material in $KAFKA_TLS_DIR failed"
  fi
  # shellcheck source=/dev/null
  source "$SECRETS"
  if [[ "$KAFKA_SECURITY" == sasl_ssl ]]; then export KAFKA_SASL_USERS="saga:$KAFKA_SASL_PASSWORD"; fi
  [[ "${SCHEMA_REGISTRY_USER_INFO:-}" == *:* ]] || fail "SCHEMA_REGISTRY_USER_INFO in $SECRETS is not user:password; delete its line to have it made up anew"
  mkdir -p "$STATE"
  (umask 077 && printf '# Users of the schema registry (user:password:role), rewritten by deploy/local/stack.sh\n# from SCHEMA_REGISTRY_USER_INFO on every start.\n%s:write\n' \
    "$SCHEMA_REGISTRY_USER_INFO" >"$REGISTRY_USERS")
}

# GET /subjects on the stack's registry, as the stack's registry user (the credentials go to curl
# on its standard input, not on a command line others can read) or, with `anonymous`, as nobody.
registry_answers() { # [anonymous]
  local url="http://127.0.0.1:$REGISTRY_PORT/subjects"
  if [[ "${1:-}" == anonymous ]]; then curl -fsS -o /dev/null "$url" 2>/dev/null; return; fi
  curl -fsS -o /dev/null -K - "$url" 2>/dev/null <<<"user = \"$SCHEMA_REGISTRY_USER_INFO\""
}

start_registry() {
  if port_open 127.0.0.1 "$REGISTRY_PORT"; then
    info "schema registry already listening on 127.0.0.1:$REGISTRY_PORT"
    registry_answers \
      || fail "the schema registry on 127.0.0.1:$REGISTRY_PORT refuses the credentials in $SECRETS (SCHEMA_REGISTRY_USER_INFO); restart it: deploy/local/stack.sh down, then up"
    if registry_answers anonymous; then
      warn "the schema registry on 127.0.0.1:$REGISTRY_PORT answers without credentials (started without a users file); restart it to turn authentication on"
    fi
    return
  fi
  step "Starting the schema registry on 127.0.0.1:$REGISTRY_PORT (schemas kept in the _schemas topic; users in .local/registry-users)"
  REGISTRY_LISTEN="127.0.0.1:$REGISTRY_PORT" REGISTRY_USERS_FILE="$REGISTRY_USERS" start_process schema-registry "$BIN/schema-registry"
  local deadline=$((SECONDS + 60))
  until registry_answers; do
    ((SECONDS < deadline)) || fail "schema-registry did not become ready (http://127.0.0.1:$REGISTRY_PORT/subjects, as the user of $SECRETS) within 60 s; see $LOGS/schema-registry.log"
    sleep 0.5
  done
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

# A service this stack started from another binary than $BIN/<name> (the other build, or one
# since rebuilt) is stopped, so that it starts again on the build asked for.
stop_if_other_build() { # process-name [binary-name, the process name by default]
  local exe binary=${2:-$1}
  running "$1" || return 0
  exe=$(readlink "/proc/$(cat "$PIDS/$1.pid")/exe" 2>/dev/null || true)
  [[ "$exe" == "$BIN/$binary" ]] && return 0
  info "$1 runs ${exe:-an unknown binary}, not $BIN/$binary: restarting it"
  stop_process "$1"
}

# Every instance of every service, one line each: binary, process name, HTTP port. Instance 1 is
# the service itself on its port from SERVICES; instance k > 1 is <service>-k on that port +
# 100(k-1) (8080, 8180, ... for the order service). Instances share their service's database
# and consumer group: Kafka splits the partitions between them.
service_instances() {
  local entry name port k
  for entry in $SERVICES; do
    name=${entry%%:*}; port=${entry##*:}
    for ((k = 1; k <= SERVICE_INSTANCES; k++)); do
      if ((k == 1)); then echo "$name $name $port"; else echo "$name $name-$k $((port + 100 * (k - 1)))"; fi
    done
  done
}

# The pid-file names of every instance this stack started of `service` beyond SERVICE_INSTANCES.
surplus_instances() { # service
  local file process
  for file in "$PIDS/$1"-[0-9]*.pid; do
    [[ -f "$file" ]] || continue
    process=$(basename "$file" .pid)
    ((${process##*-} > SERVICE_INSTANCES)) && echo "$process"
  done
  return 0
}

# The base URLs of the order service's instances after the first, comma-separated: where
# `sagactl bench` sends every other order (MORE_ORDER_SERVICE_URLS).
more_order_urls() {
  local binary process port urls=""
  while read -r binary process port; do
    [[ "$binary" == order-service && "$process" != order-service ]] && urls+="${urls:+,}http://127.0.0.1:$port"
  done < <(service_instances)
  echo "$urls"
}

# With STRICT_BUILD=1 (bench), a port held by a process this stack did not start is refused:
# it could be any build.
check_port_owner() { # name port
  if [[ "${STRICT_BUILD:-0}" == 1 ]] && ! running "$1" && port_open 127.0.0.1 "$2"; then
    fail "port $2 of $1 is held by a process this stack did not start (another checkout's, or a debug run); the benchmark needs $1 on $BIN: stop that process (ss -ltnp | grep :$2) and retry"
  fi
}

start_services() {
  local binary name port database entry surplus
  build_platform
  for entry in $SERVICES; do
    for surplus in $(surplus_instances "${entry%%:*}"); do stop_process "$surplus"; done
  done
  while read -r binary name port; do
    stop_if_other_build "$name" "$binary"
    check_port_owner "$name" "$port"
    if running "$name" || port_open 127.0.0.1 "$port"; then info "$name already running on port $port"; continue; fi
    step "Starting $name on 127.0.0.1:$port"
    database="saga_${binary%-service}"
    HTTP_LISTEN="127.0.0.1:$port" DATABASE_URL="$POSTGRES_SERVER_URL/$database" start_process "$name" "$BIN/$binary"
  done < <(service_instances)
  while read -r binary name port; do
    wait_for_http "http://127.0.0.1:$port/health/ready" "$name" 90
    info "$name ready: http://127.0.0.1:$port/health/ready"
  done < <(service_instances)
  start_dashboard
}

# The saga dashboard: reads the saga topics (no database) and serves its page; ready once it has
# read the topics up to the end offsets it found at start.
start_dashboard() {
  stop_if_other_build dashboard-service
  check_port_owner dashboard-service "$DASHBOARD_PORT"
  if running dashboard-service || port_open 127.0.0.1 "$DASHBOARD_PORT"; then
    info "dashboard-service already running on port $DASHBOARD_PORT"
  else
    step "Starting dashboard-service on 127.0.0.1:$DASHBOARD_PORT"
    HTTP_LISTEN="127.0.0.1:$DASHBOARD_PORT" start_process dashboard-service "$BIN/dashboard-service"
  fi
  # Ready once it has read the last day of the topics: after a benchmark, hundreds of thousands
  # of events, a couple of minutes on a debug build.
  wait_for_http "http://127.0.0.1:$DASHBOARD_PORT/health/ready" dashboard-service 300
  info "dashboard-service ready: http://127.0.0.1:$DASHBOARD_PORT/"
}

# Ends `demo`: where to follow the orders just placed, on the page and in the terminal.
print_dashboard_address() { # demo-output-file
  local order_id
  order_id=$(awk '/^placed out of stock / {print $NF; exit}' "$1")
  step "The saga dashboard: http://127.0.0.1:$DASHBOARD_PORT/"
  info "the page asks for an API key: READ_API_KEY in ${SECRETS#"$ROOT/"}"
  if [[ -n "$order_id" ]]; then
    info "the out-of-stock order, refunded: http://127.0.0.1:$DASHBOARD_PORT/#/orders/$order_id"
    info "the same timeline in the terminal: $BIN/sagactl order $order_id"
  else
    info "one order's timeline in the terminal: $BIN/sagactl order <order id>"
  fi
}

up_infra() {
  check_prerequisites
  prepare_secrets
  ensure_postgres
  fetch_kafka
  install_maildev
  # The infrastructure needs only the operator CLI and the registry; `up` builds the rest.
  build_platform -p sagactl -p schema-registry
  start_kafka
  start_registry
  start_maildev
  prepare_topics_databases_schemas
}

# Replay throughput: a synthetic history written onto fresh topics, each service replayed from
# it into a fresh database (sagactl replay-bench, built in release mode: it measures the code).
replay_bench() { # [sagactl replay-bench args]
  up_infra
  step "Building sagactl in release mode (first build several minutes on 2 cores)"
  (cd "$ROOT" && cargo build --release --quiet -p sagactl --bin sagactl) || fail "cargo build failed; see the compiler output above"
  step "Replay benchmark"
  "$TARGET_DIR/release/sagactl" replay-bench "$@"
}

# The standard benchmark (docs/performance.md): release binaries, then the machine's limits,
# the low open-loop rate (on a quiet platform), closed-loop saturation with the cost per saga
# counted around it, the high open-loop rate last (it may overload the platform and leave a
# backlog behind), and one table (sagactl bench-report). Every run's JSON files stay in
# .local/bench/<time>/.
run_bench() { # [--quick] [--instances N]
  local quick=false
  while (($#)); do
    case "$1" in
      --quick) quick=true; shift ;;
      --instances)
        [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "--instances needs a number of instances, 1 or more" >&2; exit 2; }
        SERVICE_INSTANCES=$2; shift 2 ;;
      *) echo "usage: $0 bench [--quick] [--instances N]" >&2; exit 2 ;;
    esac
  done
  SAGA_PROFILE=release
  BIN="$TARGET_DIR/release"
  STRICT_BUILD=1
  # One client places every order; the per-client limit on POST /orders would measure itself.
  export ORDER_RATE_LIMIT_PER_SECOND="${ORDER_RATE_LIMIT_PER_SECOND:-0}"
  local limit_secs=10 saturation_orders=3000 high_rate=500 high_secs=20 low_rate=100 low_secs=30
  if $quick; then
    limit_secs=3 saturation_orders=300 high_rate=50 high_secs=5 low_rate=20 low_secs=5
  fi
  build_platform
  up_infra
  start_services
  MORE_ORDER_SERVICE_URLS=$(more_order_urls)
  if [[ -n "$MORE_ORDER_SERVICE_URLS" ]]; then export MORE_ORDER_SERVICE_URLS; else unset MORE_ORDER_SERVICE_URLS; fi
  local out
  out="$STATE/bench/$(date -u +%Y%m%dT%H%M%SZ)"
  mkdir -p "$out"
  # Work left by an earlier run (a backlog of charges, emails, compensations) would be measured
  # as this one's: wait until the saga topics have stopped growing.
  step "Waiting until the platform is quiet (the saga topics stop growing; at most 10 minutes)"
  "$BIN/sagactl" bench-counters --settle-secs 600 >/dev/null
  info "$SERVICE_INSTANCES instance(s) of every service; orders go to each order-service instance in turn"
  step "Machine limits: PostgreSQL commits/s (pgbench) and Kafka round trips/s, $limit_secs s each"
  "$BIN/sagactl" bench-limits --seconds "$limit_secs" --json >"$out/limits.json"
  step "Open loop: $low_rate orders/s for $low_secs s"
  "$BIN/sagactl" bench --rate "$low_rate" --duration-secs "$low_secs" --json >"$out/open-loop-low.json"
  step "Saturation: $saturation_orders orders, 32 clients (closed loop), counting PostgreSQL transactions and Kafka records"
  "$BIN/sagactl" bench-counters --settle-secs 120 >"$out/counters-before.json"
  "$BIN/sagactl" bench --orders "$saturation_orders" --concurrency 32 --json >"$out/saturation.json"
  "$BIN/sagactl" bench-counters --settle-secs 120 >"$out/counters-after.json"
  step "Open loop: $high_rate orders/s for $high_secs s"
  "$BIN/sagactl" bench --rate "$high_rate" --duration-secs "$high_secs" --json >"$out/open-loop-high.json"
  step "The benchmark$($quick && echo " (--quick: small parameters, a smoke run, not the figures)")"
  "$BIN/sagactl" bench-report --limits "$out/limits.json" --saturation "$out/saturation.json" \
    --open-loop-high "$out/open-loop-high.json" --open-loop-low "$out/open-loop-low.json" \
    --counters-before "$out/counters-before.json" --counters-after "$out/counters-after.json" \
    --pids-dir "$PIDS" | tee "$out/report.txt"
  info "JSON of each step and the table: ${out#"$ROOT/"}; the services stay up on release binaries (stack.sh down stops them)"
}

stop_process() { # name: SIGTERM, then up to 30 s for a graceful stop before SIGKILL
  local name=$1
  running "$name" || { rm -f "$PIDS/$name.pid"; return 0; }
  kill -TERM "$(cat "$PIDS/$name.pid")" 2>/dev/null || true
  for _ in $(seq 1 150); do running "$name" || break; sleep 0.2; done
  running "$name" && kill -KILL "$(cat "$PIDS/$name.pid")" 2>/dev/null || true
  rm -f "$PIDS/$name.pid"
  info "stopped $name"
}

stop_all() {
  step "Stopping the local stack"
  local entry id
  stop_process dashboard-service
  for entry in $SERVICES; do
    stop_process "${entry%%:*}"
    for id in "$PIDS/${entry%%:*}"-[0-9]*.pid; do
      if [[ -f "$id" ]]; then stop_process "$(basename "$id" .pid)"; fi
    done
  done
  stop_process maildev
  stop_process schema-registry
  # Kafka nodes stop together: a node stopped after the others lost their quorum would wait
  # for a controller that is gone.
  for id in "$PIDS"/kafka-*.pid; do
    [[ -f "$id" ]] || continue
    kill -TERM "$(cat "$id")" 2>/dev/null || true
  done
  for id in "$PIDS"/kafka-*.pid; do
    [[ -f "$id" ]] || continue
    id=$(basename "$id" .pid)
    stop_process "$id"
  done
}

show_status() {
  local entry name port id
  for ((id = 1; id <= KAFKA_NODES; id++)); do
    port=$(kafka_node_port "$id")
    if running "kafka-$id" && port_open 127.0.0.1 "$port"; then echo "up    kafka-$id (127.0.0.1:$port, pid $(cat "$PIDS/kafka-$id.pid"))"
    elif running "kafka-$id"; then echo "start kafka-$id (127.0.0.1:$port, pid $(cat "$PIDS/kafka-$id.pid"), not listening yet)"
    else echo "down  kafka-$id (127.0.0.1:$port)"; fi
  done
  local instances
  instances=$(service_instances | awk '{print $2 ":" $3}')
  for entry in schema-registry:$REGISTRY_PORT maildev:$SMTP_PORT $instances dashboard-service:$DASHBOARD_PORT; do
    name=${entry%%:*}; port=${entry##*:}
    if port_open 127.0.0.1 "$port"; then echo "up    $name (127.0.0.1:$port)"; else echo "down  $name (127.0.0.1:$port)"; fi
  done
  if port_open "$PG_HOST" "$PG_PORT"; then echo "up    postgresql ($PG_HOST:$PG_PORT)"; else echo "down  postgresql ($PG_HOST:$PG_PORT)"; fi
}

case "${1:-up}" in
  up) up_infra; start_services; step "The platform is up. Logs: $LOGS; the saga dashboard: http://127.0.0.1:$DASHBOARD_PORT/" ;;
  demo)
    up_infra; start_services
    step "Pushing orders through every branch of the saga"
    "$BIN/sagactl" demo | tee "$STATE/demo.out"
    step "The platform is up. Logs: $LOGS; stop it with deploy/local/stack.sh down"
    print_dashboard_address "$STATE/demo.out" ;;
  infra) up_infra; step "PostgreSQL, Kafka, the registry and the SMTP catcher are up. Logs: $LOGS" ;;
  down) stop_all ;;
  status) show_status ;;
  replay-bench) shift; replay_bench "$@" ;;
  bench) shift; run_bench "$@" ;;
  *) echo "usage: $0 demo|up|infra|down|status|replay-bench [sagactl replay-bench args]|bench [--quick] [--instances N]" >&2; exit 2 ;;
esac
