#!/usr/bin/env bash
# Accept loops across cores: poolserve's `http` server with `accept_loops` = 1 and 2 (LOOPS),
# `[runtime] worker_threads = 2`, the server free to run on both cores of this machine:
#  1. accepted connections per second: wrk with `Connection: close` on every request, so each
#     request is a connection accepted; and how the accepted connections spread over the
#     server's listening sockets (`/stats` accepted_by_socket, read before and after the run);
#  2. keep-alive requests per second with the same server.
# Both load generators and the server share the two cores (the server is pinned to cores 0-1,
# wrk to the same), so figures move with whatever else runs on the machine: rounds alternate
# the counts and medians are reported. Every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-6}           # seconds per measured wrk run
ROUNDS=${ROUNDS:-5}       # rounds over every count; medians are reported
CONNS=${CONNS:-64}        # wrk connections
LOOPS=${LOOPS:-"1 2"}     # accept_loops values compared
out=bench/out
mkdir -p "$out"
results="$out/accept.txt"
: > "$results"

command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
cargo build --release -q -p poolserve
bin=target/release

source bench/lib.sh

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

start() { # $1 = accept_loops; sets server_pid, server_port, admin_port
  local cfg="$out/accept-poolserve.toml"
  server_port=$(free_port); admin_port=$(free_port)
  cat > "$cfg" <<TOML
[runtime]
worker_threads = 2
[admin]
listen = "127.0.0.1:$admin_port"
[log]
level = "warn"
[[server]]
name = "web"
protocol = "http"
listen = "127.0.0.1:$server_port"
accept_loops = $1
  [server.pool]
  max_connections = 20000
  keep_alive_timeout = "120s"
TOML
  taskset -c 0,1 "$bin/poolserve" --config "$cfg" > "$out/accept-poolserve.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid")
  wait_port "$server_port"; wait_port "$admin_port"
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

# Connections accepted so far on each of web's sockets, space-separated.
accepted() {
  python3 - "$admin_port" <<'PY'
import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/stats", timeout=10))
print(" ".join(str(n) for n in doc["accepted_by_socket"]["web"]))
PY
}

# wrk's requests per second; $1 = keepalive|close, $2 = seconds.
load() {
  local extra=()
  [ "$1" = close ] && extra=(-H "Connection: close")
  taskset -c 0,1 wrk -t2 -c"$CONNS" -d"$2"s "${extra[@]}" "http://127.0.0.1:$server_port/" \
    | awk '/^Requests\/sec:/ {printf "%.0f", $2}'
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

declare -A accepts keepalive spread
for round in $(seq "$ROUNDS"); do
  # Alternate which count runs first, so drift over the round hurts each alike.
  order=$LOOPS; (( round % 2 )) || order=$(tr ' ' '\n' <<<"$LOOPS" | tac | paste -sd' ' -)
  for n in $order; do
    start "$n"
    load close 1 > /dev/null                                  # warm-up
    before=$(accepted)
    a=$(load close "$SECS")
    after=$(accepted)
    # Each socket's share of the connections accepted in the measured run, in %.
    share=$(python3 -c "
import sys
b, a = [int(x) for x in sys.argv[1].split()], [int(x) for x in sys.argv[2].split()]
d = [y - x for x, y in zip(b, a)]
print('/'.join(f'{100 * x / max(1, sum(d)):.1f}' for x in d))" "$before" "$after")
    k=$(load keepalive "$SECS")
    stop
    accepts[$n]+="$a "; keepalive[$n]+="$k "; spread[$n]+="$share "
    echo "  round $round accept_loops=$n: $a accepts/s (shares % $share), keep-alive $k requests/s" >&2
  done
done

printf '%-13s %12s %22s  %s\n' accept_loops accepts/s keepalive_requests/s "rounds: accepts/s | keep-alive | socket shares %" \
  | tee -a "$results"
for n in $LOOPS; do
  printf '%-13s %12s %22s  %s| %s| %s\n' "$n" "$(median <<<"${accepts[$n]}")" \
    "$(median <<<"${keepalive[$n]}")" "${accepts[$n]}" "${keepalive[$n]}" "${spread[$n]}" \
    | tee -a "$results"
done
# Each count against the first, within each round (the counts of a round run back to back,
# which cancels part of the machine's drift between rounds).
first=${LOOPS%% *}
for n in $LOOPS; do
  [ "$n" = "$first" ] && continue
  python3 - "${accepts[$first]}" "${accepts[$n]}" "${keepalive[$first]}" "${keepalive[$n]}" <<PY | tee -a "$results"
import statistics as st, sys
a1, an, k1, kn = ([float(x) for x in arg.split()] for arg in sys.argv[1:])
ra = [y / x for x, y in zip(a1, an) if x]
rk = [y / x for x, y in zip(k1, kn) if x]
print(f"accept_loops $n / $first, per round: accepts/s median {st.median(ra):.3f} ({min(ra):.3f}-{max(ra):.3f}), "
      f"keep-alive median {st.median(rk):.3f} ({min(rk):.3f}-{max(rk):.3f})")
PY
done
