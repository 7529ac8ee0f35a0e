#!/usr/bin/env bash
# The web console in a real browser (part of scripts/test.sh): Debian's headless
# Chromium driven by Playwright for Python (pinned, using the system browser) against the
# real binary started from a config file, delivering into the Postfix harness. Writes a
# screenshot of each page to a folder it prints. Needs a built binary (MAILGATE_BIN,
# default target/debug/mailgate) and the harness from tests/support/postfix.sh; installs
# chromium and its pinned PyPI tools on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(realpath "${MAILGATE_BIN:-target/debug/mailgate}")
tools=${MAILGATE_TOOLS_DIR:-/tmp/mailgate-tools}
postfix_dir=${MAILGATE_TEST_POSTFIX_DIR:-/tmp/mailgate-postfix}
postfix_port=${MAILGATE_TEST_POSTFIX_PORT:-10587}
shots=${MAILGATE_SCREENSHOTS_DIR:-/tmp/mailgate-console-screenshots}
work=$(mktemp -d /tmp/mailgate-browser.XXXXXX)
pid=""

cleanup() {
  if [ -n "$pid" ]; then { kill "$pid" && wait "$pid"; } 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

install_tools() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  if ! command -v chromium >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "browser.sh: installing chromium, fonts-liberation and python3-venv from Debian" >&2
    local pkgs="chromium fonts-liberation python3-venv"
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null; then
      $sudo apt-get update -q >/dev/null
      $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null
    fi
  fi
  [ -x "$tools/venv/bin/python" ] || python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/browser/requirements.txt
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_tools
printf 'mailgate-test-password' >"$work/smtp-password"
port=$(free_port)
cat >"$work/mailgate.toml" <<TOML
[http]
listen = "127.0.0.1:$port"
public_url = "http://127.0.0.1:$port"

[storage]
path = "$work/data"

[[upstreams]]
name = "postfix"
host = "127.0.0.1"
port = $postfix_port
tls = "starttls"
username = "mailgate"
password_file = "$work/smtp-password"
ca_file = "$postfix_dir/tls/ca.pem"

[delivery]
return_path_domain = "bounces.mailgate.test"
message_id_domain = "mailgate.test"
retry_base = "300ms"
retry_max = "1s"

[webhooks]
allow_private_targets = true
TOML
"$bin" serve --config "$work/mailgate.toml" >"$work/stdout.log" 2>"$work/stderr.log" &
pid=$!
url="http://127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$url/readyz" >/dev/null || { cat "$work/stderr.log"; exit 1; }

rm -rf "$shots" && mkdir -p "$shots"
if ! MAILGATE_URL=$url MAILGATE_BIN=$bin MAILGATE_CONFIG=$work/mailgate.toml \
  MAILGATE_MAILDIR=$postfix_dir/sink MAILGATE_SCREENSHOTS_DIR=$shots \
  "$tools/venv/bin/python" tests/browser/console.py; then
  echo "--- mailgate stderr (last 40 lines)" >&2
  tail -n 40 "$work/stderr.log" >&2
  exit 1
fi
echo "scripts/browser.sh: console screenshots in $shots"
