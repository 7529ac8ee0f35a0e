#!/usr/bin/env bash
# The test command (README, .ci/run): format and lint checks, a private Postfix upstream
# and a private PostgreSQL on loopback, the whole suite (the store contract runs on sled
# and on PostgreSQL), then the OpenAPI contract from outside (scripts/contract.sh:
# generated Python and TypeScript clients, schemathesis) and the web console in headless
# Chromium (scripts/browser.sh). Installs Postfix and Chromium from Debian and the pinned
# PyPI / npm tools when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export MAILGATE_TEST_POSTFIX_DIR=${MAILGATE_TEST_POSTFIX_DIR:-/tmp/mailgate-postfix}
export MAILGATE_TEST_POSTFIX_PORT=${MAILGATE_TEST_POSTFIX_PORT:-10587}
started=$(date +%s)

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

tests/support/postfix.sh start
tests/support/postgres.sh start
trap 'tests/support/postfix.sh stop; tests/support/postgres.sh stop' EXIT
MAILGATE_TEST_PG_URL=$(tests/support/postgres.sh url)
export MAILGATE_TEST_PG_URL
MAILGATE_TEST_PYTHON=$(tests/support/tools.sh)
export MAILGATE_TEST_PYTHON

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --no-fail-fast
else
  cargo test --locked --no-fail-fast
fi
# The suite built target/debug/mailgate; drive it through generated clients and schemathesis,
# then the web console through headless Chromium (it prints where its screenshots are).
MAILGATE_BIN=target/debug/mailgate scripts/contract.sh
MAILGATE_BIN=target/debug/mailgate scripts/browser.sh
echo "scripts/test.sh: passed in $(( $(date +%s) - started ))s"
