#!/usr/bin/env bash
# HTTP/2 and gRPC benchmarks, every number measured in this one run against a baseline:
#  1. `GET /` with h2load (CONNS connections x STREAMS concurrent streams each):
#     poolserve `http2` (h2c) vs a bare hyper HTTP/2 server with the same demo handler
#     (bench/src/bin/bare_h2.rs) and nginx (`return 200`, Debian's nginx-light, one
#     process: `master_process off`, so a duel's CPU ticks of its pid are all of nginx's);
#     over TLS (h2 by ALPN): poolserve `http2` with `tls`, bare_h2 with the same rustls set-up,
#     nginx, and koatty_serve 2.3.0's Http2Server on Node (bench/koatty, TLS only);
#  2. gRPC unary `poolserve.demo.Echo/Unary` with h2load posting one pre-encoded message:
#     poolserve `grpc` vs a bare tonic::transport::Server with the same service
#     (bench/src/bin/bare_tonic.rs), h2c;
#  3. IDLE idle HTTP/2 connections (each made one call, no stream open; h2_idle.rs, h2c peers
#     only): RSS per connection, poolserve `http2` vs bare_h2 (`GET /`) and poolserve `grpc` vs
#     bare_tonic;
#  4. user-space instructions per call under callgrind, the same pairs (INSTR_REQUESTS=0 skips).
# Servers run on core 1, h2load and the idle client on core 0; everything on 127.0.0.1; every
# run is bounded in time. Peers missing from the machine are installed (apt, npm ci) when
# possible. Each round runs every peer once, in turn; medians over rounds are reported, with the
# spread and the poolserve / peer ratio within each round. The CPU other processes take during a
# run is measured, and a disturbed run is redone (MAX_OTHER, RETRIES). Extra peer for PEERS or
# INSTR_PEERS: bare_h2_ka (bare_h2 with hyper's keep-alive PINGs every 30 s, as poolserve), and
# bare_h2_same (that server built into a binary that also holds poolserve, `same_binary bare
# http2`: LTO compiles the same hyper code differently in a small binary, so this baseline
# differs from poolserve by little more than the pool). The duel also runs bare_h2_same against
# bare_h2_ka.
# Results: bench/out/h2.txt, per round bench/out/h2-rounds.tsv (summarised by summarize.py), and
# every round's figures in bench/out/results.csv (csv_row in bench/lib.sh; bench/report.py).
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${SECS:-6}           # seconds per measured h2load run (after WARMUP)
WARMUP=${WARMUP:-1}       # h2load warm-up seconds, not measured
ROUNDS=${ROUNDS:-5}       # rounds over all peers; medians are reported
CONNS=${CONNS:-16}        # h2load connections (-c)
STREAMS=${STREAMS:-16}    # h2load concurrent streams per connection (-m)
PEERS=${PEERS:-"poolserve bare_h2_ka bare_h2 nginx poolserve_tls bare_h2_ka_tls bare_h2_tls nginx_tls koatty_tls poolserve_grpc bare_tonic_ka bare_tonic"}
MAX_OTHER=${MAX_OTHER:-10} # % of a core other processes may take during a run before it is redone
RETRIES=${RETRIES:-2}     # redos of a disturbed run (the last attempt is kept, flagged)
IDLE=${IDLE:-5000}        # idle HTTP/2 connections
HOLD=${HOLD:-6}           # seconds they are held (keep it under the 30 s ping interval)
IDLE_ROUNDS=${IDLE_ROUNDS:-3}
IDLE_PEERS=${IDLE_PEERS:-"poolserve bare_h2 poolserve_grpc bare_tonic"}
INSTR_REQUESTS=${INSTR_REQUESTS:-20000}  # calls counted under callgrind per peer; 0 skips it
INSTR_PEERS=${INSTR_PEERS:-"poolserve bare_h2_ka bare_h2 poolserve_grpc bare_tonic_ka"}
DUEL_PAIRS=${DUEL_PAIRS:-"poolserve:bare_h2_ka poolserve:bare_h2_same bare_h2_same:bare_h2_ka poolserve_tls:bare_h2_ka_tls poolserve_grpc:bare_tonic_ka"}
DUEL_ROUNDS=${DUEL_ROUNDS:-6}  # shared-core duel rounds per pair (0 skips them)
DUEL_SECS=${DUEL_SECS:-5}
out=bench/out
mkdir -p "$out"
results="$out/h2.txt"
rounds_tsv="$out/h2-rounds.tsv"
idle_tsv="$out/h2-idle.tsv"
instr_tsv="$out/h2-instructions.tsv"
: > "$results"

need() { command -v "$1" >/dev/null; }
if ! need h2load || ! need nghttp || ! need nginx; then
  apt-get install -y -q nghttp2-client nginx-light >/dev/null
fi
if [ "$INSTR_REQUESTS" != 0 ] && ! need valgrind; then
  apt-get install -y -q valgrind >/dev/null
fi
need taskset || { echo "taskset (util-linux) is required" >&2; exit 1; }
need openssl || { echo "openssl is required (test certificate)" >&2; exit 1; }
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
if [[ " $PEERS " == *" koatty_tls "* && ! -d bench/koatty/node_modules ]]; then
  (cd bench/koatty && npm ci --no-audit --no-fund --loglevel=error)
fi
cargo build --release -q -p poolserve -p poolserve-bench --bins
bin=target/release
ulimit -n "$(ulimit -Hn)"  # thousands of sockets per process need more than the usual 1,024

# One self-signed certificate for every TLS peer, and the gRPC request every call posts:
# uncompressed, length 7, EchoRequest { message: "hello" } (field 1, string: 0x0a 0x05 hello).
tls_dir="$PWD/$out/h2-tls"; mkdir -p "$tls_dir"
cert="$tls_dir/cert.pem"; key="$tls_dir/key.pem"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$key" -out "$cert" 2>/dev/null
grpc_body="$PWD/$out/h2-grpc-hello.bin"
printf '\x00\x00\x00\x00\x07\x0a\x05hello' > "$grpc_body"
grpc_path=/poolserve.demo.Echo/Unary

# nginx took `http2` as a listen parameter until 1.25.1, the `http2 on;` directive since.
nginx_version=$("$nginx_bin" -v 2>&1 | sed -n 's|.*nginx/\([0-9.]*\).*|\1|p')
if printf '1.25.1\n%s\n' "$nginx_version" | sort -V -C; then
  nginx_h2_listen=""; nginx_h2_directive="http2 on;"
else
  nginx_h2_listen=" http2"; nginx_h2_directive=""
fi

source bench/lib.sh

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

poolserve_config() { # $1 = protocol, $2 = port, $3 = tls (0|1); prints the config's path
  local admin cfg="$out/h2-poolserve.toml"
  admin=$(free_port)
  cat > "$cfg" <<TOML
[admin]
listen = "127.0.0.1:$admin"
[log]
level = "warn"
[[server]]
name = "bench"
protocol = "$1"
listen = "127.0.0.1:$2"
$([ "$3" = 1 ] && echo "tls = { cert = \"$cert\", key = \"$key\" }")
  [server.pool]
  max_connections = 20000
  connection_timeout = "300s"
TOML
  echo "$cfg"
}

nginx_config() { # $1 = port, $2 = tls (0|1)
  local ssl="" certs=""
  if [ "$2" = 1 ]; then
    # TLS 1.3 like the other peers (nginx before 1.23.4 leaves it out of its default protocols).
    ssl=" ssl"
    certs="ssl_certificate $cert; ssl_certificate_key $key; ssl_protocols TLSv1.2 TLSv1.3;"
  fi
  mkdir -p "$out/nginx-h2"
  cat > "$out/nginx-h2/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $PWD/$out/nginx-h2/nginx.pid;
error_log $PWD/$out/nginx-h2/error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  http2_max_concurrent_streams 250;
  client_body_temp_path $PWD/$out/nginx-h2;
  proxy_temp_path $PWD/$out/nginx-h2;
  fastcgi_temp_path $PWD/$out/nginx-h2;
  uwsgi_temp_path $PWD/$out/nginx-h2;
  scgi_temp_path $PWD/$out/nginx-h2;
  server {
    listen 127.0.0.1:$1$ssl$nginx_h2_listen;
    $nginx_h2_directive
    $certs
    location / { default_type text/plain; return 200 "hello"; }
  }
}
CONF
}

wrap=(taskset -c 1)  # what every server is started under
start() { # $1 = peer; sets server_pid, server_url (of `/`) and kind (get|grpc)
  local port scheme=http
  port=$(free_port); kind=get
  case "$1" in
    poolserve | poolserve_tls | poolserve_grpc)
      local protocol=http2 tls=0
      [ "$1" = poolserve_tls ] && tls=1
      [ "$1" = poolserve_grpc ] && protocol=grpc && kind=grpc
      "${wrap[@]}" "$bin/poolserve" --config "$(poolserve_config "$protocol" "$port" "$tls")" \
        > "$out/h2-$1.log" 2>&1 &
      ;;
    bare_h2)
      "${wrap[@]}" "$bin/bare_h2" "127.0.0.1:$port" > "$out/h2-$1.log" 2>&1 &
      ;;
    bare_h2_ka) # bare_h2 with poolserve's default keep-alive: PINGs every 30 s
      BARE_H2_KEEP_ALIVE_SECS=30 "${wrap[@]}" "$bin/bare_h2" "127.0.0.1:$port" \
        > "$out/h2-$1.log" 2>&1 &
      ;;
    bare_h2_same) # bare_h2_ka's server built into a binary that also holds poolserve
      "${wrap[@]}" "$bin/same_binary" bare http2 "127.0.0.1:$port" \
        > "$out/h2-$1.log" 2>&1 &
      ;;
    bare_h2_tls)
      "${wrap[@]}" "$bin/bare_h2" "127.0.0.1:$port" "$cert" "$key" \
        > "$out/h2-$1.log" 2>&1 &
      ;;
    bare_h2_ka_tls)
      BARE_H2_KEEP_ALIVE_SECS=30 "${wrap[@]}" "$bin/bare_h2" "127.0.0.1:$port" \
        "$cert" "$key" > "$out/h2-$1.log" 2>&1 &
      ;;
    bare_tonic_ka)
      kind=grpc
      BARE_TONIC_KEEP_ALIVE_SECS=30 "${wrap[@]}" "$bin/bare_tonic" "127.0.0.1:$port" \
        > "$out/h2-$1.log" 2>&1 &
      ;;
    bare_tonic)
      kind=grpc
      "${wrap[@]}" "$bin/bare_tonic" "127.0.0.1:$port" > "$out/h2-$1.log" 2>&1 &
      ;;
    nginx | nginx_tls)
      nginx_config "$port" "$([ "$1" = nginx_tls ] && echo 1 || echo 0)"
      "${wrap[@]}" "$nginx_bin" -p "$PWD/$out/nginx-h2" -c "$PWD/$out/nginx-h2/nginx.conf" \
        > "$out/h2-$1.log" 2>&1 &
      ;;
    koatty_tls)
      KOATTY_CERT=$cert KOATTY_KEY=$key "${wrap[@]}" node bench/koatty/server.js http2 "$port" \
        > "$out/h2-$1.log" 2>&1 &
      ;;
    *) echo "unknown peer $1" >&2; exit 1 ;;
  esac
  server_pid=$!; pids+=("$server_pid")
  [[ "$1" == *_tls ]] && scheme=https
  server_url="$scheme://127.0.0.1:$port"
  wait_port "$port" 400
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

# Before any measurement: every peer answers once, and each gRPC server's reply to the call
# h2load will post is the echo with grpc-status 0 (h2load itself only sees the HTTP status).
check() {
  local reply
  for peer in $PEERS; do
    start "$peer"
    if [ "$kind" = grpc ]; then
      reply=$(timeout 10 nghttp -v -d "$grpc_body" -H 'content-type: application/grpc' \
        -H 'te: trailers' "$server_url$grpc_path" 2>&1 | tr -d '\0' || true)
      if ! grep -aq 'grpc-status: 0' <<<"$reply" || ! grep -aq hello <<<"$reply"; then
        echo "$peer: no echo with grpc-status 0 from $server_url$grpc_path:" >&2
        echo "$reply" >&2; exit 1
      fi
    else
      # (nghttp warns on stderr that the self-signed certificate does not verify)
      reply=$(timeout 10 nghttp "$server_url/" 2>/dev/null || true)
      [ "$reply" = hello ] || { echo "$peer: GET / answered '$reply'" >&2; exit 1; }
    fi
    stop
    echo "  check $peer: ok ($server_url)" >&2
  done
}

request_args() { # sets url and extra (h2load options) for the current server's kind
  url="$server_url/"; extra=()
  if [ "$kind" = grpc ]; then
    url="$server_url$grpc_path"
    extra=(-d "$grpc_body" -H 'content-type: application/grpc' -H 'te: trailers')
  fi
}

busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }  # not idle
proc_ticks() { # CPU ticks of a process and its children (nginx's worker)
  local p t=0
  for p in "$1" $(ps -o pid= --ppid "$1"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}

load() { # h2load on the current server; prints "rps p99_us mean_us bad tls other_cpu"
  local url extra report log="$out/h2-latency.tsv" cpu="$out/h2-h2load-cpu.txt"
  request_args
  local busy0 server0 busy1 server1
  busy0=$(busy_ticks); server0=$(proc_ticks "$server_pid")
  # TLS 1.3 with AES-128-GCM for every TLS peer, so they all do the same crypto work.
  report=$(timeout $((SECS + WARMUP + 30)) /usr/bin/time -f '%U %S' -o "$cpu" \
    taskset -c 0 h2load -t1 -c"$CONNS" -m"$STREAMS" \
    -D "$SECS" --warm-up-time "$WARMUP" --tls13-ciphers=TLS_AES_128_GCM_SHA256 \
    --log-file "$log" "${extra[@]}" "$url" 2>&1 || true)
  busy1=$(busy_ticks); server1=$(proc_ticks "$server_pid")
  # CPU that neither the server nor h2load used during the run (other processes on this
  # machine), in % of one core: a round with much of it is disturbed.
  local other
  other=$(awk -v b=$((busy1 - busy0)) -v s=$((server1 - server0)) -v t=$((SECS + WARMUP)) \
    -v hz="$(getconf CLK_TCK)" '{printf "%.0f", 100 * ((b - s) / hz - $1 - $2) / t}' "$cpu")
  local rps mean bad p99 tls
  rps=$(awk '/^finished in/ {printf "%.0f", $4}' <<<"$report")
  mean=$(awk '/^time for request:/ {
    v = $6; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
    printf "%.0f", v * ((u == "us") ? 1 : (u == "ms") ? 1000 : 1000000) }' <<<"$report")
  # Failed requests (errored and timed-out ones included) and answers that are not 2xx.
  bad=$(awk '/^requests:/ {failed = $10}
             /^status codes:/ {other = $5 + $7 + $9} END {print failed + other}' <<<"$report")
  p99=$(cut -f3 "$log" | sort -n | awk '{v[NR] = $1} END {print (NR ? v[int(NR * 0.99)] : 0)}')
  tls=$(awk -F': ' '/^Cipher:/ {print $2}' <<<"$report")
  rm -f "$log"
  [ -n "$rps" ] || { echo "h2load gave no result:" >&2; echo "$report" >&2; rps=0; }
  echo "$rps ${p99:-0} ${mean:-0} ${bad:-0} ${tls:--} ${other:-0}"
}

check
# This machine is shared: a run during which other processes took more than MAX_OTHER % of a
# core is redone after a pause, up to RETRIES times.
printf 'round\tpeer\trps\tp99_us\tmean_us\tbad\tcipher\tother_cpu\tredone\n' > "$rounds_tsv"
for round in $(seq "$ROUNDS"); do
  for peer in $PEERS; do
    for attempt in $(seq 0 "$RETRIES"); do
      start "$peer"
      read -r r p m b t o <<<"$(load)"
      stop
      echo "  round $round $peer: $r requests/s, p99 $p us, mean $m us, bad $b, other CPU $o %" >&2
      [ "$o" -le "$MAX_OTHER" ] && break
      [ "$attempt" -lt "$RETRIES" ] && { echo "  (disturbed: redone)" >&2; sleep 5; }
    done
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$peer" "$r" "$p" "$m" "$b" "$t" "$o" \
      "$attempt" >> "$rounds_tsv"
    # A failed run (load prints rps 0 and p99 0) has no figures: empty values in the CSV.
    if [ "$r" = 0 ]; then
      echo "warning: round $round $peer measured no requests" >&2; r=""; p=""
    fi
    csv_row h2/run.sh "" rps "$peer" "" "$round" "$r" req/s
    csv_row h2/run.sh "" p99_us "$peer" "" "$round" "$p" us
  done
done

idle_run() { # $1 = mode (get|grpc); prints "rss_bytes_per_conn open failed closed"
  local before after fifo opened closed
  before=$(rss_kib "$server_pid")
  fifo="$out/h2-idle.fifo"; rm -f "$fifo"; mkfifo "$fifo"
  timeout $((HOLD + 120)) taskset -c 0 "$bin/h2_idle" \
    "${server_url#http://}" "$IDLE" "$HOLD" "$1" > "$fifo" &
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

printf 'round\tpeer\tbytes_per_conn\tclient\n' > "$idle_tsv"
# RSS moves with the allocator's arenas from run to run, so the idle run is repeated.
for round in $(seq "$IDLE_ROUNDS"); do
  for peer in $IDLE_PEERS; do
    start "$peer"
    read -r bytes opened closed <<<"$(idle_run "$kind")"
    stop
    # "open=N failed=N" and "closed_early=N": not all there, no figure per connection.
    idle_complete "$IDLE" "$opened" "$closed" || bytes=""
    printf '%s\t%s\t%s\t%s\n' "$round" "$peer" "$bytes" "$opened $closed" >> "$idle_tsv"
    echo "  round $round idle $peer: $bytes bytes/conn ($opened $closed)" >&2
    csv_row h2/run.sh "" idle_bytes_per_conn "$peer" "" "$round" "$bytes" B
  done
done

# User-space instructions per call under valgrind's callgrind, as bench/http1/instructions.sh
# does for HTTP/1: unlike requests/s on this machine, the count repeats from run to run.
instructions() { # on the current server (started under callgrind); dumps the calls' counts
  local url extra
  request_args
  timeout 120 taskset -c 0 h2load -n 2000 -c"$CONNS" -m"$STREAMS" "${extra[@]}" "$url" > /dev/null  # warm-up
  callgrind_control -z "$server_pid" > /dev/null 2>&1
  if ! timeout 300 taskset -c 0 h2load -n "$INSTR_REQUESTS" -c"$CONNS" -m"$STREAMS" "${extra[@]}" "$url" \
    | grep -q " $INSTR_REQUESTS succeeded"; then
    echo "not every counted call succeeded" >&2; return 1
  fi
  callgrind_control -d "$server_pid" > /dev/null 2>&1
}
printf 'peer\tinstructions_per_call\n' > "$instr_tsv"
if [ "$INSTR_REQUESTS" != 0 ]; then
  for peer in $INSTR_PEERS; do
    rm -f "$out"/h2-callgrind.*
    wrap=(taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$PWD/$out/h2-callgrind.%p")
    start "$peer"
    dumped=0; instructions && dumped=1
    stop  # the dump is complete once the process has exited
    n=0
    if [ "$dumped" = 1 ]; then
      n=$(awk -v n="$INSTR_REQUESTS" '/^summary:/ {printf "%.0f", $2 / n}' \
        "$out/h2-callgrind.$server_pid.1")
    fi
    printf '%s\t%s\n' "$peer" "$n" >> "$instr_tsv"
    echo "  instructions $peer: $n per call" >&2
    csv_row h2/run.sh "" instructions "$peer" "" 1 "$n" instr/call
  done
  rm -f "$out"/h2-callgrind.*
  wrap=(taskset -c 1)
fi

# The shared-core duel: both servers of a pair at once on core 1, each under its own h2load on
# core 0 with half the connections, so each side gets the same offered load as the other. Every
# round starts both servers afresh, taking turns at which starts first (see bench/http1/run.sh:
# a pair of processes keeps a placement advantage for as long as it runs).
duel_succeeded() { awk '/^requests:/ {print $8}' "$1"; }
duel_tsv="$out/h2-duel.tsv"
printf 'pair\tround\tours_requests\tours_ticks\tpeer_requests\tpeer_ticks\tratio\n' > "$duel_tsv"
if [ "$DUEL_ROUNDS" != 0 ]; then
  for pair in $DUEL_PAIRS; do
    ours=${pair%%:*}; theirs=${pair##*:}
    for round in $(seq "$DUEL_ROUNDS"); do
      if (( round % 2 )); then
        start "$ours"; pa=$server_pid; request_args; url_a=$url; extra_a=("${extra[@]}")
        start "$theirs"; pb=$server_pid; request_args; url_b=$url; extra_b=("${extra[@]}")
      else
        start "$theirs"; pb=$server_pid; request_args; url_b=$url; extra_b=("${extra[@]}")
        start "$ours"; pa=$server_pid; request_args; url_a=$url; extra_a=("${extra[@]}")
      fi
      h2a=(taskset -c 0 h2load -t1 -c"$CONNS" -m"$STREAMS" -D "$DUEL_SECS" --warm-up-time 1
        --tls13-ciphers=TLS_AES_128_GCM_SHA256 "${extra_a[@]}" "$url_a")
      h2b=(taskset -c 0 h2load -t1 -c"$CONNS" -m"$STREAMS" -D "$DUEL_SECS" --warm-up-time 1
        --tls13-ciphers=TLS_AES_128_GCM_SHA256 "${extra_b[@]}" "$url_b")
      read -r ta tb <<<"$(duel_round "$pa" "$pb" h2a h2b "$((round / 2))")"
      kill "$pa" "$pb"; wait "$pa" "$pb" 2>/dev/null || true
      ra=$(duel_succeeded "$out/duel-a.txt"); rb=$(duel_succeeded "$out/duel-b.txt")
      r=$(duel_ratio "$ra" "$ta" "$rb" "$tb")  # empty, with a warning, for a failed round
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pair" "$round" "$ra" "$ta" "$rb" "$tb" "$r" >> "$duel_tsv"
      echo "  duel $pair round $round: $ra requests / $ta ticks vs $rb / $tb: $r" >&2
      csv_row h2/run.sh "" duel_ratio "$ours" "$theirs" "$round" "$r" x
    done
  done
fi

{
  echo "h2load -t1 -c$CONNS -m$STREAMS, $ROUNDS rounds of ${SECS}s (+${WARMUP}s warm-up);" \
    "idle: $IDLE connections, $IDLE_ROUNDS rounds; callgrind: $INSTR_REQUESTS calls"
  python3 bench/h2/summarize.py "$rounds_tsv" "$idle_tsv" "$instr_tsv" "$duel_tsv"
} | tee -a "$results"
