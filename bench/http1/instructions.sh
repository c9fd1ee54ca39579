#!/usr/bin/env bash
# User-space instructions per keep-alive request, poolserve `http` vs the bare hyper server (the
# bare_hyper program, and bare_same: `same_binary bare http`, the same server built into a
# binary that also holds poolserve), under valgrind's callgrind: unlike requests/s on a shared
# machine, the count repeats run to run, so it shows what the pool costs per request. Then
# where poolserve's extra instructions are, by source file, between the two sides of that one
# binary (pool_same, `same_binary pool`, against bare_same; bench/callgrind_by_file.py).
# Usage: bench/http1/instructions.sh [REQUESTS]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
out=bench/out
mkdir -p "$out"
command -v valgrind >/dev/null || apt-get install -y -q valgrind >/dev/null
command -v h2load >/dev/null || apt-get install -y -q nghttp2-client >/dev/null
cargo build --release -q -p poolserve -p poolserve-bench --bins

source bench/lib.sh

count() { # $1 = name, $2 = port, rest = server command; prints instructions per request
  local name=$1 port=$2; shift 2
  rm -f "$out/callgrind.$name".*
  valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$name.%p" "$@" \
    > "$out/callgrind.$name.log" 2>&1 &
  local vg=$!
  wait_port "$port" 1200
  h2load --h1 -n 2000 -c 16 "http://127.0.0.1:$port/" > /dev/null   # warm-up
  callgrind_control -z "$vg" > /dev/null
  h2load --h1 -n "$N" -c 16 "http://127.0.0.1:$port/" | grep -q "$N succeeded"
  callgrind_control -d "$vg" > /dev/null
  kill "$vg"; wait "$vg" 2>/dev/null || true
  local dump
  dump=$(ls -t "$out/callgrind.$name".*.1 | head -1)
  awk -v n="$N" '/^summary:/ {printf "%.0f", $2 / n}' "$dump"
}

# A config with one `http` server on port $1 and the admin endpoint on $2, written to $3.
config() {
  cat > "$3" <<TOML
[admin]
listen = "127.0.0.1:$2"
[log]
level = "warn"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:$1"
TOML
}

port=$(free_port); admin=$(free_port)
config "$port" "$admin" "$out/instructions-poolserve.toml"
pool=$(count poolserve "$port" target/release/poolserve --config "$out/instructions-poolserve.toml")
port=$(free_port)
bare=$(count bare_hyper "$port" target/release/bare_hyper "127.0.0.1:$port")
port=$(free_port)
same=$(count bare_same "$port" target/release/same_binary bare http "127.0.0.1:$port")
port=$(free_port); admin=$(free_port)
config "$port" "$admin" "$out/instructions-pool-same.toml"
pool_same=$(count pool_same "$port" target/release/same_binary pool --config "$out/instructions-pool-same.toml")
echo "instructions per keep-alive request: poolserve $pool, bare hyper $bare," \
  "pool_same $pool_same, bare_same $same" | tee "$out/instructions.txt"
python3 -c "print(f'poolserve / bare hyper {$pool / $bare:.3f}, pool_same / bare_same {$pool_same / $same:.3f}')" \
  | tee -a "$out/instructions.txt"
# The same counts in bench/out/results.csv (csv_row in bench/lib.sh; bench/report.py reads it).
csv_row http1/instructions.sh keepalive instructions poolserve "" 1 "$pool" instr/req
csv_row http1/instructions.sh keepalive instructions bare_hyper "" 1 "$bare" instr/req
csv_row http1/instructions.sh keepalive instructions pool_same "" 1 "$pool_same" instr/req
csv_row http1/instructions.sh keepalive instructions bare_same "" 1 "$same" instr/req
dump() { ls -t "$out/callgrind.$1".*.1 | head -1; }
python3 bench/callgrind_by_file.py "$(dump pool_same)" "$(dump bare_same)" "$N" \
  | tee -a "$out/instructions.txt"
