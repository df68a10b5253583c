#!/usr/bin/env bash
# Checks formatting and lints and runs the unit tests first (they need nothing running), then
# runs every integration test of the workspace against the real local stack: starts PostgreSQL, Apache Kafka,
# the schema registry and the SMTP catcher if they are not running (see stack.sh), gives the tests
# the registry's credentials (SCHEMA_REGISTRY_USER_INFO, from .local/secrets.env), installs the
# Python client used for interoperability tests, nftables (the failure-injection harness cuts a
# broker off with it), chromium and playwright-core (the dashboard's browser test), then runs the
# tests. Extra arguments go to cargo test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

printf '\033[1m==> %s\033[0m\n' "Checking formatting and lints"
cargo fmt --all -- --check || { echo "ERROR: code is not formatted; run cargo fmt --all" >&2; exit 1; }
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings

printf '\033[1m==> %s\033[0m\n' "Running the unit tests (no stack needed)"
cargo test --workspace --no-fail-fast --quiet

"$ROOT/deploy/local/stack.sh" infra

printf '\033[1m==> %s\033[0m\n' "Installing the Python test clients (tests/requirements.txt)"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt \
  || { echo "ERROR: pip could not install tests/requirements.txt" >&2; exit 1; }

if ! command -v nft >/dev/null; then
  [[ $EUID -eq 0 ]] || { echo "ERROR: nft not found; the failure-injection tests need it: apt-get install nftables" >&2; exit 1; }
  printf '\033[1m==> %s\033[0m\n' "Installing nftables (the harness cuts a broker off with it)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nftables; } >/dev/null \
    || { echo "ERROR: apt-get could not install nftables" >&2; exit 1; }
fi

if ! command -v chromium >/dev/null; then
  [[ $EUID -eq 0 ]] || { echo "ERROR: chromium not found; the dashboard's browser test needs it: apt-get install chromium" >&2; exit 1; }
  printf '\033[1m==> %s\033[0m\n' "Installing chromium (the dashboard's browser test drives it headless)"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } >/dev/null \
    || { echo "ERROR: apt-get could not install chromium" >&2; exit 1; }
fi

printf '\033[1m==> %s\033[0m\n' "Installing the browser test's packages (tests/browser, npm ci)"
command -v npm >/dev/null || { echo "ERROR: npm not found; the dashboard's browser test needs Node.js and npm: apt-get install nodejs npm" >&2; exit 1; }
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
  || { echo "ERROR: npm ci failed in tests/browser" >&2; exit 1; }

# shellcheck source=deploy/local/stack.env
source "$ROOT/deploy/local/stack.env"
# The secrets stack.sh made up, the registry's credentials among them, for the tests' clients.
# shellcheck source=/dev/null
source "$SAGA_SECRETS_FILE"

# Each test creates its own databases (t<12 hex>_<service>); drop those of earlier runs.
if command -v psql >/dev/null; then
  psql -h "$PG_HOST" -p "$PG_PORT" -d postgres -Atc \
    "SELECT datname FROM pg_database WHERE datname ~ '^t[0-9a-f]{12}_[a-z]+$'" 2>/dev/null |
    while read -r name; do psql -h "$PG_HOST" -p "$PG_PORT" -d postgres -qc "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true; done
fi

# The failure-injection test runs the service binaries and the operator tests run sagactl.
printf '\033[1m==> %s\033[0m\n' "Building the platform binaries"
cargo build --bins --quiet

# The integration tests: every test target gated on the `integration` feature (tests/ and the
# registry's tests), against the stack started above.
printf '\033[1m==> %s\033[0m\n' "Running the integration tests"
cargo test --workspace --no-fail-fast --features saga-tests/integration,schema-registry/integration "$@"
