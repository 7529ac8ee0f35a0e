#!/usr/bin/env bash
# Runs a private Postfix on loopback that plays mailgate's upstream in tests.
#
#   tests/support/postfix.sh start|stop|restart [DIR] [BASE_PORT]
#
# BASE_PORT      submission: STARTTLS required, then SASL AUTH (PLAIN/LOGIN) to relay
# BASE_PORT + 1  submissions: implicit TLS, then SASL AUTH
# BASE_PORT + 2  a "remote MX" that answers 550 5.1.1 to every RCPT: mail to
#                `@remote-bounce.test` is relayed there, so Postfix writes the DSN form
#                real providers send (`Diagnostic-Code: smtp; 550 …`, `Remote-MTA`)
# BASE_PORT + 5  like BASE_PORT, but presenting a self-signed certificate made the most
#                common way (`openssl req -x509`, which marks it CA:TRUE): DIR/tls/selfsigned.pem
# BASE_PORT + 6  like BASE_PORT, but without PIPELINING in its EHLO answer
#                (`smtpd_discard_ehlo_keywords = pipelining`): clients must go lock-step
# BASE_PORT + 3  plain SMTP for loopback clients, no TLS or AUTH: the benchmark's
#                reference path (smtp-source → Postfix → smtp-sink); mail to `@sink.bench`
#                is relayed to BASE_PORT + 4, where scripts/bench-delivery.sh runs smtp-sink
# Every accepted message lands in the Maildir DIR/sink; `reject@<any domain>` is answered
# 550 5.1.1 and `defer@<any domain>` 451 4.2.0 at RCPT. Mail to `@nouser.test` is accepted
# and then fails in a pipe(8) transport with EX_NOUSER, so Postfix sends a real DSN to the
# envelope sender; every null-sender message (every DSN) goes to a pipe that POSTs it with
# curl to the URL in DIR/dsnhook.d/<message id>.url with the bearer token in
# DIR/dsnhook.d/<message id>.token, the message id read from the VERP return path the DSN
# is addressed to, so tests running at once each get their own DSNs (exit 75, so Postfix
# retries, while no route is written or the POST fails). The CA that signed the server certificate is
# DIR/tls/ca.pem. Nothing outside DIR is touched except installing the
# Debian packages when they are missing.
set -euo pipefail

cmd=${1:?usage: postfix.sh start|stop|restart [DIR] [BASE_PORT]}
dir=${2:-${MAILGATE_TEST_POSTFIX_DIR:-/tmp/mailgate-postfix}}
base=${3:-${MAILGATE_TEST_POSTFIX_PORT:-10587}}
user=${MAILGATE_TEST_SMTP_USER:-mailgate}
pass=${MAILGATE_TEST_SMTP_PASSWORD:-mailgate-test-password}
realm=upstream.mailgate.test
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

install_packages() {
  if command -v postfix >/dev/null && command -v saslpasswd2 >/dev/null && command -v curl >/dev/null \
     && ls /usr/lib/*/sasl2/libsasldb.so* >/dev/null 2>&1; then
    return
  fi
  echo "postfix.sh: installing postfix and cyrus sasl from Debian" >&2
  echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
  local pkgs="postfix sasl2-bin libsasl2-modules libsasl2-modules-db curl"
  if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/dev/null
  fi
}

write_tls() {
  local t=$dir/tls
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$t/ca.key" -out "$t/ca.pem" -subj /CN=mailgate-test-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$t/server.key" -out "$t/server.csr" -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n' > "$t/ext.cnf"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 30 -out "$t/server.pem" -extfile "$t/ext.cnf" 2>/dev/null
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$t/selfsigned.key" -out "$t/selfsigned.pem" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
  chmod 600 "$t/server.key" "$t/ca.key" "$t/selfsigned.key"
}

write_config() {
  cat > "$dir/etc/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
myhostname = $realm
mydomain = mailgate.test
myorigin = \$myhostname
mydestination =
alias_maps =
alias_database =
local_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.1/32
maillog_file_prefixes = $dir
maillog_file = $dir/maillog
biff = no
smtputf8_enable = no
message_size_limit = 52428800
virtual_mailbox_limit = 0
transport_maps = inline:{ nouser.test=nouser:, remote-bounce.test=smtp:[127.0.0.1]:$((base + 2)), sink.bench=smtp:[127.0.0.1]:$((base + 4)) }
sender_dependent_default_transport_maps = inline:{ <>=dsnhook: }
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
local_header_rewrite_clients =
default_transport = virtual
relay_transport = virtual
virtual_mailbox_domains =
virtual_mailbox_base = $dir
virtual_mailbox_maps = static:sink/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
virtual_minimum_uid = 1
smtpd_reject_unlisted_recipient = no
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_local_domain = $realm
cyrus_sasl_config_path = $dir/etc/sasl
smtpd_tls_cert_file = $dir/tls/server.pem
smtpd_tls_key_file = $dir/tls/server.key
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = check_recipient_access texthash:$dir/etc/recipient_access, permit_sasl_authenticated, reject
CF
  cat > "$dir/etc/recipient_access" <<CF
reject@ 550 5.1.1 User unknown in virtual mailbox table
defer@ 451 4.2.0 Mailbox temporarily unavailable
CF
  cat > "$dir/etc/master.cf" <<CF
$base      inet  n       -       n       -       -       smtpd
$((base + 1)) inet  n       -       n       -       -       smtpd
  -o smtpd_tls_wrappermode=yes
$((base + 5)) inet  n       -       n       -       -       smtpd
  -o smtpd_tls_cert_file=$dir/tls/selfsigned.pem
  -o smtpd_tls_key_file=$dir/tls/selfsigned.key
$((base + 6)) inet  n       -       n       -       -       smtpd
  -o smtpd_discard_ehlo_keywords=pipelining
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
virtual    unix  -       n       n       -       -       virtual
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
$((base + 2)) inet  n       -       n       -       -       smtpd
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o smtpd_relay_restrictions=
  -o { smtpd_recipient_restrictions = check_recipient_access static:{550 5.1.1 Simulated remote MX: user unknown}, reject }
$((base + 3)) inet  n       -       n       -       -       smtpd
  -o smtpd_tls_security_level=none
  -o smtpd_sasl_auth_enable=no
  -o { smtpd_relay_restrictions = permit_mynetworks, reject }
  -o { smtpd_recipient_restrictions = permit_mynetworks, reject }
nouser     unix  -       n       n       -       -       pipe
  user=nobody argv=/bin/sh $dir/etc/nouser.sh
dsnhook    unix  -       n       n       -       -       pipe
  user=nobody argv=/bin/sh $dir/etc/dsnhook.sh \${recipient}
CF
  printf 'exit 67\n' > "$dir/etc/nouser.sh"
  cat > "$dir/etc/dsnhook.sh" <<'SH'
id=$(printf '%s' "$1" | sed -n 's/^[^+]*+\(msg_[0-9a-f]*\)-[0-9]*@.*$/\1/p')
route=$(dirname "$0")/../dsnhook.d/$id
[ -n "$id" ] || exit 75
url=$(cat "$route.url" 2>/dev/null) || exit 75
token=$(cat "$route.token" 2>/dev/null) || exit 75
curl --fail --silent --output /dev/null --max-time 30 \
  -H "Authorization: Bearer $token" -H "Content-Type: message/rfc822" \
  --data-binary @- "$url" || exit 75
SH
  cat > "$dir/etc/sasl/smtpd.conf" <<CF
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: $dir/etc/sasl/sasldb2
CF
  echo -n "$pass" | saslpasswd2 -c -p -f "$dir/etc/sasl/sasldb2" -u "$realm" "$user"
  chgrp postfix "$dir/etc/sasl/sasldb2"
  chmod 640 "$dir/etc/sasl/sasldb2"
}

running() { [ -f "$dir/etc/main.cf" ] && postfix -c "$dir/etc" status >/dev/null 2>&1; }

stop() {
  if running; then
    postfix -c "$dir/etc" stop >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do running || return 0; sleep 0.1; done
    postfix -c "$dir/etc" abort >/dev/null 2>&1 || true
  fi
}

start_fresh() {
  install_packages
  stop
  rm -rf "$dir"
  mkdir -p "$dir"/{etc/sasl,queue,data,tls,sink/new,sink/cur,sink/tmp}
  chmod 755 "$dir"
  chown postfix "$dir/data"
  chown -R nobody:nogroup "$dir/sink"
  write_tls
  write_config
  start
}

start() {
  postfix -c "$dir/etc" check
  postfix -c "$dir/etc" start >/dev/null 2>&1 || { cat "$dir/maillog" >&2 2>/dev/null; exit 1; }
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$base") 2>/dev/null; then
      echo "postfix.sh: upstream on 127.0.0.1:$base (starttls) and :$((base + 1)) (tls), maildir $dir/sink" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "postfix.sh: postfix did not open port $base" >&2
  cat "$dir/maillog" >&2 2>/dev/null || true
  exit 1
}

case "$cmd" in
  start) start_fresh ;;
  stop) stop ;;
  restart) stop; start ;;
  *) echo "usage: postfix.sh start|stop|restart [DIR] [BASE_PORT]" >&2; exit 2 ;;
esac
