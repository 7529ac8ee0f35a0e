#!/usr/bin/env bash
# Measures how fast mailgate accepts messages (each one fsynced before its 202): a
# release build on the sandbox transport with a fresh data dir. Prints figures; asserts
# nothing. Usage: scripts/bench.sh [N sequential requests, default 1000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
port=${BENCH_PORT:-18080}

cargo build --release --locked
work=$(mktemp -d)
MAILGATE_HTTP__LISTEN=127.0.0.1:$port MAILGATE_STORAGE__PATH="$work/data" MAILGATE_LOG__LEVEL=warn \
  target/release/mailgate serve >"$work/stdout" 2>"$work/stderr" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "localhost:$port/healthz" >/dev/null && break; sleep 0.1; done
token=$(sed -n '/Dev token/{n;p}' "$work/stdout")
body='{"from":"Bench <bench@acme.test>","to":["ana@example.test"],"subject":"Bench","text":"hello","html":"<p>hello</p>"}'

echo "== sequential: $n POST /v1/messages with one curl process each"
start=$(date +%s.%N)
for _ in $(seq "$n"); do
  curl -s -o /dev/null -w '%{http_code}\n' "localhost:$port/v1/messages" \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d "$body"
done | sort | uniq -c
end=$(date +%s.%N)
awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "%d accepted in %.2f s = %.0f messages/s\n", n, e - s, n / (e - s) }'

if ! command -v wrk >/dev/null; then
  apt-get install -y -q wrk >/dev/null 2>&1 || true
fi
if command -v wrk >/dev/null; then
  cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
  for c in 1 16 64; do
    threads=$(( c < 2 ? c : 2 ))
    echo "== wrk: $threads thread(s), $c connection(s), 10 s"
    wrk -t"$threads" -c"$c" -d10s --latency -s "$work/post.lua" "http://127.0.0.1:$port/v1/messages" \
      | grep -E 'Requests/sec|50%|99%|Non-2xx'
  done
fi
if command -v wrk >/dev/null; then
  # The same send through the shipped `welcome` template: the difference is what
  # rendering (strict, cached compile) adds to POST /v1/messages.
  data=$(tr -d '\n' < templates/welcome/sample.json)
  cat >"$work/template.lua" <<LUA
wrk.method = "POST"
wrk.body = [[{"from":"Bench <bench@acme.test>","to":["ana@example.test"],"template":{"name":"welcome","data":$data}}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
  echo "== wrk, template send (welcome): 2 threads, 16 connections, 10 s"
  wrk -t2 -c16 -d10s --latency -s "$work/template.lua" "http://127.0.0.1:$port/v1/messages" \
    | grep -E 'Requests/sec|50%|99%|Non-2xx'
  cat >"$work/render.lua" <<LUA
wrk.method = "POST"
wrk.body = [[{"data":$data}]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
LUA
  echo "== wrk, render only (POST /v1/templates/welcome/render, nothing stored): 2 threads, 16 connections, 10 s"
  wrk -t2 -c16 -d10s --latency -s "$work/render.lua" "http://127.0.0.1:$port/v1/templates/welcome/render" \
    | grep -E 'Requests/sec|50%|99%|Non-2xx'
fi
echo "== resident memory after the run: $(ps -o rss= -p $pid | awk '{printf "%.1f MiB", $1/1024}')"
echo "== sandbox files written: $(ls "$work/data/sandbox" | wc -l)"
