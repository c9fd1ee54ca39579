#!/usr/bin/env bash
# WebSocket benchmarks, every number measured in this one run against a baseline:
#  1. echo throughput, 64 B and 16 KiB messages, 100 connections: poolserve `ws` vs a bare
#     tokio-tungstenite echo server (same message handling, no pool);
#  2. 10,000 idle connections: RSS per connection for both, and the CPU the heartbeats of all of
#     them cost poolserve (ping_interval $PING, default 30s).
# Servers run on core 1, the load on core 0; everything on 127.0.0.1; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-10}          # seconds per measured echo run
CONNS=${CONNS:-100}       # echo connections
IDLE=${IDLE:-10000}       # idle connections
HOLD=${HOLD:-40}          # seconds the idle connections are held while CPU is measured
PING=${PING:-30s}         # heartbeat interval during the idle run (30s is the default)
out=bench/out
mkdir -p "$out"
results="$out/ws.txt"
: > "$results"

command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
cargo build --release -q -p poolserve --bins --examples
bin=target/release
ulimit -n "$(ulimit -Hn)"  # 10,000 sockets per process need more than the usual 1,024

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  exit 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

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
  taskset -c 1 "$bin/examples/bare_ws" "127.0.0.1:$port" > "$out/ws-bare.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid"); server_port=$port
  wait_port "$port"
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

echo_run() { # $1 = size, $2 = seconds
  taskset -c 0 "$bin/examples/ws_load" echo "ws://127.0.0.1:$server_port/" "$CONNS" "$1" "$2"
}

printf '%-10s %-9s %14s %10s\n' server size msgs/s p99_us | tee -a "$results"
declare -A rate
for size in 64 16384; do
  for server in poolserve bare; do
    if [ "$server" = poolserve ]; then start_poolserve 30s; else start_bare; fi
    echo_run "$size" 2 > /dev/null                    # warm-up
    line=$(echo_run "$size" "$SECS")
    stop
    r=$(sed -E 's/.*messages_per_sec=([0-9]+).*/\1/' <<<"$line")
    p=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<<"$line")
    rate[$server-$size]=$r
    printf '%-10s %-9s %14s %10s\n' "$server" "$size" "$r" "$p" | tee -a "$results"
  done
  python3 -c "print(f'ratio poolserve/bare at $size B: {${rate[poolserve-$size]}/${rate[bare-$size]}:.3f}')" | tee -a "$results"
done

idle_run() { # prints rss_per_conn_bytes and cpu_percent
  local before after t0 t1 c0 c1 fifo
  before=$(rss_kib "$server_pid")
  fifo="$out/ws-idle.fifo"; rm -f "$fifo"; mkfifo "$fifo"
  taskset -c 0 "$bin/examples/ws_load" idle "ws://127.0.0.1:$server_port/" "$IDLE" "$HOLD" > "$fifo" &
  local client=$!
  exec 4<"$fifo"
  read -r -u 4 opened
  after=$(rss_kib "$server_pid"); c0=$(cpu_ticks "$server_pid"); t0=$(date +%s.%N)
  read -r -u 4 closed
  c1=$(cpu_ticks "$server_pid"); t1=$(date +%s.%N)
  exec 4<&-
  wait "$client"
  rm -f "$fifo"
  python3 -c "
hz = $(getconf CLK_TCK)
print(f'{($after - $before) * 1024 / $IDLE:.0f} {100 * ($c1 - $c0) / hz / ($t1 - $t0):.2f} $opened $closed')"
}

printf '%-10s %18s %12s %s\n' server rss_bytes/conn cpu_%_core note | tee -a "$results"
start_poolserve "$PING"
read -r p_rss p_cpu p_open p_closed <<<"$(idle_run)"
stop
start_bare
read -r b_rss b_cpu b_open b_closed <<<"$(idle_run)"
stop
printf '%-10s %18s %12s %s\n' poolserve "$p_rss" "$p_cpu" "$p_open $p_closed (ping every $PING)" | tee -a "$results"
printf '%-10s %18s %12s %s\n' bare "$b_rss" "$b_cpu" "$b_open $b_closed (no heartbeat)" | tee -a "$results"
python3 -c "print(f'pool overhead per idle connection: {$p_rss - $b_rss} bytes')" | tee -a "$results"
