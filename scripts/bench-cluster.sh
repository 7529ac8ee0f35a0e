#!/usr/bin/env bash
# Cluster benchmark (README "Benchmarks"): mailgate on sled and on PostgreSQL with 1, 2
# and 4 nodes, side by side in one run on this machine, end to end into Postfix's
# smtp-sink, with what each message costs the database:
#   (a) N messages (default 20,000) posted by 64 clients spread over the nodes, until
#       every one is delivered: msg/s end to end, per configuration;
#   (b) the same with an upstream that answers DATA after 1 s (smtp-sink -w 1), so the
#       nodes wait on SMTP rather than on CPU: 1 node against 4 (32 connections each);
#   (c) one PostgreSQL node again while another session holds a REPEATABLE READ
#       transaction open (vacuum cannot remove what the run deletes), against (a);
#   (d) the wire's limit for reference: smtp-source -d straight into smtp-sink.
# For each PostgreSQL run: write transactions per message (transaction ids used), all
# transactions per message (pg_stat_database.xact_commit, reads included), WAL fsyncs
# and WAL bytes per message (pg_stat_wal). Release build, 2 KB messages, one recipient.
# Starts its own private PostgreSQL (tests/support/postgres.sh, fsync on) and a fresh
# schema per run. Not part of the test suite; asserts nothing.
#
#   scripts/bench-cluster.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-20000}
delayed_n=1024
pg_dir=/tmp/mailgate-bench-pg
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d /tmp/mailgate-cluster.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do { kill "$pid" && wait "$pid"; } 2>/dev/null || true; done
  tests/support/postgres.sh stop "$pg_dir" "$pg_port" || true
  rm -rf "$work"
}
trap 'status=$?; cleanup; exit $status' EXIT

command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null
command -v smtp-sink >/dev/null || tests/support/postfix.sh start >/dev/null
cargo build --release --locked 2>&1 | tail -1
# The build leaves hundreds of MB of dirty pages; written back during the first runs,
# they stall every fsync (one PostgreSQL node measured 1.2k msg/s right after a build,
# 1.9-2.1k without one).
sync
tests/support/postgres.sh start "$pg_dir" "$pg_port"
pg_url=$(tests/support/postgres.sh url "$pg_dir" "$pg_port")
psql() { command psql -X -q -At "$pg_url" "$@"; }

# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
rate() { awk -v n="$1" -v s="$2" -v e="$3" 'BEGIN { printf "%.0f", n / (e - s) }'; }
per() { awk -v a="$1" -v n="$2" 'BEGIN { printf "%.3f", a / n }'; }

text=$(head -c 1500 /dev/zero | tr '\0' 'x' | fold -w 72 | paste -sd' ')
secret=$work/hs256
head -c 48 /dev/urandom | base64 -w0 >"$secret"
body="{\"from\":\"Bench <bench@acme.test>\",\"to\":[\"ana@example.test\"],\"subject\":\"Bench\",\"text\":\"$text\"}"

start_sink() { # port, extra smtp-sink options
  smtp-sink -u nobody -m 1024 ${2:-} "127.0.0.1:$1" 1024 &
  pids+=($!)
  sink_pid=$!
  sleep 0.3
}

# The database's counters: transaction ids, commits, WAL fsyncs, WAL bytes.
pg_counters() {
  psql -c "SELECT pg_current_xact_id()::text::bigint, (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
           wal_sync, wal_bytes FROM pg_stat_wal" | tr '|' ' '
}

# Starts $2 nodes on backend $1 delivering to $3 with $4 connections each; sets ports.
start_nodes() {
  local backend=$1 count=$2 sink=$3 conns=$4 schema url_file
  ports=() node_pids=()
  url_file=$work/url-$RANDOM
  if [ "$backend" = postgres ]; then
    schema=b_$RANDOM$RANDOM
    psql -c "CREATE SCHEMA $schema"
    echo "$pg_url?options=-csearch_path%3D$schema" >"$url_file"
  fi
  for i in $(seq "$count"); do
    local port data=$work/node-$RANDOM
    port=$(free_port)
    mkdir -p "$data"
    {
      echo "[storage]"
      echo "path = \"$data\""
      if [ "$backend" = postgres ]; then
        echo "backend = \"postgres\""
        echo "url_file = \"$url_file\""
      fi
      cat <<TOML
[auth]
hs256_secret_file = "$secret"

[[upstreams]]
name = "sink"
host = "127.0.0.1"
port = $sink
tls = "none"
max_connections = $conns

[limits]
messages_per_second = 0

[delivery]
return_path_domain = "bounces.bench.test"
max_queue_depth = 0
TOML
    } >"$data/mailgate.toml"
    MAILGATE_HTTP__LISTEN="127.0.0.1:$port" MAILGATE_LOG__LEVEL=warn \
      target/release/mailgate serve --config "$data/mailgate.toml" >"$data/stdout" 2>"$data/stderr" &
    pids+=($!)
    node_pids+=($!)
    ports+=("$port")
    for _ in $(seq 100); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  done
  token=$(target/release/mailgate token issue --config "${data}/mailgate.toml" --tenant acme --scope messages:send 2>/dev/null)
  post_lua "$work/post.lua" "$token" "$body"
}

stop_nodes() {
  for pid in "${node_pids[@]}"; do kill "$pid" && wait "$pid" 2>/dev/null || true; done
}

sum_counter() { # metric summed over every node
  local total=0
  for port in "${ports[@]}"; do total=$((total + $(counter "$1"))); done
  echo "$total"
}

# Posts $1 messages spread over the nodes (64 connections in all) and waits until every
# one is delivered; sets e2e_rate.
run_load() {
  local count=$1 k=${#ports[@]} start end wrk_pids=() conns
  conns=$((64 / k))
  local sent_before accepted_before
  sent_before=$(sum_counter mailgate_recipients_total)
  accepted_before=$(sum_counter mailgate_messages_accepted_total)
  start=$(now)
  for port in "${ports[@]}"; do
    BENCH_PER_THREAD=$((count / k)) wrk -t1 -c"$conns" -d600s -s "$work/post.lua" "http://127.0.0.1:$port/v1/messages" >"$work/wrk-$port.txt" &
    wrk_pids+=($!)
  done
  local target=$(( (count / k) * k ))
  while [ $(( $(sum_counter mailgate_messages_accepted_total) - accepted_before )) -lt "$target" ]; do sleep 0.05; done
  sleep 0.3
  for pid in "${wrk_pids[@]}"; do kill -INT "$pid" 2>/dev/null; wait "$pid" || true; done
  accepted=$(( $(sum_counter mailgate_messages_accepted_total) - accepted_before ))
  while [ $(( $(sum_counter mailgate_recipients_total) - sent_before )) -lt "$accepted" ]; do sleep 0.05; done
  end=$(now)
  e2e_rate=$(rate "$accepted" "$start" "$end")
}

# One configuration: backend, nodes, label; prints and records its figures.
declare -A result
measure() {
  local backend=$1 count=$2 label=$3 before after
  start_nodes "$backend" "$count" "$sink_port" 8
  [ "$backend" = postgres ] && before=$(pg_counters)
  run_load "$n"
  local line="$label: $accepted messages, $e2e_rate msg/s end to end"
  if [ "$backend" = postgres ]; then
    after=$(pg_counters)
    read -r x0 c0 s0 w0 <<<"$before"
    read -r x1 c1 s1 w1 <<<"$after"
    line="$line; per message: $(per $((x1 - x0 - 1)) "$accepted") write transactions, $(per $((c1 - c0)) "$accepted") transactions in all, $(per $((s1 - s0)) "$accepted") WAL fsyncs, $(per $((w1 - w0)) "$accepted") WAL bytes"
  fi
  echo "$line"
  result[$label]=$e2e_rate
  stop_nodes
}

sink_port=$(free_port)
start_sink "$sink_port"
echo "== (a) end to end, $n messages, 64 clients over the nodes, 8 connections per node into smtp-sink"
measure sled 1 sled-1
measure postgres 1 pg-1
measure postgres 2 pg-2
measure postgres 4 pg-4

echo "== (c) one PostgreSQL node while another session holds a REPEATABLE READ transaction open"
command psql -X -q "$pg_url" -c "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class; SELECT pg_sleep(120); COMMIT;" >/dev/null 2>&1 &
holder=$!
pids+=($holder)
sleep 0.5
measure postgres 1 pg-1-held
kill "$holder" 2>/dev/null || true
kill "$sink_pid" && wait "$sink_pid" 2>/dev/null || true

echo "== (b) an upstream that answers DATA after 1 s: $delayed_n messages, 32 connections per node"
slow_port=$(free_port)
start_sink "$slow_port" "-w 1"
for count in 1 4; do
  start_nodes postgres "$count" "$slow_port" 32
  run_load "$delayed_n"
  echo "pg-$count-delayed: $accepted messages, $e2e_rate msg/s end to end"
  result[pg-$count-delayed]=$e2e_rate
  stop_nodes
done
kill "$sink_pid" && wait "$sink_pid" 2>/dev/null || true

echo "== (d) the wire's limit: smtp-source -d, 8 persistent sessions, $n messages straight into smtp-sink"
sink_port=$(free_port)
start_sink "$sink_port"
head -c 2000 /dev/zero | tr '\0' 'x' | fold -w 72 >"$work/message.txt"
start=$(now)
smtp-source -d -s 8 -m "$n" -f bench@acme.test -t ana@example.test -F "$work/message.txt" "127.0.0.1:$sink_port"
wire=$(rate "$n" "$start" "$(now)")
echo "smtp-source -d: $wire msg/s"

echo
echo "== summary (msg/s end to end; ratios from this run)"
printf '%-34s %8s\n' "sled, 1 node" "${result[sled-1]}"
printf '%-34s %8s   (target ≥ 1,500)\n' "PostgreSQL, 1 node" "${result[pg-1]}"
printf '%-34s %8s   (%.2f× one node)\n' "PostgreSQL, 2 nodes" "${result[pg-2]}" "$(per "${result[pg-2]}" "${result[pg-1]}")"
printf '%-34s %8s   (%.2f× one node; target not slower)\n' "PostgreSQL, 4 nodes" "${result[pg-4]}" "$(per "${result[pg-4]}" "${result[pg-1]}")"
printf '%-34s %8s   (%.2f of clean; target ≥ 0.75)\n' "PostgreSQL, 1 node, vacuum held" "${result[pg-1-held]}" "$(per "${result[pg-1-held]}" "${result[pg-1]}")"
printf '%-34s %8s\n' "PostgreSQL, 1 node, 1 s upstream" "${result[pg-1-delayed]}"
printf '%-34s %8s   (%.2f× one node; target ≥ 3.2)\n' "PostgreSQL, 4 nodes, 1 s upstream" "${result[pg-4-delayed]}" "$(per "${result[pg-4-delayed]}" "${result[pg-1-delayed]}")"
printf '%-34s %8s   (PostgreSQL 1 node = %.2f of it)\n' "wire: smtp-source -d" "$wire" "$(per "${result[pg-1]}" "$wire")"
