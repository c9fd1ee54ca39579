#!/usr/bin/env bash
# Runs every benchmark behind bench/RESULTS.md's table, one after another, then writes the table
# and the plots (bench/report.py). Installs what it is missing first: wrk, h2load and nghttp,
# nginx-light, valgrind (Debian), koatty_serve (npm ci in bench/koatty), matplotlib pinned by
# bench/requirements.txt into the git-ignored bench/.venv (each install step under `timeout`, 15
# minutes); then builds the release binaries once (under `timeout`, an hour).
#
# Phases, in order, each bounded by `timeout` (twice its estimate plus 5 minutes; a phase that
# fails or runs out of time is recorded, its rows read "partial" with what it measured, or "not
# measured in this run", and the next phase runs). Estimates with the defaults, the build done:
#   http1_seq     HTTP/1.1 sequential rounds, wrk --latency, keep-alive then
#                 `Connection: close`, 5 peers (poolserve bare_hyper bare_same nginx
#                 koatty), 6 rounds of 5 s each                                        ~7 min
#   http1_duel    HTTP/1.1 keep-alive duels, 16 rounds each against bare_hyper,
#                 bare_same, nginx: 3 x 16 x (4 s + ~3 s)                              ~5.6 min
#   http1_idle    10,000 idle keep-alive connections, poolserve and bare_hyper,
#                 3 rounds of ~21 s                                                     ~2 min
#   instructions  instructions per keep-alive request under callgrind, 4 servers
#                 (INSTRUCTIONS=0 skips it)                                             ~3 min
#   h2_instructions  instructions per h2c stream and per gRPC call under callgrind,
#                 poolserve bare_h2_ka poolserve_grpc bare_tonic_ka, 20,000 each
#                 (INSTRUCTIONS=0 skips it too)                                         ~4 min
#   h2_duel       h2c / h2 over TLS / gRPC duels, 16 rounds each: poolserve:bare_h2_same,
#                 poolserve:bare_h2_ka, poolserve_tls:bare_h2_ka_tls,
#                 poolserve_grpc:bare_tonic_ka                                          ~8 min
#   h2_seq        h2load sequential rounds of the 12 HTTP/2 and gRPC peers, 6 rounds
#                 of 5 s (+1 s warm-up), then 5,000 idle connections x 4 peers x 3     ~11 min
#   ws            WebSocket echo 64 B and 16 KiB, 6 rounds of 5 s, duels of 16 rounds
#                 at each size, then 10,000 idle connections held 40 s, 3 times
#                 (memory, heartbeat CPU)                                               ~10 min
#   report        bench/report.py: bench/RESULTS.md and bench/plots/                   seconds
# In all about 51 minutes, plus about 9 for a first build and a minute or two of installs.
#
# Variables: DUEL_ROUNDS (16; fewer make a duel "not settled"), DUEL_SECS (4), SEQ_ROUNDS (6;
# fewer than 3 make a sequential-round target "not settled"), SEQ_SECS (5), IDLE_ROUNDS (3),
# INSTRUCTIONS (1; 0 skips the two callgrind phases), PHASES (the phases to run, by name: all of
# them; the others are recorded as skipped), BOUND (seconds: one bound for every phase instead of
# twice its estimate plus 5 minutes).
# Output: bench/out/results.csv (emptied first; every script appends its rows, see csv_row in
# bench/lib.sh), bench/out/commands.tsv (phase, exit status, seconds, the command as run: the
# table's command column), bench/out/run-all-PHASE.log, then bench/RESULTS.md and bench/plots/.
# Exits 1 when a phase failed or timed out (the report is written all the same), 130 on SIGINT,
# 143 on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."

DUEL_ROUNDS=${DUEL_ROUNDS:-16}
DUEL_SECS=${DUEL_SECS:-4}
SEQ_ROUNDS=${SEQ_ROUNDS:-6}
SEQ_SECS=${SEQ_SECS:-5}
IDLE_ROUNDS=${IDLE_ROUNDS:-3}
INSTRUCTIONS=${INSTRUCTIONS:-1}
PHASES=${PHASES:-"http1_seq http1_duel http1_idle instructions h2_instructions h2_duel h2_seq ws"}
if [ "$INSTRUCTIONS" != 1 ]; then
  PHASES=" $PHASES "; PHASES=${PHASES// instructions / }; PHASES=${PHASES// h2_instructions / }
fi
out=bench/out
mkdir -p "$out"

# --- what the phases need ----------------------------------------------------------------------
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null && command -v nghttp >/dev/null || need_apt+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
[ "$INSTRUCTIONS" != 1 ] || command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v node >/dev/null && command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v taskset >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
  echo "run-all: installing ${need_apt[*]}" >&2
  timeout -k 30 900 apt-get update -qq
  timeout -k 30 900 apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ ! -d bench/koatty/node_modules ]; then
  echo "run-all: installing koatty_serve (npm ci)" >&2
  (cd bench/koatty && timeout -k 30 900 npm ci --no-audit --no-fund --loglevel=error)
fi
# matplotlib for the plots, pinned, in a git-ignored venv; reinstalled when the pins change.
venv=bench/.venv
requirements=bench/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "run-all: installing $requirements into $venv" >&2
  if ! python3 -m venv "$venv"; then  # Debian's python3 makes venvs with python3-venv only
    rm -rf "$venv"
    timeout -k 30 900 apt-get update -qq
    timeout -k 30 900 apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  timeout -k 30 900 "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  echo "$want" > "$stamp"
fi
"$venv/bin/python" -c 'import matplotlib' # fail now rather than after the runs

# The scripts build too; building once here keeps the build out of the phases' time bounds.
echo "run-all: building the release binaries" >&2
timeout 3600 cargo build --release -q -p poolserve -p poolserve-bench --bins

# --- the phases --------------------------------------------------------------------------------
export RESULTS_CSV="$PWD/$out/results.csv"  # where csv_row (bench/lib.sh) appends
: > "$RESULTS_CSV"
commands="$out/commands.tsv"
printf 'phase\tstatus\tseconds\tcommand\n' > "$commands"
failed=()
running=
interrupted() { # $1: the exit status (130 for SIGINT, 143 for SIGTERM)
  [ -z "$running" ] || kill -TERM "$running" 2>/dev/null
  exit "$1"
}
trap 'interrupted 130' INT
trap 'interrupted 143' TERM

# phase NAME ESTIMATE_SECS [VAR=value ...] SCRIPT [ARGS]: runs the script with the variables
# under `timeout` (which signals the script's whole process group, servers and load generators
# included), its output shown and kept in $out/run-all-NAME.log, and records the command.
# `timeout -k 30` exits 124 when the phase ended at its TERM, 137 when it had to be killed.
phase() {
  local name=$1 estimate=$2; shift 2
  local bound=${BOUND:-$((2 * estimate + 300))} shown="" a status=0 t0=$SECONDS
  for a in "$@"; do
    if [[ $a == *=*" "* ]]; then shown+="${a%%=*}=\"${a#*=}\" "; else shown+="$a "; fi
  done
  shown=${shown% }
  if [[ " $PHASES " != *" $name "* ]]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$shown" >> "$commands"
    return 0
  fi
  echo "run-all: phase $name, about $((estimate / 60 + 1)) min (bound ${bound} s): $shown" >&2
  BENCH_PHASE=$name timeout -k 30 "$bound" env "$@" > >(tee "$out/run-all-$name.log") 2>&1 &
  running=$!
  wait "$running" || status=$?
  running=
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$shown" >> "$commands"
  if [ "$status" != 0 ]; then
    case $status in 124 | 137) status="timed out" ;; *) status="exited $status" ;; esac
    echo "run-all: phase $name $status" >&2
    failed+=("$name")
  fi
}

phase http1_seq $((2 * 5 * SEQ_ROUNDS * (SEQ_SECS + 2))) \
  MODES="keepalive close" PEERS="poolserve bare_hyper bare_same nginx koatty" ROUNDS="$SEQ_ROUNDS" \
  SECS="$SEQ_SECS" IDLE_RUN=0 DUEL_ROUNDS=0 bench/http1/run.sh
phase http1_duel $((3 * DUEL_ROUNDS * (DUEL_SECS + 3))) \
  ROUNDS=0 IDLE_RUN=0 MODES=keepalive DUEL_ROUNDS="$DUEL_ROUNDS" DUEL_SECS="$DUEL_SECS" \
  DUEL_BASELINES="bare_hyper bare_same nginx" bench/http1/run.sh
phase http1_idle $((2 * IDLE_ROUNDS * 21)) \
  ROUNDS=0 DUEL_ROUNDS=0 IDLE_ROUNDS="$IDLE_ROUNDS" MODES=keepalive PEERS="poolserve bare_hyper" \
  bench/http1/run.sh
phase instructions 180 bench/http1/instructions.sh
phase h2_instructions 240 \
  ROUNDS=0 IDLE_ROUNDS=0 DUEL_ROUNDS=0 INSTR_REQUESTS=20000 \
  INSTR_PEERS="poolserve bare_h2_ka poolserve_grpc bare_tonic_ka" bench/h2/run.sh
phase h2_duel $((4 * DUEL_ROUNDS * (DUEL_SECS + 3) + 30)) \
  PEERS="poolserve bare_h2_same bare_h2_ka poolserve_tls bare_h2_ka_tls poolserve_grpc bare_tonic_ka" \
  ROUNDS=0 IDLE_ROUNDS=0 INSTR_REQUESTS=0 DUEL_ROUNDS="$DUEL_ROUNDS" DUEL_SECS="$DUEL_SECS" \
  DUEL_PAIRS="poolserve:bare_h2_same poolserve:bare_h2_ka poolserve_tls:bare_h2_ka_tls poolserve_grpc:bare_tonic_ka" \
  bench/h2/run.sh
phase h2_seq $((12 * SEQ_ROUNDS * (SEQ_SECS + 2) + 4 * IDLE_ROUNDS * 12 + 30)) \
  ROUNDS="$SEQ_ROUNDS" SECS="$SEQ_SECS" IDLE_ROUNDS="$IDLE_ROUNDS" INSTR_REQUESTS=0 DUEL_ROUNDS=0 \
  bench/h2/run.sh
phase ws $((4 * SEQ_ROUNDS * (SEQ_SECS + 3) + 2 * DUEL_ROUNDS * (DUEL_SECS + 4) + 3 * 48)) \
  ROUNDS="$SEQ_ROUNDS" SECS="$SEQ_SECS" DUEL_ROUNDS="$DUEL_ROUNDS" DUEL_SECS="$DUEL_SECS" \
  bench/ws/run.sh
trap - INT TERM

"$venv/bin/python" bench/report.py
if ((${#failed[@]})); then
  echo "run-all: failed or timed out: ${failed[*]} (rows: \"partial\" or \"not measured in this run\")" >&2
  exit 1
fi
