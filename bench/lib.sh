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
