#!/usr/bin/env bash
# Scale benchmark (README "Benchmarks"): one node holding a deep queue, and one under
# steady traffic with retention. Release build, default settings but rate limits off.
#   1. fills N scheduled messages of 2 KB (default 1,000,000) through POST /v1/messages
#      with wrk (64 connections) and prints, per 100,000, the accept rate, the RSS and
#      the data directory's bytes per message;
#   2. idle CPU over 10 s with all of them waiting;
#   3. restart to serving: SIGTERM, start again, time until /healthz answers;
#   4. the drain rate once they come due, into Postfix's smtp-sink (8 connections), then
#      the latency of GET /v1/stats over 30 days with all of them stored, and of every
#      console page (signed in by cookie);
#   5. steady traffic (STEADY_RATE msg/s for STEADY_SECS s, default 400 and 120) with
#      retention = 30s and mime_retention = 10s: disk use every 10 s, which levels off.
# Asserts nothing; not part of the test suite. CACHE_BYTES sets storage.cache_bytes for
# the fill (default 128 MiB, mailgate's default).
#
#   scripts/bench-scale.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-1000000}
step=$(( n < 100000 ? n : 100000 ))
steady_rate=${STEADY_RATE:-400}
steady_secs=${STEADY_SECS:-120}
base=${MAILGATE_TEST_POSTFIX_PORT:-10587}
sink_port=$((base + 4))
work=$(mktemp -d /tmp/mailgate-scale.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true; done
  rm -rf "$work"
}
trap 'status=$?; cleanup; exit $status' EXIT

command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null
command -v smtp-sink >/dev/null || tests/support/postfix.sh start >/dev/null
cargo build --release --locked 2>&1 | tail -1

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.2f", e - s }'; }
rss_mib() { ps -o rss= -p "$1" | awk '{ printf "%.0f", $1 / 1024 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
disk_bytes() { du -sb "$1" | awk '{ print $1 }'; }

smtp-sink -u nobody "127.0.0.1:$sink_port" 1024 &
pids+=($!)
sleep 0.3

# A 2 KB text body.
text=$(head -c 1500 /dev/zero | tr '\0' 'x' | fold -w 72 | paste -sd' ')

port=$(free_port)
start_mailgate() { # config file, log name; sets mailgate_pid
  MAILGATE_HTTP__LISTEN="127.0.0.1:$port" MAILGATE_LOG__LEVEL=warn \
    target/release/mailgate serve --config "$1" >>"$work/$2.stdout" 2>>"$work/$2.stderr" &
  mailgate_pid=$!
  pids+=("$mailgate_pid")
  for _ in $(seq 200); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.025; done
  echo "mailgate did not start" >&2; cat "$work/$2.stderr" >&2; exit 1
}
write_config() { # file, data dir, extra storage keys
  cat >"$1" <<TOML
[storage]
path = "$2"
$3

[[upstreams]]
name = "sink"
host = "127.0.0.1"
port = $sink_port
tls = "none"
max_connections = 8

[delivery]
max_queue_depth = 0

[limits]
messages_per_second = 0
TOML
}

# --- 1. fill -------------------------------------------------------------------------
write_config "$work/scale.toml" "$work/data" "cache_bytes = ${CACHE_BYTES:-134217728}"
start_mailgate "$work/scale.toml" scale
token=$(sed -n '/Dev token/{n;p}' "$work/scale.stdout")
# Due once the fill is surely over (≥ 4,000/s), plus the idle and restart phases.
due_epoch=$(( $(date +%s) + n / 4000 + 60 ))
due=$(date -u -d "@$due_epoch" +%Y-%m-%dT%H:%M:%SZ)
post_lua "$work/post.lua" "$token" "{\"from\":\"Bench <bench@acme.test>\",\"to\":[\"ana@example.test\"],\"subject\":\"Scale\",\"text\":\"$text\",\"send_at\":\"$due\"}"

echo "== 1. fill: $n scheduled messages (due $due), 64 connections"
printf '%10s %12s %9s %14s\n' accepted "accept/s" "RSS MiB" "disk B/msg"
filled=0
fill_started=$(now)
while [ "$filled" -lt "$n" ]; do
  before=$(counter mailgate_messages_accepted_total)
  chunk_start=$(now)
  BENCH_PER_THREAD=$((step / 2)) wrk -t2 -c64 -d600s -s "$work/post.lua" "http://127.0.0.1:$port/v1/messages" >"$work/wrk.txt" &
  wrk_pid=$!
  while [ $(( $(counter mailgate_messages_accepted_total) - before )) -lt "$step" ] && kill -0 "$wrk_pid" 2>/dev/null; do
    sleep 0.05
  done
  chunk_secs=$(since "$chunk_start")
  kill -INT "$wrk_pid"; wait "$wrk_pid" || true
  filled=$(counter mailgate_messages_accepted_total)
  printf '%10d %12.0f %9s %14.0f\n' "$filled" "$(awk -v n="$step" -v s="$chunk_secs" 'BEGIN { print n / s }')" \
    "$(rss_mib "$mailgate_pid")" "$(awk -v b="$(disk_bytes "$work/data")" -v n="$filled" 'BEGIN { print b / n }')"
done
echo "   filled in $(since "$fill_started") s"

# --- 2. idle CPU ---------------------------------------------------------------------
sleep 2
ticks=$(getconf CLK_TCK)
before=$(cpu_ticks "$mailgate_pid")
sleep 10
after=$(cpu_ticks "$mailgate_pid")
echo "== 2. idle with $filled waiting: $(awk -v d="$((after - before))" -v t="$ticks" 'BEGIN { printf "%.1f", 100 * d / t / 10 }') % of one core over 10 s, RSS $(rss_mib "$mailgate_pid") MiB"

# --- 3. restart ----------------------------------------------------------------------
kill -TERM "$mailgate_pid"; wait "$mailgate_pid" 2>/dev/null || true
restart_started=$(now)
start_mailgate "$work/scale.toml" scale
echo "== 3. restart to serving with $filled queued: $(since "$restart_started") s"

# --- 4. drain ------------------------------------------------------------------------
while [ "$(date +%s)" -lt "$due_epoch" ]; do sleep 0.2; done
drain_started=$(now)
while [ "$(counter mailgate_recipients_total)" -lt "$filled" ]; do sleep 0.5; done
drain_secs=$(since "$drain_started")
echo "== 4. drain: $filled delivered into smtp-sink in $drain_secs s: $(awk -v n="$filled" -v s="$drain_secs" 'BEGIN { printf "%.0f", n / s }') msg/s, RSS $(rss_mib "$mailgate_pid") MiB"

# --- 4b. reports over what is stored -------------------------------------------------
query_ms() { # path [accept]: p50 and worst of 20 requests
  for _ in $(seq 20); do
    curl -s -o /dev/null -w '%{time_total}\n' -H "Authorization: Bearer $token" \
      -H "Accept: ${2:-application/json}" "127.0.0.1:$port$1"
  done | sort -n | awk '{ t[NR] = $1 * 1000 } END { printf "p50 %.1f ms, max %.1f ms", t[int((NR + 1) / 2)], t[NR] }'
}
month_ago=$(date -u -d '30 days ago' +%Y-%m-%dT%H:%M:%SZ)
echo "== 4b. GET /v1/stats with $filled messages stored (the 20 requests of each in a row)"
echo "   30 days by day:                       $(query_ms "/v1/stats?from=$month_ago")"
echo "   30 days by day, Europe/Paris, as CSV: $(query_ms "/v1/stats?from=$month_ago&timezone=Europe/Paris" text/csv)"
echo "   30 days by day, group_by=upstream:    $(query_ms "/v1/stats?from=$month_ago&group_by=upstream")"
echo "   30 days by hour:                      $(query_ms "/v1/stats?from=$month_ago&interval=hour")"

# --- 4c. the console over what is stored ---------------------------------------------
curl -s -o /dev/null -c "$work/console.jar" -H "Origin: http://127.0.0.1:$port" \
  --data-urlencode "token=$token" "127.0.0.1:$port/console/login"
page_ms() { # path: p50 and worst of 20 requests of a console page, signed in
  for _ in $(seq 20); do
    curl -s -o /dev/null -b "$work/console.jar" -w '%{http_code} %{time_total}\n' "127.0.0.1:$port$1"
  done | sort -k2 -n | awk -v p="$1" '$1 != 200 { bad = $1 } { t[NR] = $2 * 1000 }
    END { if (bad) { printf "HTTP %s for %s", bad, p; exit } printf "p50 %5.1f ms, max %5.1f ms", t[int((NR + 1) / 2)], t[NR] }'
}
newest=$(curl -s -H "Authorization: Bearer $token" "127.0.0.1:$port/v1/messages?limit=1" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["data"][0]["id"])')
echo "== 4c. console pages with $filled messages stored (time to last byte on loopback, 20 of each in a row)"
echo "   overview, 24 h:                        $(page_ms /console)"
echo "   overview, 30 days:                     $(page_ms '/console?range=30d')"
echo "   activity, newest 50:                   $(page_ms /console/messages)"
echo "   activity, by recipient (all match):    $(page_ms '/console/messages?recipient=ana%40example.test')"
echo "   activity, by recipient (none match):   $(page_ms '/console/messages?recipient=nobody%40example.test&status=failed')"
echo "   activity, created on or before a day:  $(page_ms "/console/messages?until=$(date -u -d yesterday +%Y-%m-%d)")"
echo "   message page:                          $(page_ms "/console/messages/$newest")"
echo "   message .eml:                          $(page_ms "/console/messages/$newest/eml")"
echo "   templates:                             $(page_ms /console/templates)"
echo "   template editor:                       $(page_ms /console/templates/welcome)"
echo "   suppressions:                          $(page_ms /console/suppressions)"
echo "   webhooks:                              $(page_ms /console/webhooks)"
kill -TERM "$mailgate_pid"; wait "$mailgate_pid" 2>/dev/null || true

# --- 5. steady traffic with retention ------------------------------------------------
write_config "$work/steady.toml" "$work/steady" 'retention = "30s"
mime_retention = "10s"'
start_mailgate "$work/steady.toml" steady
token=$(sed -n '/Dev token/{n;p}' "$work/steady.stdout")
echo "== 5. steady: $steady_rate msg/s for $steady_secs s, retention 30 s (MIME 10 s)"
printf '%8s %10s %12s %9s\n' "second" accepted "disk MiB" "RSS MiB"
python3 - "$port" "$token" "$steady_rate" "$steady_secs" "$text" <<'PY' &
import json, sys, threading, time, urllib.request
port, token, rate, secs, text = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
body = json.dumps({"from": "Bench <bench@acme.test>", "to": ["ana@example.test"], "subject": "Steady", "text": text}).encode()
def send():
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/messages", data=body,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=10).read()
    except Exception:
        pass
start = time.time()
sent = 0
while time.time() - start < secs:
    due = int((time.time() - start) * rate)
    while sent < due:
        threading.Thread(target=send).start()
        sent += 1
    time.sleep(0.005)
PY
load_pid=$!
pids+=("$load_pid")
steady_started=$(date +%s)
while kill -0 "$load_pid" 2>/dev/null; do
  sleep 10
  printf '%8d %10d %12.1f %9s\n' "$(( $(date +%s) - steady_started ))" \
    "$(( $(counter mailgate_messages_accepted_total) ))" \
    "$(awk -v b="$(disk_bytes "$work/steady")" 'BEGIN { print b / 1048576 }')" "$(rss_mib "$mailgate_pid")"
done
