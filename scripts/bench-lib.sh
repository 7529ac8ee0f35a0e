# Helpers the benchmark scripts share (sourced, not run): timing, ports, mailgate's
# counters, and the wrk script that POSTs one JSON body.

now() { date +%s.%N; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

counter() { # the metric $1 summed over its series, from the mailgate on $port
  curl -s "127.0.0.1:$port/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" { sum += $2 } END { printf "%d", sum }'
}

post_lua() { # file, bearer token, JSON body: a wrk script POSTing it, each thread
  # stopping after BENCH_PER_THREAD responses when that is set
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.body = '$3'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
local done, limit = 0, tonumber(os.getenv("BENCH_PER_THREAD") or "0")
function response(status)
  done = done + 1
  if limit > 0 and done >= limit then wrk.thread:stop() end
end
LUA
}
