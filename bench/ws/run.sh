#!/usr/bin/env bash
# WebSocket benchmarks, every number measured in this one run against a baseline:
#  1. echo throughput, 64 B and 16 KiB messages, 100 connections: poolserve `ws` vs a bare
#     tokio-tungstenite echo server (same message handling, no pool);
#  2. 10,000 idle connections: RSS per connection for both, and the CPU the heartbeats of all of
#     them cost poolserve: measured at ping_interval $PING (default 30s) and, for a cost per
#     ping, at $FAST_PING (default 2s); the CPU window holds only idle time, no handshakes.
# Servers run on core 1, the load on core 0; everything on 127.0.0.1; every run is bounded.
# Results: bench/out/ws.txt, and every round's figures in bench/out/results.csv (csv_row in
# bench/lib.sh; bench/report.py reads it; bare is named bare_ws there).
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-8}           # seconds per measured echo run
ROUNDS=${ROUNDS:-3}       # rounds of echo runs; medians are reported
ECHO=${ECHO:-1}           # 0 skips the echo runs (idle memory and heartbeat CPU only)
CONNS=${CONNS:-100}       # echo connections
IDLE=${IDLE:-10000}       # idle connections
HOLD=${HOLD:-40}          # seconds the idle connections are held while CPU is measured
PING=${PING:-30s}         # heartbeat interval during the idle run (30s is the default)
FAST_PING=${FAST_PING:-2s} # a short interval, so the window holds enough pings to cost one
DUEL_ROUNDS=${DUEL_ROUNDS:-0}  # shared-core duel rounds per message size, poolserve vs bare (0 skips)
DUEL_SECS=${DUEL_SECS:-4}      # seconds per duel round
out=bench/out
mkdir -p "$out"
results="$out/ws.txt"
: > "$results"

command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
cargo build --release -q -p poolserve -p poolserve-bench --bins
bin=target/release
ulimit -n "$(ulimit -Hn)"  # 10,000 sockets per process need more than the usual 1,024

source bench/lib.sh

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start_poolserve() { # $1 = ping interval
  local port admin cfg
  port=$(free_port); admin=$(free_port); cfg="$out/ws-poolserve.toml"
  cat > "$cfg" <<TOML
[admin]
listen = "127.0.0.1:$admin"
[log]
level = "warn"
[[server]]
name = "live"
protocol = "ws"
listen = "127.0.0.1:$port"
  [server.pool.websocket]
  ping_interval = "$1"
  pong_timeout = "10s"
TOML
  taskset -c 1 "$bin/poolserve" --config "$cfg" > "$out/ws-poolserve.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid"); server_port=$port
  wait_port "$port"
}
start_bare() {
  local port; port=$(free_port)
  taskset -c 1 "$bin/bare_ws" "127.0.0.1:$port" > "$out/ws-bare.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid"); server_port=$port
  wait_port "$port"
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

echo_run() { # $1 = size, $2 = seconds
  taskset -c 0 "$bin/ws_load" echo "ws://127.0.0.1:$server_port/" "$CONNS" "$1" "$2"
}

# Each round runs both servers in turn at each size, taking turns at which runs first (odd rounds
# poolserve, even rounds bare); medians over rounds, and the median of the within-round ratios
# (each round's pair ran back to back, which cancels most machine drift).
declare -A rates p99s
[ "$ECHO" = 1 ] || ROUNDS=0
for round in $(seq "$ROUNDS"); do
  order="poolserve bare"; (( round % 2 )) || order="bare poolserve"
  for size in 64 16384; do
    for server in $order; do
      if [ "$server" = poolserve ]; then start_poolserve 30s; else start_bare; fi
      echo_run "$size" 2 > /dev/null                    # warm-up
      line=$(echo_run "$size" "$SECS")
      stop
      r=$(sed -E 's/.*messages_per_sec=([0-9]+).*/\1/' <<<"$line")
      p=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
      rates[$server-$size]+="$r "
      p99s[$server-$size]+="$p "
      echo "  round $round $server $size B: $r msgs/s, p99 $p us" >&2
      name=$server; [ "$server" = bare ] && name=bare_ws
      csv_row ws/run.sh "$size" ws_rate "$name" "" "$round" "$r" msg/s
      csv_row ws/run.sh "$size" ws_p99_us "$name" "" "$round" "$p" us
    done
  done
done
[ "$ECHO" != 1 ] || printf '%-10s %-9s %14s %10s  %s\n' server size msgs/s p99_us "rounds (msgs/s)" | tee -a "$results"
for size in 64 16384; do
  [ "$ECHO" = 1 ] || break
  python3 - "$size" "${rates[poolserve-$size]}" "${rates[bare-$size]}" \
    "${p99s[poolserve-$size]}" "${p99s[bare-$size]}" <<'PY' | tee -a "$results"
import statistics, sys
size, pr, br, pp, bp = sys.argv[1:]
pr, br, pp, bp = ([int(x) for x in v.split()] for v in (pr, br, pp, bp))
med = statistics.median
for name, r, p in (("poolserve", pr, pp), ("bare", br, bp)):
    print(f"{name:<10} {size:<9} {med(r):>14.0f} {med(p):>10.0f}  {' '.join(map(str, r))}")
ratios = [a / b for a, b in zip(pr, br)]
print(f"ratio poolserve/bare at {size} B: {med(ratios):.3f} (per round: {' '.join(f'{x:.3f}' for x in ratios)}); p99 ratio {med(pp) / med(bp):.3f}")
PY
done

# The shared-core duel (bench/lib.sh), as for HTTP: poolserve and bare on core 1 at once, each
# under its own echo load on core 0, fresh processes every round, taking turns at which starts
# first; messages per CPU-second of each, compared within the round.
rate_of() { sed -nE 's/.*messages_per_sec=([0-9]+).*/\1/p' "$1"; }
if [ "$DUEL_ROUNDS" != 0 ]; then
  for size in 64 16384; do
    ratios=""
    for round in $(seq "$DUEL_ROUNDS"); do
      if (( round % 2 )); then
        start_poolserve 30s; pa=$server_pid; porta=$server_port
        start_bare; pb=$server_pid; portb=$server_port
      else
        start_bare; pb=$server_pid; portb=$server_port
        start_poolserve 30s; pa=$server_pid; porta=$server_port
      fi
      wa=(taskset -c 0 "$bin/ws_load" echo "ws://127.0.0.1:$porta/" "$CONNS" "$size" "$DUEL_SECS")
      wb=(taskset -c 0 "$bin/ws_load" echo "ws://127.0.0.1:$portb/" "$CONNS" "$size" "$DUEL_SECS")
      taskset -c 0 "$bin/ws_load" echo "ws://127.0.0.1:$porta/" "$CONNS" "$size" 1 > /dev/null
      taskset -c 0 "$bin/ws_load" echo "ws://127.0.0.1:$portb/" "$CONNS" "$size" 1 > /dev/null
      read -r ta tb <<<"$(duel_round "$pa" "$pb" wa wb "$((round / 2))")"
      kill "$pa" "$pb"; wait "$pa" "$pb" 2>/dev/null || true
      r=$(duel_ratio "$(rate_of "$out/duel-a.txt")" "$ta" "$(rate_of "$out/duel-b.txt")" "$tb")
      ratios+="${r:-failed} "
      echo "  duel round $round $size B: poolserve / bare messages per CPU-second: ${r:-failed}" >&2
      csv_row ws/run.sh "$size" duel_ratio poolserve bare_ws "$round" "$r" x
    done
    echo "duel $size B: poolserve / bare messages per CPU-second, rounds $ratios" | tee -a "$results"
  done
fi

idle_run() { # prints rss_per_conn_bytes cpu_percent pings_received opened closed_early
  local before after t0 t1 c0 c1 fifo opened held closed
  before=$(rss_kib "$server_pid")
  fifo="$out/ws-idle.fifo"; rm -f "$fifo"; mkfifo "$fifo"
  taskset -c 0 "$bin/ws_load" idle "ws://127.0.0.1:$server_port/" "$IDLE" "$HOLD" > "$fifo" &
  local client=$!
  exec 4<"$fifo"
  read -r -u 4 opened
  # The CPU window runs from "all open" to "held": every connection idle, no handshake in it.
  after=$(rss_kib "$server_pid"); c0=$(cpu_ticks "$server_pid"); t0=$(date +%s.%N)
  read -r -u 4 held
  c1=$(cpu_ticks "$server_pid"); t1=$(date +%s.%N)
  read -r -u 4 closed
  exec 4<&-
  wait "$client"
  rm -f "$fifo"
  python3 -c "
hz = $(getconf CLK_TCK)
print(f'{($after - $before) * 1024 / $IDLE:.0f} {100 * ($c1 - $c0) / hz / ($t1 - $t0):.3f} ${held#held pings=} $opened $closed')"
}

printf '%-10s %18s %12s %10s %s\n' server rss_bytes/conn cpu_%_core pings note | tee -a "$results"
start_poolserve "$PING"
read -r p_rss p_cpu p_pings p_open p_closed <<<"$(idle_run)"
stop
# Not all IDLE connections open and held: no figure per connection, nor a CPU of IDLE of them.
idle_complete "$IDLE" "$p_open" "$p_closed" || { p_rss=""; p_cpu=""; }
# The same at a short interval, so enough pings land in the window to cost one.
start_poolserve "$FAST_PING"
read -r f_rss f_cpu f_pings f_open f_closed <<<"$(idle_run)"
stop
idle_complete "$IDLE" "$f_open" "$f_closed" || { f_rss=""; f_cpu=""; }
start_bare
read -r b_rss b_cpu b_pings b_open b_closed <<<"$(idle_run)"
stop
idle_complete "$IDLE" "$b_open" "$b_closed" || { b_rss=""; b_cpu=""; }
# (the mode column holds the ping interval; the FAST_PING run is named poolserve_fast_ping)
csv_row ws/run.sh "$PING" idle_bytes_per_conn poolserve "" 1 "$p_rss" B
csv_row ws/run.sh "$FAST_PING" idle_bytes_per_conn poolserve_fast_ping "" 1 "$f_rss" B
csv_row ws/run.sh none idle_bytes_per_conn bare_ws "" 1 "$b_rss" B
csv_row ws/run.sh "$PING" idle_cpu_pct poolserve "" 1 "$p_cpu" %
csv_row ws/run.sh "$FAST_PING" idle_cpu_pct poolserve_fast_ping "" 1 "$f_cpu" %
csv_row ws/run.sh none idle_cpu_pct bare_ws "" 1 "$b_cpu" %
printf '%-10s %18s %12s %10s %s\n' poolserve "$p_rss" "$p_cpu" "$p_pings" "$p_open $p_closed (ping every $PING)" | tee -a "$results"
printf '%-10s %18s %12s %10s %s\n' poolserve "$f_rss" "$f_cpu" "$f_pings" "$f_open $f_closed (ping every $FAST_PING)" | tee -a "$results"
printf '%-10s %18s %12s %10s %s\n' bare "$b_rss" "$b_cpu" "$b_pings" "$b_open $b_closed (no heartbeat)" | tee -a "$results"
python3 - "$p_rss" "$b_rss" "$f_cpu" "$b_cpu" "$f_pings" "$HOLD" "$IDLE" "$PING" <<'PY' | tee -a "$results"
import re, sys
p_rss, b_rss, f_cpu, b_cpu, f_pings, hold, idle, ping = sys.argv[1:]
if p_rss and b_rss:
    print(f"pool overhead per idle connection: {int(p_rss) - int(b_rss)} bytes")
pings = int(f_pings) if f_pings.isdigit() else 0
if pings and f_cpu and b_cpu:
    per_ping_us = (float(f_cpu) - float(b_cpu)) / 100 * float(hold) / pings * 1e6
    m = re.fullmatch(r"(\d+)(ms|s|m)", ping)
    secs = int(m[1]) * {"ms": 0.001, "s": 1, "m": 60}[m[2]]
    share = per_ping_us * 1e-6 * int(idle) / secs * 100
    print(f"heartbeat cost: {per_ping_us:.1f} us of CPU per ping; {idle} connections pinged every {ping}: {share:.3f} % of one core")
PY
