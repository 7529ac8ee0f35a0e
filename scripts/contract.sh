#!/usr/bin/env bash
# The OpenAPI contract, checked from the outside (part of scripts/test.sh):
#   1. generates a Python client (openapi-python-client) and a TypeScript client
#      (openapi-typescript + openapi-fetch) from the committed openapi/openapi.json into a
#      temp dir and drives each against a live mailgate delivering into the Postfix harness;
#   2. runs schemathesis against a live mailgate (sandbox transport) with a valid token.
# Needs a built binary (MAILGATE_BIN, default target/debug/mailgate) and the Postfix harness
# started by tests/support/postfix.sh. Installs its pinned tools (PyPI, npm) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(realpath "${MAILGATE_BIN:-target/debug/mailgate}")
tools=${MAILGATE_TOOLS_DIR:-/tmp/mailgate-tools}
postfix_dir=${MAILGATE_TEST_POSTFIX_DIR:-/tmp/mailgate-postfix}
postfix_port=${MAILGATE_TEST_POSTFIX_PORT:-10587}
examples=${MAILGATE_SCHEMATHESIS_EXAMPLES:-25}
spec=$PWD/openapi/openapi.json
work=$(mktemp -d /tmp/mailgate-contract.XXXXXX)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do { kill "$pid" && wait "$pid"; } 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Python's venv module and Node.js with npm, from Debian when this machine lacks them.
install_runtimes() {
  if python3 -c 'import ensurepip, venv' 2>/dev/null && command -v npm >/dev/null; then
    return
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "contract.sh: installing python3-venv, nodejs and npm from Debian" >&2
  local pkgs="python3-venv nodejs npm"
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null
  fi
}

install_tools() {
  install_runtimes
  [ -x "$tools/venv/bin/python" ] || python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check -r openapi/clients/python/requirements.txt
  (cd openapi/clients/typescript && npm ci --no-audit --no-fund --loglevel=error)
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A name server on loopback that answers NXDOMAIN to everything: domain checks
# (POST /v1/domains/{id}/verify) get a fast answer and never leave the machine.
start_dns() {
  dns_port=$(free_port)
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 \
    --user=root --pid-file --port="$dns_port" --address=/#/ 2>/dev/null &
  pids+=($!)
}

# start_mailgate NAME [TOML...]: runs mailgate with its own data dir; sets $url and $token.
start_mailgate() {
  local name=$1 dir="$work/$1"
  shift
  mkdir -p "$dir"
  printf '[storage]\npath = "%s"\n[dns]\nnameservers = ["127.0.0.1:%s"]\n%s\n' "$dir/data" "$dns_port" "$*" >"$dir/mailgate.toml"
  local port
  port=$(free_port)
  MAILGATE_HTTP__LISTEN="127.0.0.1:$port" "$bin" serve --config "$dir/mailgate.toml" \
    >"$dir/stdout.log" 2>"$dir/stderr.log" &
  pids+=($!)
  url="http://127.0.0.1:$port"
  for _ in $(seq 100); do
    curl -fsS "$url/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "$url/readyz" >/dev/null || { cat "$dir/stderr.log"; return 1; }
  token=$("$bin" token issue --config "$dir/mailgate.toml" --tenant "$name" \
    --scope "messages:send messages:read templates:read templates:write webhooks:manage suppressions:manage domains:manage bounces:write admin")
}

check_clients() {
  printf 'mailgate-test-password' >"$work/smtp-password"
  start_mailgate clients "
[[upstreams]]
name = \"postfix\"
host = \"127.0.0.1\"
port = $postfix_port
tls = \"starttls\"
username = \"mailgate\"
password_file = \"$work/smtp-password\"
ca_file = \"$postfix_dir/tls/ca.pem\"

[delivery]
return_path_domain = \"bounces.mailgate.test\"
message_id_domain = \"mailgate.test\"
retry_base = \"300ms\"
retry_max = \"1s\""

  "$tools/venv/bin/openapi-python-client" generate --path "$spec" \
    --config openapi/clients/python/config.yaml --output-path "$work/python" --fail-on-warning >/dev/null
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$work/python"
  MAILGATE_URL=$url MAILGATE_TOKEN=$token "$tools/venv/bin/python" openapi/clients/python/check_client.py

  mkdir -p "$work/typescript"
  cp openapi/clients/typescript/{check.ts,tsconfig.json,package.json} "$work/typescript/"
  ln -s "$PWD/openapi/clients/typescript/node_modules" "$work/typescript/node_modules"
  (cd "$work/typescript" &&
    node_modules/.bin/openapi-typescript "$spec" --output schema.d.ts >/dev/null 2>&1 &&
    node_modules/.bin/tsc -p . &&
    MAILGATE_URL=$url MAILGATE_TOKEN=$token node out/check.js)
}

# Every example must match its schema, and the checker must be able to say otherwise:
# a copy of the document with one example broken has to fail it.
check_examples() {
  "$tools/venv/bin/python" openapi/check_examples.py "$spec"
  "$tools/venv/bin/python" - "$spec" "$work/wrong-example.json" <<'PY'
import json, sys
document = json.load(open(sys.argv[1]))
document["components"]["schemas"]["SendMessageRequest"]["example"]["to"] = 42
json.dump(document, open(sys.argv[2], "w"))
PY
  if "$tools/venv/bin/python" openapi/check_examples.py "$work/wrong-example.json" 2>/dev/null; then
    echo "check_examples.py accepted a wrong example" >&2
    return 1
  fi
}

# Runs in the temp dir: schemathesis keeps a replay cache (.schemathesis/) in its working
# directory, and a run must not depend on what an earlier one found.
schemathesis() {
  (cd "$work" && PYTHONPATH="$OLDPWD/openapi" SCHEMATHESIS_HOOKS=schemathesis_hooks \
    "$tools/venv/bin/schemathesis" run "$spec" --url "$url" --header "Authorization: Bearer $token" \
    --seed 1 --generation-deterministic --no-color \
    --suppress-health-check all "$@")
}

check_schemathesis() {
  start_mailgate schemathesis "
[limits]
messages_per_second = 0
daily_quota = 0"
  # Why positive_data_acceptance is off: see "Contract checks" in the README.
  schemathesis --checks all --exclude-checks positive_data_acceptance --max-examples "$examples"
}

install_tools
start_dns
check_examples
check_clients
check_schemathesis
echo "scripts/contract.sh: generated clients and schemathesis passed"
