#!/usr/bin/env bash
# Delivery benchmark (README "Benchmarks"): prints, side by side from one run,
#   (a) the accept rate of POST /v1/messages with 64 concurrent clients, p50 / p99;
#   (b) mailgate end to end into Postfix's smtp-sink over N messages (default 20,000);
#   (c) the reference: smtp-source → Postfix → smtp-sink, the same N messages, 8 sessions;
#   (d) the physical limit: smtp-source -d → smtp-sink directly, 8 persistent sessions
#       (each connection reused for message after message, as mailgate reuses its own);
#   (e) batch accept: POST /v1/messages/batch of 100 messages, 16 connections;
#   (f) accept latency p99 at half the rate (a) measured, from an open-loop fixed-rate
#       generator (benches/fixed_rate.rs: latency from each request's scheduled start);
#   (g) (a) and (b) again with every message DKIM-signed (RSA-2048) for a verified
#       sender domain (dnsmasq serves its records), and the cost of one signature
#       (`cargo bench --bench dkim`);
# and the ratios. Release build, default settings (every 202 fsynced), 2 KB messages,
# one recipient each. Not part of the test suite; asserts nothing.
#
# With BASELINE=<git revision> (e.g. BASELINE=HEAD~3), that revision is built too (in a
# worktree, target dir target/bench-baseline) and (a) and (b) run ROUNDS times (default
# 2) for each binary, alternating, so a change's cost is measured in one run on one
# machine: the summary adds the best rate of each and their ratio.
#
#   [BASELINE=rev] [ROUNDS=2] scripts/bench-delivery.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-20000}
baseline=${BASELINE:-}
rounds=${ROUNDS:-2}
batch_rate=0 half_rate=0 half_p99=0
sessions=8
base=${MAILGATE_TEST_POSTFIX_PORT:-10587}
postfix_dir=${MAILGATE_TEST_POSTFIX_DIR:-/tmp/mailgate-postfix}
bench_smtpd=$((base + 3))
sink_port=$((base + 4))
work=$(mktemp -d /tmp/mailgate-bench.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do { kill "$pid" && wait "$pid"; } 2>/dev/null || true; done
  if [ -d "$work/baseline-src" ]; then git worktree remove --force "$work/baseline-src" || true; fi
  rm -rf "$work"
}
trap 'status=$?; cleanup; exit $status' EXIT

command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null
tests/support/postfix.sh start >/dev/null
cargo build --release --locked 2>&1 | tail -1
# The helper benches are built before anything is measured: a build between (e) and
# (f) once left (f) measuring a machine that had just compiled for minutes.
cargo bench --locked --no-run --bench fixed_rate --bench dkim 2>&1 | tail -1
if [ -n "$baseline" ]; then
  baseline_sha=$(git rev-parse --short "$baseline^{commit}")
  git worktree add --detach "$work/baseline-src" "$baseline_sha" >/dev/null 2>&1
  echo "building the baseline $baseline ($baseline_sha)"
  CARGO_TARGET_DIR="$PWD/target/bench-baseline" cargo build --release --locked \
    --manifest-path "$work/baseline-src/Cargo.toml" 2>&1 | tail -1
fi

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
rate() { awk -v n="$1" -v s="$2" -v e="$3" 'BEGIN { printf "%.0f", n / (e - s) }'; }

start_sink() {
  smtp-sink -u nobody "127.0.0.1:$sink_port" 1024 &
  pids+=($!)
  sleep 0.3
}

# A 2 KB text body.
text=$(head -c 1500 /dev/zero | tr '\0' 'x' | fold -w 72 | paste -sd' ')

# --- (a) and (b): mailgate into smtp-sink -------------------------------------------
start_sink
# A verified sender domain for the signed run: dnsmasq answers for it on $dns_port.
dns_port=$(free_port)
sign_domain=bench-mail.net
verify_domain() { # token: creates $sign_domain, publishes its records, verifies it
  local answer
  answer=$(curl -s -H "Authorization: Bearer $1" -H 'Content-Type: application/json' \
    -d "{\"name\":\"$sign_domain\"}" "127.0.0.1:$port/v1/domains")
  python3 - "$answer" "$work/dnsmasq.conf" <<'PY'
import json, sys
domain = json.loads(sys.argv[1])
lines = ["local=/bench-mail.net/", "local=/bounces.bench.test/", "host-record=bounces.bench.test,127.0.0.1"]
for r in domain["records"]:
    if r["type"] == "TXT":
        v = r["value"]
        lines.append("txt-record=%s,%s" % (r["name"], ",".join('"%s"' % v[i:i + 255] for i in range(0, len(v), 255))))
    else:
        lines.append("cname=%s,%s" % (r["name"], r["value"]))
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.1 \
    --user=root --pid-file --port="$dns_port" --conf-file="$work/dnsmasq.conf" 2>/dev/null &
  pids+=($!)
  dnsmasq_pid=$!
  sleep 0.3
  curl -s -X POST -H "Authorization: Bearer $1" "127.0.0.1:$port/v1/domains/$sign_domain/verify" |
    python3 -c 'import json, sys; s = json.load(sys.stdin)["status"]; print("   sender domain:", s); sys.exit(s != "verified")'
}

# Runs (a) and (b) against the binary $1 (label $2), DKIM-signing when $3 is "signed";
# sets accept_rate and e2e_rate.
run_mailgate() {
  local bin=$1 label=$2 signed=${3:-} data=$work/data-$2-$RANDOM
  port=$(free_port)
  cat >"$work/mailgate.toml" <<TOML
[storage]
path = "$data"

[[upstreams]]
name = "sink"
host = "127.0.0.1"
port = $sink_port
tls = "none"
max_connections = $sessions

[limits]
messages_per_second = 0

[delivery]
return_path_domain = "bounces.bench.test"
max_queue_depth = 0
TOML
  # Only the signed run names [dns]: a BASELINE from before sender domains refuses it.
  if [ "$signed" = signed ]; then printf '\n[dns]\nnameservers = ["127.0.0.1:%s"]\n' "$dns_port" >>"$work/mailgate.toml"; fi
  MAILGATE_HTTP__LISTEN="127.0.0.1:$port" MAILGATE_LOG__LEVEL=warn \
    "$bin" serve --config "$work/mailgate.toml" >"$work/stdout" 2>"$work/stderr" &
  pids+=($!)
  local mailgate_pid=$!
  for _ in $(seq 100); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local token
  token=$(sed -n '/Dev token/{n;p}' "$work/stdout")
  local from=bench@acme.test
  if [ "$signed" = signed ]; then
    verify_domain "$token"
    from=bench@$sign_domain
  fi
  local body="{\"from\":\"Bench <$from>\",\"to\":[\"ana@example.test\"],\"subject\":\"Bench\",\"text\":\"$text\"}"
  post_lua "$work/post.lua" "$token" "$body"

  echo "== (a) $label accept rate: wrk, 2 threads, 64 connections, 10 s (delivery into smtp-sink running)"
  wrk -t2 -c64 -d10s --latency -s "$work/post.lua" "http://127.0.0.1:$port/v1/messages" >"$work/wrk-a.txt"
  grep -E 'Requests/sec|50%|99%|Non-2xx' "$work/wrk-a.txt"
  accept_rate=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$work/wrk-a.txt")
  # Let the queue drain before (b) starts.
  while [ "$(counter mailgate_recipients_total)" -lt "$(counter mailgate_messages_accepted_total)" ]; do sleep 0.2; done

  echo "== (b) $label end to end: $n messages, 64 clients → mailgate → smtp-sink ($sessions connections)"
  local accepted_before sent_before start accepted_at accepted end wrk_pid
  accepted_before=$(counter mailgate_messages_accepted_total)
  sent_before=$(counter mailgate_recipients_total)
  start=$(now)
  # Each wrk thread stops after its share; wrk itself runs until told to stop (SIGINT).
  BENCH_PER_THREAD=$((n / 2)) wrk -t2 -c64 -d600s -s "$work/post.lua" "http://127.0.0.1:$port/v1/messages" >"$work/wrk-b.txt" &
  wrk_pid=$!
  while [ $(( $(counter mailgate_messages_accepted_total) - accepted_before )) -lt "$n" ]; do sleep 0.05; done
  accepted_at=$(now)
  sleep 0.5
  kill -INT "$wrk_pid"
  wait "$wrk_pid" || true
  accepted=$(( $(counter mailgate_messages_accepted_total) - accepted_before ))
  while [ $(( $(counter mailgate_recipients_total) - sent_before )) -lt "$accepted" ]; do sleep 0.05; done
  end=$(now)
  e2e_rate=$(rate "$accepted" "$start" "$end")
  echo "$accepted accepted in $(awk -v s="$start" -v e="$accepted_at" 'BEGIN{printf "%.2f", e-s}') s, all delivered after $(awk -v s="$start" -v e="$end" 'BEGIN{printf "%.2f", e-s}') s: $e2e_rate msg/s end to end"
  grep -E 'Non-2xx' "$work/wrk-b.txt" || true
  echo "   mailgate RSS after: $(ps -o rss= -p "$mailgate_pid" | awk '{printf "%.0f MiB", $1/1024}')"
  # The writer thread is the serial part: its CPU per message is the least noisy cost.
  local writer total
  writer=$(ps -L -o tid=,comm= -p "$mailgate_pid" | awk '$2 == "store-writer" { print $1 }')
  total=$(counter mailgate_messages_accepted_total)
  writer_us=$(awk -v t="$(awk '{ print $14 + $15 }' "/proc/$mailgate_pid/task/$writer/stat")" \
    -v hz="$(getconf CLK_TCK)" -v n="$total" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  echo "   writer thread CPU: $writer_us µs per message (accepted, leased and recorded), over $total"
  if [ -z "$signed" ] && [ "$label" = current ]; then
    # (e) the fast lane: the same message 100 times per POST /v1/messages/batch.
    while [ "$(counter mailgate_recipients_total)" -lt "$(counter mailgate_messages_accepted_total)" ]; do sleep 0.2; done
    local batch before_batch batch_start
    batch=$(python3 -c 'import json, sys; m = json.loads(sys.argv[1]); print(json.dumps({"messages": [m] * 100}))' "$body")
    post_lua "$work/batch.lua" "$token" "$batch"
    echo "== (e) $label batch accept: POST /v1/messages/batch of 100, wrk, 2 threads, 16 connections, 10 s"
    before_batch=$(counter mailgate_messages_accepted_total)
    batch_start=$(now)
    wrk -t2 -c16 -d10s --latency -s "$work/batch.lua" "http://127.0.0.1:$port/v1/messages/batch" >"$work/wrk-e.txt"
    batch_rate=$(rate "$(( $(counter mailgate_messages_accepted_total) - before_batch ))" "$batch_start" "$(now)")
    grep -E 'Requests/sec|50%|99%|Non-2xx' "$work/wrk-e.txt"
    echo "$batch_rate messages/s accepted in batches of 100"
    # (f) latency under a steady load: half the rate (a) measured, open loop.
    while [ "$(counter mailgate_recipients_total)" -lt "$(counter mailgate_messages_accepted_total)" ]; do sleep 0.2; done
    half_rate=$(( accept_rate / 2 ))
    echo "== (f) $label accept latency at half the maximum rate ($half_rate/s), fixed rate, 10 s"
    half_load=$(BENCH_URL="http://127.0.0.1:$port/v1/messages" BENCH_TOKEN=$token BENCH_BODY=$body \
      BENCH_RATE=$half_rate BENCH_SECS=10 cargo bench --locked --bench fixed_rate 2>/dev/null | grep '^fixed rate')
    echo "$half_load"
    half_p99=$(printf '%s' "$half_load" | sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p')
  fi
  kill "$mailgate_pid" && wait "$mailgate_pid" 2>/dev/null || true
  if [ "$signed" = signed ]; then kill "$dnsmasq_pid" && wait "$dnsmasq_pid" 2>/dev/null || true; fi
  rm -rf "$data"
}

max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'; }
if [ -z "$baseline" ]; then
  run_mailgate target/release/mailgate current
else
  best_accept=0 best_e2e=0 base_accept=0 base_e2e=0 best_writer=1e9 base_writer=1e9
  for round in $(seq "$rounds"); do
    echo "--- round $round of $rounds"
    run_mailgate target/bench-baseline/release/mailgate "baseline-$baseline_sha"
    base_accept=$(max "$base_accept" "$accept_rate") base_e2e=$(max "$base_e2e" "$e2e_rate")
    base_writer=$(min "$base_writer" "$writer_us")
    run_mailgate target/release/mailgate current
    best_accept=$(max "$best_accept" "$accept_rate") best_e2e=$(max "$best_e2e" "$e2e_rate")
    best_writer=$(min "$best_writer" "$writer_us")
  done
  accept_rate=$best_accept e2e_rate=$best_e2e
fi

# --- (g) the same with DKIM signing -------------------------------------------------
plain_accept=$accept_rate plain_e2e=$e2e_rate
run_mailgate target/release/mailgate signed signed
signed_accept=$accept_rate signed_e2e=$e2e_rate
accept_rate=$plain_accept e2e_rate=$plain_e2e
echo "== (g) cost of one DKIM signature (cargo bench --bench dkim)"
cargo bench --locked --bench dkim 2>/dev/null | grep -E 'µs per message'

# --- (c) reference: smtp-source → Postfix → smtp-sink --------------------------------
echo "== (c) reference: smtp-source ($sessions sessions) → Postfix → smtp-sink, $n messages of 2 KB"
log="$postfix_dir/maillog"
offset=$(stat -c %s "$log")
start=$(now)
smtp-source -s "$sessions" -m "$n" -l 2048 -f bench@acme.test -t ana@sink.bench "127.0.0.1:$bench_smtpd"
accepted_at=$(now)
relayed() { tail -c +"$((offset + 1))" "$log" | grep -c "relay=127.0.0.1\[127.0.0.1\]:$sink_port.*status=sent" || true; }
while [ "$(relayed)" -lt "$n" ]; do sleep 0.2; done
end=$(now)
postfix_accept=$(rate "$n" "$start" "$accepted_at")
postfix_relay=$(rate "$n" "$start" "$end")
echo "Postfix accepted $postfix_accept msg/s, relayed end to end $postfix_relay msg/s"

# --- (d) physical limit: smtp-source → smtp-sink ---------------------------------------
echo "== (d) smtp-source -d → smtp-sink directly, $sessions persistent sessions, $n messages"
start=$(now)
smtp-source -d -s "$sessions" -m "$n" -l 2048 -f bench@acme.test -t ana@example.test "127.0.0.1:$sink_port"
end=$(now)
direct=$(rate "$n" "$start" "$end")
echo "$direct msg/s"

echo
echo "== summary"
printf '%-52s %8s msg/s\n' "(a) mailgate accept, 64 clients" "$accept_rate" \
  "(b) mailgate end to end into smtp-sink" "$e2e_rate" \
  "(c) Postfix accept (smtp-source, $sessions sessions)" "$postfix_accept" \
  "(c) Postfix end to end into smtp-sink" "$postfix_relay" \
  "(d) smtp-source -d → smtp-sink, persistent sessions" "$direct" \
  "(e) mailgate batch accept (100 per request)" "$batch_rate" \
  "(g) mailgate accept, DKIM-signed (RSA-2048)" "$signed_accept" \
  "(g) mailgate end to end, DKIM-signed (RSA-2048)" "$signed_e2e"
awk -v a="$accept_rate" -v b="$e2e_rate" -v pa="$postfix_accept" -v pr="$postfix_relay" -v d="$direct" 'BEGIN {
  printf "accept ratio   mailgate / Postfix = %.2f (target ≥ 15)\n", a / pa
  printf "e2e ratio      mailgate / Postfix = %.2f (target ≥ 4)\n", b / pr
  printf "e2e / physical limit              = %.2f (goal ≥ 0.5)\n", b / d
}'
printf '%-52s %8s ms (target ≤ 10)\n' "(f) accept p99 at $half_rate/s, open loop" "$half_p99"
awk -v a="$accept_rate" -v b="$e2e_rate" -v sa="$signed_accept" -v sb="$signed_e2e" -v ba="$batch_rate" 'BEGIN {
  printf "batch / single accept             = %.2f (target ≥ 2)\n", ba / a
  printf "signed / unsigned: accept %.2f, end to end %.2f\n", sa / a, sb / b
}'
if [ -n "$baseline" ]; then
  echo
  echo "== against the baseline $baseline ($baseline_sha), best of $rounds rounds each"
  printf '%-24s %8s %8s msg/s\n' "" baseline current
  printf '%-24s %8s %8s\n' "(a) accept" "$base_accept" "$best_accept" "(b) end to end" "$base_e2e" "$best_e2e" \
    "writer µs/message (min)" "$base_writer" "$best_writer"
  awk -v a="$best_accept" -v ba="$base_accept" -v b="$best_e2e" -v bb="$base_e2e" -v w="$best_writer" -v bw="$base_writer" 'BEGIN {
    printf "accept current / baseline = %.3f\n", a / ba
    printf "e2e    current / baseline = %.3f\n", b / bb
    printf "writer current / baseline = %.3f\n", w / bw
  }'
fi
