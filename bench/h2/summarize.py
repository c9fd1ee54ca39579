"""Summarises bench/h2/run.sh's per-round files: medians, spread and poolserve / peer ratios.

Usage: python3 bench/h2/summarize.py ROUNDS.tsv IDLE.tsv [INSTRUCTIONS.tsv [DUEL.tsv]]
"""
import csv
import statistics
import sys

# (poolserve side, peer, target ratio or None)
# The targets are against the baselines with poolserve's default keep-alive (`_ka`); the ones
# with hyper's and tonic's defaults (no PINGs) are reported beside them.
PAIRS = [
    ("poolserve", "bare_h2_ka", 0.97),
    ("poolserve", "bare_h2", None),
    ("poolserve", "nginx", None),
    ("poolserve_tls", "bare_h2_ka_tls", 0.97),
    ("poolserve_tls", "bare_h2_tls", None),
    ("poolserve_tls", "nginx_tls", None),
    ("poolserve_tls", "koatty_tls", None),
    ("poolserve_grpc", "bare_tonic_ka", 0.97),
    ("poolserve_grpc", "bare_tonic", None),
]
IDLE_PAIRS = [("poolserve", "bare_h2"), ("poolserve_grpc", "bare_tonic")]
INSTR_PAIRS = [
    ("poolserve", "bare_h2_ka"),
    ("poolserve", "bare_h2"),
    ("bare_h2_ka", "bare_h2"),
    ("poolserve_grpc", "bare_tonic_ka"),
    ("poolserve_grpc", "bare_tonic"),
]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def by_peer(table, field):
    """{peer: {round: value}} in first-seen peer order; a round without a figure (empty, as
    run.sh writes for an idle run that did not hold every connection) is left out."""
    out = {}
    for r in table:
        if r[field] != "":
            out.setdefault(r["peer"], {})[int(r["round"])] = float(r[field])
    return out


def spread(values):
    """Half the min-max range, as a percentage of the median."""
    med = statistics.median(values)
    return 100 * (max(values) - min(values)) / 2 / med if med else 0.0


def throughput(path):
    """Per peer: median requests/s, spread, median p99 and mean latency, failed or non-2xx
    calls over all rounds, the most CPU other processes took during one of its kept runs (in %
    of one core) and how many runs were redone because others took more."""
    table = rows(path)
    if not table:
        return
    rps, p99 = by_peer(table, "rps"), by_peer(table, "p99_us")
    mean, bad = by_peer(table, "mean_us"), by_peer(table, "bad")
    other, redone = by_peer(table, "other_cpu"), by_peer(table, "redone")
    print(f"{'peer':<15} {'requests/s':>10} {'spread':>7} {'p99 ms':>7} {'mean ms':>8} "
          f"{'bad':>4} {'other':>6} {'redone':>6}  rounds (requests/s)")
    for peer, per_round in rps.items():
        v = list(per_round.values())
        print(f"{peer:<15} {statistics.median(v):>10.0f} {spread(v):>6.1f}% "
              f"{statistics.median(p99[peer].values()) / 1000:>7.2f} "
              f"{statistics.median(mean[peer].values()) / 1000:>8.2f} "
              f"{sum(bad[peer].values()):>4.0f} {max(other[peer].values()):>5.0f}% "
              f"{sum(redone[peer].values()):>6.0f}  "
              + " ".join(f"{x:.0f}" for x in v))
    ciphers = {}
    for r in table:
        if r["cipher"] != "-":
            ciphers.setdefault(r["peer"], set()).add(r["cipher"])
    if ciphers:
        print("TLS: " + ", ".join(f"{p} {'/'.join(sorted(c))}" for p, c in ciphers.items()))
    print()
    # Each round runs the peers back to back, so the ratio within a round cancels most of the
    # machine's drift between rounds: the verdict uses the median of those.
    print("poolserve / peer, requests/s   per round: median [min-max]   of medians  p99   target")
    for ours, peer, target in PAIRS:
        if ours not in rps or peer not in rps:
            continue
        a, b = rps[ours], rps[peer]
        of_medians = statistics.median(a.values()) / statistics.median(b.values())
        per_round = [a[r] / b[r] for r in a if r in b and b[r]]
        paired = statistics.median(per_round)
        p99_ratio = statistics.median(p99[ours].values()) / max(1, statistics.median(p99[peer].values()))
        verdict = ""
        if target:
            verdict = f">= {target}: " + ("met" if paired >= target else "NOT met")
        print(f"{ours + ' / ' + peer:<29} {paired:>6.3f} [{min(per_round):.3f}-{max(per_round):.3f}]"
              f"   {of_medians:>10.3f} {p99_ratio:>5.2f}  {verdict}")


def idle(path):
    table = rows(path)
    if not table:
        return
    per = by_peer(table, "bytes_per_conn")
    print()
    print(f"{'idle peer':<15} {'RSS B/conn':>10}  rounds")
    for peer, per_round in per.items():
        v = list(per_round.values())
        print(f"{peer:<15} {statistics.median(v):>10.0f}  " + " ".join(f"{x:.0f}" for x in v))
    for ours, peer in IDLE_PAIRS:
        if ours in per and peer in per:
            diff = statistics.median(per[ours].values()) - statistics.median(per[peer].values())
            print(f"{ours} - {peer}: {diff:+.0f} bytes per idle connection (medians)")


def instructions(path):
    table = rows(path)
    if not table:
        return
    per = {r["peer"]: float(r["instructions_per_call"]) for r in table}
    print()
    print("user-space instructions per call (callgrind): " +
          ", ".join(f"{peer} {n:.0f}" for peer, n in per.items()))
    for ours, peer in INSTR_PAIRS:
        if per.get(ours) and per.get(peer):
            print(f"{ours} / {peer}: {per[ours] / per[peer]:.3f} "
                  f"({per[ours] - per[peer]:+.0f} instructions per call)")


def duel(path):
    """The shared-core duel: per pair, the median and range of the per-round ratios of
    requests per CPU-second (poolserve / peer)."""
    table = rows(path)
    if not table:
        return
    per = {}
    for r in table:  # a failed round has an empty ratio: left out
        per.setdefault(r["pair"], [])
        if r["ratio"] != "":
            per[r["pair"]].append(float(r["ratio"]))
    print()
    print("shared-core duel, requests per CPU-second   median [min-max]   rounds")
    for pair, ratios in per.items():
        ours, peer = pair.split(":")
        if not ratios:
            print(f"{ours + ' / ' + peer:<31} no round gave a ratio")
            continue
        print(f"{ours + ' / ' + peer:<31} {statistics.median(ratios):>6.3f} "
              f"[{min(ratios):.3f}-{max(ratios):.3f}]   " + " ".join(f"{x:.3f}" for x in ratios))


if __name__ == "__main__":
    throughput(sys.argv[1])
    idle(sys.argv[2])
    if len(sys.argv) > 3:
        instructions(sys.argv[3])
    if len(sys.argv) > 4:
        duel(sys.argv[4])
