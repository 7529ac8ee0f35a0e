#!/usr/bin/env bash
# Installs what the integration tests run beside the Postfix harness, when missing:
# Debian's dnsmasq (an authoritative DNS server for the sender-domain tests),
# SpamAssassin (its local rules judge the headers and MIME of delivered mail), the
# pinned Python tools of tests/support/requirements.txt (dkimpy, an independent DKIM
# verifier; the Resend and SendGrid Python SDKs) in the tools venv, and the pinned Node
# SDKs of tests/sdk/package-lock.json (Node.js and npm from Debian when missing).
# Prints the venv's python for MAILGATE_TEST_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."

tools=${MAILGATE_TOOLS_DIR:-/tmp/mailgate-tools}
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
pkgs=""
command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || pkgs="$pkgs dnsmasq-base"
command -v spamassassin >/dev/null || pkgs="$pkgs spamassassin"
python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs="$pkgs python3-venv"
command -v npm >/dev/null || pkgs="$pkgs nodejs npm"
if [ -n "$pkgs" ]; then
  echo "tools.sh: installing$pkgs from Debian" >&2
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null
  fi
fi
[ -x "$tools/venv/bin/python" ] || python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/support/requirements.txt
(cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error) >&2
echo "$tools/venv/bin/python"
