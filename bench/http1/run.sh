#!/usr/bin/env bash
# HTTP/1.1 benchmarks, every number measured in this one run against a baseline:
#  1. keep-alive `GET /` with wrk: poolserve `http` vs a bare hyper server with the same demo
#     handler (bench/src/bin/bare_hyper.rs), nginx `return 200` (Debian's
#     nginx-light, one process: `master_process off`, so the duel's CPU ticks of its pid are
#     all of nginx's) and koatty_serve 2.3.0 on Node (bench/koatty);
#  2. connection churn: the same with `Connection: close` on every request;
#  3. 10,000 idle keep-alive connections (each served one request): RSS per connection,
#     poolserve vs bare hyper.
# Servers run on core 1, wrk and the idle client on core 0; everything on 127.0.0.1; every run
# is bounded in time. Peers missing from the machine are installed (apt, npm ci) when possible.
# Results: bench/out/http1.txt, and every round's figures in bench/out/results.csv (csv_row in
# bench/lib.sh; bench/report.py reads it).
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-8}           # seconds per measured wrk run
ROUNDS=${ROUNDS:-3}       # rounds over all peers; medians are reported
CONNS=${CONNS:-64}        # wrk connections
IDLE=${IDLE:-10000}       # idle keep-alive connections
HOLD=${HOLD:-15}          # seconds the idle connections are held
PEERS=${PEERS:-"poolserve bare_hyper nginx koatty"}
MODES=${MODES:-"keepalive close"}  # keepalive: wrk reuses connections; close: `Connection: close`
IDLE_RUN=${IDLE_RUN:-1}   # 0 skips the idle-connection memory run
IDLE_ROUNDS=${IDLE_ROUNDS:-3}  # rounds of the idle-connection run
DUEL_ROUNDS=${DUEL_ROUNDS:-8}  # shared-core duel rounds, poolserve vs bare hyper (0 skips it)
DUEL_SECS=${DUEL_SECS:-5}      # seconds per duel round
# Baselines poolserve duels against: bare_same is bare_hyper's server built into a binary that
# also holds poolserve (`same_binary bare http`), so it differs from poolserve by little more
# than the pool; whole-program LTO compiles the same hyper code differently in the small
# bare_hyper binary.
# poolserve_b is the build at $POOLSERVE_B (an A/B of two builds of poolserve).
DUEL_BASELINES=${DUEL_BASELINES:-"bare_hyper bare_same"}
out=bench/out
mkdir -p "$out"
results="$out/http1.txt"
: > "$results"

need() { command -v "$1" >/dev/null; }
if ! need wrk || ! need nginx; then
  apt-get install -y -q wrk nginx-light >/dev/null
fi
need taskset || { echo "taskset (util-linux) is required" >&2; exit 1; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
if [[ " $PEERS " == *" koatty "* && ! -d bench/koatty/node_modules ]]; then
  (cd bench/koatty && npm ci --no-audit --no-fund --loglevel=error)
fi
cargo build --release -q -p poolserve -p poolserve-bench --bins
bin=target/release
ulimit -n "$(ulimit -Hn)"  # 10,000 sockets per process need more than the usual 1,024

source bench/lib.sh

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start() { # $1 = peer; sets server_pid and server_port
  local port admin cfg
  port=$(free_port)
  case "$1" in
    poolserve|poolserve_b)
      # poolserve_b: another build of poolserve ($POOLSERVE_B), for a duel of two builds.
      local exe="$bin/poolserve"
      [ "$1" = poolserve_b ] && exe=${POOLSERVE_B:?"POOLSERVE_B names the other build"}
      admin=$(free_port); cfg="$out/http1-$1.toml"
      cat > "$cfg" <<TOML
[admin]
listen = "127.0.0.1:$admin"
[log]
level = "warn"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:$port"
  [server.pool]
  max_connections = 20000
  keep_alive_timeout = "120s"
  connection_timeout = "300s"
TOML
      taskset -c 1 "$exe" --config "$cfg" > "$out/http1-$1.log" 2>&1 &
      ;;
    bare_hyper)
      taskset -c 1 "$bin/bare_hyper" "127.0.0.1:$port" > "$out/http1-bare.log" 2>&1 &
      ;;
    bare_same) # bare_hyper's server built into a binary that also holds poolserve
      taskset -c 1 "$bin/same_binary" bare http "127.0.0.1:$port" \
        > "$out/http1-bare-same.log" 2>&1 &
      ;;
    nginx)
      mkdir -p "$out/nginx"
      cat > "$out/nginx/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $PWD/$out/nginx/nginx.pid;
error_log $PWD/$out/nginx/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $PWD/$out/nginx;
  proxy_temp_path $PWD/$out/nginx;
  fastcgi_temp_path $PWD/$out/nginx;
  uwsgi_temp_path $PWD/$out/nginx;
  scgi_temp_path $PWD/$out/nginx;
  server {
    listen 127.0.0.1:$port;
    location / { default_type text/plain; return 200 "hello"; }
  }
}
CONF
      taskset -c 1 "$nginx_bin" -p "$PWD/$out/nginx" -c "$PWD/$out/nginx/nginx.conf" \
        > "$out/http1-nginx.log" 2>&1 &
      ;;
    koatty)
      taskset -c 1 node bench/koatty/server.js http "$port" > "$out/http1-koatty.log" 2>&1 &
      ;;
  esac
  server_pid=$!; pids+=("$server_pid"); server_port=$port
  wait_port "$port"
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

# wrk's "99%" latency line, in microseconds.
p99_us() {
  awk '$1 == "99%" {
    v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    f = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1000000 : 0;
    printf "%.0f", v * f }'
}
load() { # $1 = mode (keepalive|close), $2 = seconds; prints "rps p99_us errors"
  local extra=() report
  [ "$1" = close ] && extra=(-H "Connection: close")
  report=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"$2"s --latency "${extra[@]}" \
    "http://127.0.0.1:$server_port/")
  local rps p99 errs
  rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' <<<"$report")
  p99=$(p99_us <<<"$report")
  errs=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$report" | tr -s ' ' | paste -sd';' -)
  echo "${rps:-0} ${p99:-0} ${errs:-none}"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# Each round runs every peer once, in turn, so a noisy neighbour on the machine hurts them alike;
# the medians over the rounds are reported.
declare -A rps p99 errors
if [ "$ROUNDS" != 0 ]; then
declare -A rps p99 errors
for mode in $MODES; do
  for round in $(seq "$ROUNDS"); do
    for peer in $PEERS; do
      start "$peer"
      load "$mode" 1 > /dev/null                       # warm-up
      read -r r p e <<<"$(load "$mode" "$SECS")"
      stop
      rps[$peer-$mode]+="$r "; p99[$peer-$mode]+="$p "
      [ "$e" = none ] || errors[$peer-$mode]+="round $round: $e "
      echo "  round $round $mode $peer: $r requests/s, p99 $p us" >&2
      # A failed run (no requests) has no figures: empty values in the CSV, not zeros.
      if [ "$r" = 0 ]; then
        echo "warning: round $round $mode $peer measured no requests" >&2; r=""; p=""
      fi
      csv_row http1/run.sh "$mode" rps "$peer" "" "$round" "$r" req/s
      csv_row http1/run.sh "$mode" p99_us "$peer" "" "$round" "$p" us
    done
  done
  printf '%-11s %-10s %12s %10s  %s\n' peer mode requests/s p99_us "rounds (requests/s)" | tee -a "$results"
  declare -A med_r med_p
  for peer in $PEERS; do
    med_r[$peer]=$(median <<<"${rps[$peer-$mode]}"); med_p[$peer]=$(median <<<"${p99[$peer-$mode]}")
    printf '%-11s %-10s %12s %10s  %s %s\n' "$peer" "$mode" "${med_r[$peer]}" "${med_p[$peer]}" \
      "${rps[$peer-$mode]}" "${errors[$peer-$mode]:-}" | tee -a "$results"
  done
  # The ratio of the medians, and the median of the ratios within each round (the peers of a
  # round run back to back, which cancels part of the machine's drift between rounds).
  for peer in $PEERS; do
    [ "$peer" = poolserve ] && continue
    python3 - "${rps[poolserve-$mode]}" "${rps[$peer-$mode]}" "${p99[poolserve-$mode]}" "${p99[$peer-$mode]}" <<PY | tee -a "$results"
import statistics as st, sys
a, b, pa, pb = ([float(x) for x in arg.split()] for arg in sys.argv[1:])
r = [x / y for x, y in zip(a, b) if x and y]
q = [x / y for x, y in zip(pa, pb) if x and y]
if r and q:
    print(f"$mode: poolserve / $peer = {st.median(a) / st.median(b):.3f} x requests/s (per round: median {st.median(r):.3f}, "
          f"{min(r):.3f}-{max(r):.3f}), p99 {st.median(pa) / max(1, st.median(pb)):.3f} x (per round: median {st.median(q):.3f})")
else:
    print(f"$mode: poolserve / $peer: no round measured both")
PY
  done
done
fi

# The shared-core duel (bench/lib.sh): poolserve and bare hyper on core 1 at once, each under its
# own wrk on core 0; requests per CPU-second of each server, compared within every round. Every
# round starts both servers afresh, taking turns at which starts first: a pair of processes keeps
# whatever advantage its memory placement gave one of them for as long as it runs (measured
# 2026-12-02: one build against a copy of itself, 1.042 over six rounds of one pair of processes;
# 1.006 over ten rounds of fresh ones).
duel_requests() { awk '/requests in/ {print $1}' "$1"; }
if [ "$DUEL_ROUNDS" != 0 ]; then
  for mode in $MODES; do
  for base in $DUEL_BASELINES; do
    extra=(); [ "$mode" = close ] && extra=(-H "Connection: close")
    ratios=""
    for round in $(seq "$DUEL_ROUNDS"); do
      if (( round % 2 )); then
        start poolserve; pa=$server_pid; porta=$server_port
        start "$base"; pb=$server_pid; portb=$server_port
      else
        start "$base"; pb=$server_pid; portb=$server_port
        start poolserve; pa=$server_pid; porta=$server_port
      fi
      wrk_a=(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUEL_SECS}s" "${extra[@]}" "http://127.0.0.1:$porta/")
      wrk_b=(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUEL_SECS}s" "${extra[@]}" "http://127.0.0.1:$portb/")
      taskset -c 0 wrk -t1 -c"$CONNS" -d1s "${extra[@]}" "http://127.0.0.1:$porta/" > /dev/null
      taskset -c 0 wrk -t1 -c"$CONNS" -d1s "${extra[@]}" "http://127.0.0.1:$portb/" > /dev/null
      read -r ta tb <<<"$(duel_round "$pa" "$pb" wrk_a wrk_b "$((round / 2))")"
      kill "$pa" "$pb"; wait "$pa" "$pb" 2>/dev/null || true
      ra=$(duel_requests "$out/duel-a.txt"); rb=$(duel_requests "$out/duel-b.txt")
      r=$(duel_ratio "$ra" "$ta" "$rb" "$tb")  # empty, with a warning, for a failed round
      ratios+="$r "
      echo "  duel round $round $mode: poolserve $ra requests / $ta ticks, $base $rb / $tb ticks: $r" >&2
      csv_row http1/run.sh "$mode" duel_ratio poolserve "$base" "$round" "$r" x
    done
    echo "duel $mode: poolserve / $base requests per CPU-second, median $(median <<<"$ratios"), geometric mean $(python3 -c "import math, sys; r = [float(x) for x in sys.argv[1:]]; print(f'{math.exp(sum(map(math.log, r)) / len(r)):.3f}' if r else '-')" $ratios) (rounds $ratios)" \
      | tee -a "$results"
  done
  done
fi

idle_run() { # prints "rss_bytes_per_conn open closed"
  local before after fifo
  before=$(rss_kib "$server_pid")
  fifo="$out/http1-idle.fifo"; rm -f "$fifo"; mkfifo "$fifo"
  taskset -c 0 "$bin/http_idle" "127.0.0.1:$server_port" "$IDLE" "$HOLD" > "$fifo" &
  local client=$!
  exec 4<"$fifo"
  read -r -u 4 opened
  sleep 1  # let the server finish its side of the last responses before reading RSS
  after=$(rss_kib "$server_pid")
  read -r -u 4 closed
  exec 4<&-
  wait "$client"
  rm -f "$fifo"
  python3 -c "print(f'{($after - $before) * 1024 / $IDLE:.0f} $opened $closed')"
}

[ "$IDLE_RUN" = 1 ] || exit 0
# RSS moves with the allocator's arenas by a few hundred bytes per connection from run to run,
# so the idle run is repeated and the medians are compared.
declare -A rss
for round in $(seq "$IDLE_ROUNDS"); do
  for peer in poolserve bare_hyper; do
    start "$peer"
    read -r r opened closed <<<"$(idle_run)"
    stop
    idle_complete "$IDLE" "$opened" "$closed" || r=""  # not all there: no figure per connection
    rss[$peer]+="$r "
    echo "  round $round idle $peer: $r bytes/conn ($opened $closed)" >&2
    csv_row http1/run.sh keepalive idle_bytes_per_conn "$peer" "" "$round" "$r" B
  done
done
printf '%-11s %18s  %s\n' peer rss_bytes/conn "rounds" | tee -a "$results"
for peer in poolserve bare_hyper; do
  printf '%-11s %18s  %s\n' "$peer" "$(median <<<"${rss[$peer]}")" "${rss[$peer]}" | tee -a "$results"
done
pool=$(median <<<"${rss[poolserve]}"); bare=$(median <<<"${rss[bare_hyper]}")
if [ -n "$pool" ] && [ -n "$bare" ]; then
  echo "pool overhead per idle keep-alive connection: $((pool - bare)) bytes" | tee -a "$results"
fi
