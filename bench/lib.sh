# Helpers shared by the benchmark scripts; sourced, not run.

# A free TCP port on 127.0.0.1, chosen by the kernel.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until 127.0.0.1:$1 accepts connections, up to ${2:-200} tries 50 ms apart; exits the
# script when it never does.
wait_port() {
  for _ in $(seq "${2:-200}"); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  exit 1
}

# Resident memory of process $1, KiB.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

# User plus system CPU of process $1, clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# A shared-core duel: servers A and B (pids $1 and $2) both pinned to the same core, each loaded
# at the same time by its own load generator (commands in the arrays named $3 and $4, which print
# a report), for one round. The two share the core as the scheduler sees fit, so what the host
# does to the core (frequency, a neighbour's cache traffic) happens to both at once; the cost
# comparison is requests per CPU-second of each server, which does not depend on how the core
# was split. Prints "requests_A cpu_ticks_A requests_B cpu_ticks_B" for the caller to parse the
# reports in $out/duel-a.txt and $out/duel-b.txt.
# The load generator started first gets a head start, so rounds take turns: $5 is the round's
# number, and an even round starts B's load first.
duel_round() {
  local a=$1 b=$2
  local -n load_a=$3 load_b=$4
  local ca cb la lb
  ca=$(cpu_ticks "$a"); cb=$(cpu_ticks "$b")
  if (( ${5:-1} % 2 )); then
    "${load_a[@]}" > "$out/duel-a.txt" 2>&1 &
    la=$!
    "${load_b[@]}" > "$out/duel-b.txt" 2>&1 &
    lb=$!
  else
    "${load_b[@]}" > "$out/duel-b.txt" 2>&1 &
    lb=$!
    "${load_a[@]}" > "$out/duel-a.txt" 2>&1 &
    la=$!
  fi
  wait "$la" "$lb"
  echo "$(( $(cpu_ticks "$a") - ca )) $(( $(cpu_ticks "$b") - cb ))"
}

# A duel round's ratio, requests per CPU tick of A over B's, to 3 decimals: $1 A's requests, $2
# its CPU ticks, $3 and $4 B's. Prints nothing, and a warning, when any of them is 0, empty or not
# a count (a load generator or a server that failed): a ratio made of those would be made up.
duel_ratio() {
  local v
  for v in "$@"; do
    if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
      echo "warning: duel round without a ratio (requests, ticks: A ${1:-?} ${2:-?}," \
        "B ${3:-?} ${4:-?})" >&2
      return 0
    fi
  done
  python3 -c "print(f'{($1 / $2) / ($3 / $4):.3f}')"
}

# Whether an idle client's report (the rest of the arguments: its open=N and closed_early=N, and
# h2_idle's failed=N) shows all $1 connections asked for open, none failed and none closed early;
# warns when not. RSS growth divided by $1 when not all of them were there would be made up.
idle_complete() {
  local asked=$1 word opened="" failed=0 closed=""
  shift
  for word in $*; do
    case $word in
      open=*) opened=${word#open=} ;;
      failed=*) failed=${word#failed=} ;;
      closed_early=*) closed=${word#closed_early=} ;;
    esac
  done
  [ "$opened" = "$asked" ] && [ "$failed" = 0 ] && [ "$closed" = 0 ] && return 0
  echo "warning: the idle client opened ${opened:-?} of $asked connections, ${failed:-?} failed," \
    "${closed:-?} closed early: no figure per connection" >&2
  return 1
}

# Machine-readable results for bench/report.py: csv_row appends one measurement to
# ${RESULTS_CSV:-bench/out/results.csv}, writing the header first when the file is missing or
# empty. Columns: date (when this run of the script started, UTC: the same on all its rows, so it
# tells runs apart), phase (bench/run-all.sh's phase, $BENCH_PHASE; empty for a run by hand),
# then csv_row's 8 arguments: script (e.g. http1/run.sh), mode (keepalive, close, a message size,
# or empty), kind (rps, p99_us, duel_ratio, idle_bytes_per_conn, ...), name (the peer measured;
# poolserve's side for a duel), baseline (a duel's other side, else empty), round, value, unit.
results_csv=${RESULTS_CSV:-bench/out/results.csv}
csv_started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
csv_row() {
  [ -s "$results_csv" ] ||
    echo 'date,phase,script,mode,kind,name,baseline,round,value,unit' > "$results_csv"
  local IFS=,
  echo "$csv_started,${BENCH_PHASE:-},$*" >> "$results_csv"
}
