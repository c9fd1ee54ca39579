#!/usr/bin/env python3
"""Writes bench/RESULTS.md (one table: every target, its figure, baseline, verdict, date and
command) and the plots in bench/plots/ from the rows the benchmark scripts append to
bench/out/results.csv (csv_row in bench/lib.sh).

Usage: bench/.venv/bin/python bench/report.py [--csv FILE] [--commands FILE] [--md FILE]
                                               [--plots DIR]

--commands is the phase -> command file bench/run-all.sh writes (bench/out/commands.tsv): the
command column of the table is the command of the phase that measured the row. A target whose
rows are not in the CSV is "not measured in this run"; nothing is carried over from an earlier
RESULTS.md. When the CSV holds several runs of one script (runs by hand append to it), each row
is taken from the latest run that measured all of its sides. A value that is empty or not a
number is a failed round: left out of the figures and counted in the figure text. A row measured
by a phase that commands.tsv says did not exit 0 reads "partial" and is not judged. Verdicts
compare the unrounded figures; the table shows them rounded.
"""
import argparse
import csv
import math
import operator
import os
import statistics
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
MIN_DUEL_ROUNDS = 16
MIN_SEQ_ROUNDS = 3  # paired rounds a target judged on sequential rounds needs
PLOT_NAMES = ["duels", "ratios", "http1_peers", "h2_peers", "ws_echo", "idle_memory"]
# The pool's memory per idle connection: poolserve's side minus its baseline's, per script.
IDLE_PAIRS = {"http1/run.sh": [("poolserve", "bare_hyper")],
              "h2/run.sh": [("poolserve", "bare_h2"), ("poolserve_grpc", "bare_tonic")],
              "ws/run.sh": [("poolserve", "bare_ws")]}

# The table, in order. Each row names where its data is in the CSV and which phase of
# bench/run-all.sh measures it (the command column comes from that phase).
#   duel:   per-round ratios (kind duel_ratio) of `name` against `baseline`
#   ratio:  per-round ratios of `kind` between `name` and `baseline`, both measured in the same
#           sequential rounds (paired by round)
#   memory: median of `name`'s idle bytes per connection minus the median of `baseline`'s
#           (`extra`: more such pairs, shown beside and judged alike; one missing: not judged)
#   cpu:    median of `name`'s `kind` in `mode`, `baseline`'s (in `baseline_mode`) beside it
#   instructions: callgrind counts of `name` and `baseline` (`also`: more pairs shown beside;
#           reported only; left out when its phase was not run)
TARGETS = [
    dict(what="HTTP/1.1 keep-alive requests, duel", type="duel", script="http1/run.sh",
         mode="keepalive", name="poolserve", baseline="bare_hyper", op=">=", target=0.97,
         phase="http1_duel"),
    dict(what="HTTP/1.1 keep-alive requests, duel", type="duel", script="http1/run.sh",
         mode="keepalive", name="poolserve", baseline="bare_same", op=None, target=None,
         phase="http1_duel", baseline_text="bare_same (the same binary)"),
    dict(what="HTTP/1.1 keep-alive requests, duel", type="duel", script="http1/run.sh",
         mode="keepalive", name="poolserve", baseline="nginx", op=">=", target=0.97,
         phase="http1_duel", baseline_text="nginx `return 200` (one process)"),
    dict(what="HTTP/1.1 keep-alive p99, sequential rounds (wrk --latency)", type="ratio",
         script="http1/run.sh", mode="keepalive", kind="p99_us", unit="µs", name="poolserve",
         baseline="bare_hyper", op="<=", target=1.05, phase="http1_seq"),
    dict(what="h2c requests, duel (h2load -c16 -m16)", type="duel", script="h2/run.sh", mode="",
         name="poolserve", baseline="bare_h2_same", op=">=", target=0.97, phase="h2_duel",
         baseline_text="bare_h2_same (the same binary)"),
    dict(what="h2c requests, duel (h2load -c16 -m16)", type="duel", script="h2/run.sh", mode="",
         name="poolserve", baseline="bare_h2_ka", op=">=", target=0.92, phase="h2_duel"),
    dict(what="gRPC unary calls, duel", type="duel", script="h2/run.sh", mode="",
         name="poolserve_grpc", baseline="bare_tonic_ka", op=">=", target=0.97, phase="h2_duel"),
    dict(what="WebSocket echo, 64 B messages, duel (messages per CPU-second)", type="duel",
         script="ws/run.sh", mode="64", name="poolserve", baseline="bare_ws", op=">=",
         target=0.97, phase="ws"),
    dict(what="WebSocket echo, 16 KiB messages, duel (messages per CPU-second)", type="duel",
         script="ws/run.sh", mode="16384", name="poolserve", baseline="bare_ws", op=">=",
         target=0.97, phase="ws"),
    dict(what="pool memory per idle HTTP/1.1 keep-alive connection", type="memory",
         script="http1/run.sh", mode="keepalive", name="poolserve", baseline="bare_hyper",
         op="<=", target=1024, phase="http1_idle"),
    dict(what="pool memory per idle HTTP/2 connection (h2c; gRPC beside it)", type="memory",
         script="h2/run.sh", mode="", name="poolserve", baseline="bare_h2",
         extra=[("gRPC", "poolserve_grpc", "bare_tonic")], op="<=", target=1024,
         phase="h2_seq", baseline_text="bare_h2 / bare_tonic"),
    dict(what="pool memory per idle WebSocket connection", type="memory", script="ws/run.sh",
         mode=None, name="poolserve", baseline="bare_ws", op="<=", target=1024, phase="ws"),
    dict(what="HTTP/1.1 keep-alive user-space instructions per request (callgrind)",
         type="instructions", script="http1/instructions.sh", mode="keepalive",
         name="poolserve", baseline="bare_hyper", also=[("pool_same", "bare_same")],
         per="request", op=None, target=None, phase="instructions", optional=True),
    # Earlier issues' targets.
    dict(what="h2 over TLS requests, duel (h2load -c16 -m16)", type="duel", script="h2/run.sh",
         mode="", name="poolserve_tls", baseline="bare_h2_ka_tls", op=">=", target=0.97,
         phase="h2_duel"),
    dict(what="HTTP/1.1 `Connection: close` requests, sequential rounds (wrk)", type="ratio",
         script="http1/run.sh", mode="close", kind="rps", unit="req/s", name="poolserve",
         baseline="bare_hyper", op=">=", target=0.97, phase="http1_seq"),
    dict(what="heartbeat CPU of 10,000 idle WebSocket connections (ping every 30s, the default)",
         type="cpu", script="ws/run.sh", mode="30s", kind="idle_cpu_pct", name="poolserve",
         baseline="bare_ws", baseline_mode="none", op="<", target=2, phase="ws",
         baseline_text="bare_ws (no heartbeat)"),
    # Instruction counts of HTTP/2 and gRPC, reported.
    dict(what="h2c user-space instructions per stream (callgrind, h2load -c16 -m16)",
         type="instructions", script="h2/run.sh", mode="", name="poolserve",
         baseline="bare_h2_ka", per="stream", op=None, target=None, phase="h2_instructions",
         optional=True),
    dict(what="gRPC unary user-space instructions per call (callgrind)", type="instructions",
         script="h2/run.sh", mode="", name="poolserve_grpc", baseline="bare_tonic_ka",
         per="call", op=None, target=None, phase="h2_instructions", optional=True),
]


# --- reading -------------------------------------------------------------------------------

def number(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def figures(per_round):
    """{round: value} without the failed rounds (value None)."""
    return {r: v for r, v in per_round.items() if v is not None}


def positive(v):
    return v is not None and v > 0


class Results:
    """The CSV's rows, grouped by run (the `date` column: one run of one script). A row whose
    value is empty or not a number is kept with value None: a failed round."""

    def __init__(self, path):
        self.rows = []
        if os.path.exists(path):
            with open(path, newline="") as f:
                for r in csv.DictReader(f):
                    r["value"] = number(r.get("value"))
                    try:
                        r["round"] = int(r.get("round") or 0)
                    except ValueError:
                        r["round"] = 0
                    self.rows.append(r)

    def runs(self, script, kind, mode=None, baseline=""):
        """{date: (phase, {name: {round: value}})} of the matching rows (value None: a failed
        round); mode None: any."""
        out = {}
        for r in self.rows:
            if r["script"] != script or r["kind"] != kind or r["baseline"] != baseline:
                continue
            if mode is not None and r["mode"] != mode:
                continue
            phase, names = out.setdefault(r["date"], (r["phase"], {}))
            names.setdefault(r["name"], {})[r["round"]] = r["value"]
        return out

    def pick(self, script, kind, names, mode=None, baseline=""):
        """(date, phase, {name: {round: value}}) of the latest run with a figure of every one
        of `names`, or None."""
        runs = self.runs(script, kind, mode, baseline)
        for date in sorted(runs, reverse=True):
            phase, per = runs[date]
            if all(figures(per.get(n, {})) for n in names):
                return date, phase, per
        return None

    def groups(self, kind):
        """Every (script, mode, name, baseline) with rows of `kind`, in first-seen order."""
        seen = []
        for r in self.rows:
            key = (r["script"], r["mode"], r["name"], r["baseline"])
            if r["kind"] == kind and key not in seen:
                seen.append(key)
        return seen


def read_commands(path):
    """{phase: (status, seconds, command)} from bench/run-all.sh's commands.tsv."""
    out = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 4 and parts[0] != "phase":
                    out[parts[0]] = (parts[1], parts[2], parts[3])
    return out


# --- figures -------------------------------------------------------------------------------

def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


OPS = {">=": (operator.ge, "≥"), "<=": (operator.le, "≤"), "<": (operator.lt, "<")}


def met(value, op, target):
    """On the unrounded value: rounding is for the table only."""
    return OPS[op][0](value, target)


def target_text(op, target, unit="x"):
    sign = OPS[op][1]
    if unit == "B":
        return f"{sign} {target / 1024:g} KiB" if target % 1024 == 0 else f"{sign} {target:g} B"
    if unit == "%":
        return f"{sign} {target:g} % of a core"
    return f"{sign} {target:g}x"


def unit_of(t):
    return {"memory": "B", "cpu": "%"}.get(t["type"], "x")


def ints(v):
    return f"{v:,.0f}"


def signed(v, plus=""):
    """An integer with thousands separators and a real minus sign (plus="+": and a plus)."""
    return f"{v:{plus},.0f}".replace("-", "−")


def ratio_stats(ratios):
    """median and geometric mean of per-round ratios, unrounded."""
    return statistics.median(ratios), geomean(ratios)


def judge_ratios(t, ratios, min_rounds):
    if t["op"] is None:
        return "reported"
    med, geo = ratio_stats(ratios)
    head = target_text(t["op"], t["target"])
    if len(ratios) < min_rounds:
        return f"{head}: not settled ({len(ratios)} rounds, {min_rounds} needed)"
    ok = met(med, t["op"], t["target"]) and met(geo, t["op"], t["target"])
    return f"{head}: {'met' if ok else 'not met'}"


def ratios_text(ratios):
    med, geo = ratio_stats(ratios)
    return (f"{med:.3f}x median, {geo:.3f}x geometric mean of the per-round ratios "
            f"({len(ratios)} rounds, {min(ratios):.3f}–{max(ratios):.3f})")


def dropped(n):
    """A note on the failed rounds left out of a figure: a round with an empty value or a zero
    (a failed load), or with one side missing."""
    return f"; {n} failed round{'s' if n > 1 else ''} (no figure) left out" if n > 0 else ""


def paired_ratios(a, b):
    return [a[r] / b[r] for r in sorted(a) if r in b and positive(b[r]) and positive(a[r])]


def row_for(t, res):
    """(figure, baseline, verdict, date, phase) for target `t`; figure None when its rows are
    not in the CSV."""
    baseline = t.get("baseline_text", t["baseline"])
    if t["type"] == "duel":
        got = res.pick(t["script"], "duel_ratio", [t["name"]], t["mode"], t["baseline"])
        if not got:
            return None, baseline, None, None, None
        date, phase, per = got
        ratios = [v for _, v in sorted(per[t["name"]].items()) if positive(v)]
        if not ratios:
            return None, baseline, None, None, None
        return (ratios_text(ratios) + dropped(len(per[t["name"]]) - len(ratios)), baseline,
                judge_ratios(t, ratios, MIN_DUEL_ROUNDS), date, phase)
    if t["type"] == "ratio":
        got = res.pick(t["script"], t["kind"], [t["name"], t["baseline"]], t["mode"])
        if not got:
            return None, baseline, None, None, None
        date, phase, per = got
        a, b = per[t["name"]], per[t["baseline"]]
        ratios = paired_ratios(a, b)
        if not ratios:
            return None, baseline, None, None, None
        med_a = statistics.median([v for v in a.values() if positive(v)])
        med_b = statistics.median([v for v in b.values() if positive(v)])
        fig = (ratios_text(ratios) + f"; {ints(med_a)} against {ints(med_b)} {t['unit']} "
               "(medians)" + dropped(len(set(a) | set(b)) - len(ratios)))
        return fig, baseline, judge_ratios(t, ratios, MIN_SEQ_ROUNDS), date, phase
    if t["type"] == "memory":
        pairs = [("", t["name"], t["baseline"])] + list(t.get("extra", []))
        parts, values, dates, phase, missing = [], [], [], None, []
        for label, ours, theirs in pairs:
            got = res.pick(t["script"], "idle_bytes_per_conn", [ours, theirs], t["mode"])
            if not got:
                missing.append(label or ours)
                continue
            date, ph, per = got
            fa, fb = figures(per[ours]), figures(per[theirs])
            a, b = statistics.median(fa.values()), statistics.median(fb.values())
            n = min(len(fa), len(fb))
            rounds = f"median of {n} rounds" if n > 1 else "one round"
            failed = len(per[ours]) - len(fa) + len(per[theirs]) - len(fb)
            parts.append(f"{label + ' ' if label else ''}{signed(a - b)} B "
                         f"({ours} {ints(a)} − {theirs} {ints(b)} B per connection, {rounds}"
                         f"{dropped(failed)})")
            values.append(a - b)
            dates.append(date)
            phase = phase or ph
        if not values:
            return None, baseline, None, None, None
        if missing:
            parts.append(f"{', '.join(missing)}: not measured in this run")
        ok = all(met(v, t["op"], t["target"]) for v in values)
        # A pair not measured may not meet the target: met only when every pair was measured.
        judged = ("not met" if not ok else
                  f"not judged ({', '.join(missing)} not measured)" if missing else "met")
        verdict = f"{target_text(t['op'], t['target'], 'B')}: {judged}"
        return "; ".join(parts), baseline, verdict, max(dates), phase
    if t["type"] == "cpu":
        got = res.pick(t["script"], t["kind"], [t["name"]], t["mode"])
        if not got:
            return None, baseline, None, None, None
        date, phase, per = got
        ours = figures(per[t["name"]])
        value = statistics.median(ours.values())
        n = len(ours)
        rounds = f"median of {n} rounds" if n > 1 else "one round"
        fig = f"{value:.3f} % of a core ({rounds}{dropped(len(per[t['name']]) - n)})"
        theirs = res.runs(t["script"], t["kind"], t["baseline_mode"]).get(date, (None, {}))[1]
        theirs = figures(theirs.get(t["baseline"], {}))
        fig += (f"; {t['baseline']} {statistics.median(theirs.values()):.3f} %" if theirs else
                f"; {t['baseline']}: not measured in this run")
        verdict = (f"{target_text(t['op'], t['target'], '%')}: "
                   f"{'met' if met(value, t['op'], t['target']) else 'not met'}")
        return fig, baseline, verdict, date, phase
    if t["type"] == "instructions":
        ours, theirs = t["name"], t["baseline"]
        got = res.pick(t["script"], "instructions", [ours, theirs], t["mode"])
        if not got:
            return None, baseline, None, None, None
        date, phase, per = got
        n = {}  # a count of 0 is a failed one
        for k, values in per.items():
            counts = [v for _, v in sorted(values.items()) if positive(v)]
            if counts:
                n[k] = counts[0]
        if ours not in n or theirs not in n:
            return None, baseline, None, None, None
        fig = f"{ints(n[ours])} per {t['per']}"
        base = f"{theirs} {ints(n[theirs])} ({n[ours] / n[theirs]:.3f}x)"
        for a, b in t.get("also", []):
            if a in n and b in n:
                base += f"; {a} {ints(n[a])} / {b} {ints(n[b])} ({n[a] / n[b]:.3f}x)"
        return fig, base, "reported", date, phase
    raise ValueError(t["type"])


def command_for(phase, script, commands):
    if phase and phase in commands:
        return f"`{commands[phase][2]}`"
    if script:
        return f"`bench/{script}`" + ("" if phase else " (run by hand)")
    return "—"


def status_text(status):
    """What commands.tsv's status of a phase that did not exit 0 means (`timeout -k` exits 124
    when the phase ended at its TERM, 137 when it had to be killed)."""
    return {"124": "timed out", "137": "timed out", "skipped": "was skipped"}.get(
        status, f"exited {status}")


def failed_text(t, res):
    """For a row without a figure: which of its sides has rows in the CSV's latest run of them,
    every one a failed round, or None."""
    kind = {"duel": "duel_ratio", "memory": "idle_bytes_per_conn",
            "instructions": "instructions"}.get(t["type"]) or t["kind"]
    sides = [t["name"]] if t["type"] in ("duel", "cpu") else [t["name"], t["baseline"]]
    runs = res.runs(t["script"], kind, t["mode"], t["baseline"] if t["type"] == "duel" else "")
    if not runs:
        return None
    per = runs[max(runs)][1]
    dead = [f"{n}'s {len(per[n])} round{'s' if len(per[n]) > 1 else ''}" for n in sides
            if per.get(n) and not figures(per[n])]
    return f"no figure: {', '.join(dead)} failed" if dead else None


def missing_text(t, commands, res):
    status = commands.get(t["phase"], (None,))[0]
    head = failed_text(t, res) or "not measured in this run"
    if status in (None, "0", ""):
        return head
    return f"{head} (its phase, {t['phase']}, {status_text(status)})"


def partial_verdict(t, phase, commands):
    """The verdict of a row with figures whose phase did not exit 0, or None."""
    status = commands.get(phase, ("0",))[0] if phase else "0"
    if status in ("0", ""):
        return None
    head = ("reported" if t["op"] is None else
            f"{target_text(t['op'], t['target'], unit_of(t))}, not judged")
    return f"partial: its phase {phase} {status_text(status)} ({head})"


def md_cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


# --- plots ---------------------------------------------------------------------------------

COLORS = {"poolserve": "#1f77b4", "bare": "#ff7f0e", "nginx": "#2ca02c", "koatty": "#d62728",
          "pool_same": "#1f77b4"}


def color(name):
    for prefix, c in COLORS.items():
        if name.startswith(prefix):
            return c
    return "#7f7f7f"


def label_of(script, mode, name, baseline):
    if script.startswith("http1"):
        proto = f"HTTP/1.1 {mode}".strip()
    elif script.startswith("ws"):
        proto = "WebSocket " + (f"{int(mode) // 1024} KiB" if mode.isdigit() and int(mode) >= 1024
                                else f"{mode} B")
    elif "grpc" in name:
        proto = "gRPC"
    elif "tls" in name:
        proto = "h2 TLS"
    else:
        proto = "h2c"
    return f"{proto}\n{name} /\n{baseline}"


def save(fig, plots, base, made):
    png = os.path.join(plots, base + ".png")
    svg = os.path.join(plots, base + ".svg")
    fig.savefig(png, dpi=110, metadata={"Software": None})
    fig.savefig(svg, metadata={"Date": None})
    made[base] = (png, svg)


def strip_plot(plt, entries, title, ylabel, plots, base, made):
    """entries: (label, values, op, target, failed rounds). One column of dots (one per round)
    per entry, its median as a black bar, its geometric mean as a diamond, its target as a red
    dashes."""
    if not entries:
        return
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(entries) + 2), 5.2))
    ax.axhline(1.0, color="#555555", lw=1, ls=":", zorder=1)
    target_drawn = False
    for i, (label, values, op, target, _) in enumerate(entries):
        n = len(values)
        xs = [i + (0.28 * ((k / (n - 1)) - 0.5) if n > 1 else 0) for k in range(n)]
        ax.scatter(xs, values, s=22, color="#1f77b4", alpha=0.75, zorder=3,
                   label="one round (in order, left to right)" if i == 0 else None)
        med = statistics.median(values)
        ax.hlines(med, i - 0.25, i + 0.25, color="black", lw=2.2, zorder=4,
                  label="median" if i == 0 else None)
        ax.scatter([i + 0.3], [geomean(values)], marker="D", s=30, color="#9467bd", zorder=4,
                   label="geometric mean" if i == 0 else None)
        ax.annotate(f"{med:.3f}", (i + 0.27, med), xytext=(4, -12), textcoords="offset points",
                    fontsize=8)
        if target is not None:
            ax.hlines(target, i - 0.4, i + 0.4, color="#d62728", lw=1.6, ls="--", zorder=2,
                      label=None if target_drawn else "target")
            ax.annotate(f"{OPS[op][1]} {target:g}", (i - 0.4, target),
                        xytext=(0, 3), textcoords="offset points", fontsize=8, color="#d62728")
            target_drawn = True
    ax.set_xticks(range(len(entries)))
    ax.set_xticklabels([f"{e[0]}\n({len(e[1])} rounds" + (f", {e[4]} failed)" if e[4] else ")")
                        for e in entries], fontsize=8)
    ax.set_xlim(-0.6, len(entries) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    save(fig, plots, base, made)
    plt.close(fig)


def bar_plot(plt, ticker, panels, title, plots, base, made):
    """panels: (subtitle, ylabel, {name: {round: value}}). One bar per peer (the median over
    rounds) with a dot per round."""
    panels = [p for p in panels if p[2]]
    if not panels:
        return
    width = max(len(p[2]) for p in panels)
    cols = 2 if len(panels) > 1 and width <= 6 else 1  # many peers: one panel a row
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.0, 0.85 * width + 2.5) * cols,
                                                  4.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (subtitle, ylabel, per) in zip(axes.flat, panels):
        names = list(per)
        meds = [statistics.median(per[n].values()) for n in names]
        # One peer far slower than the rest (koatty's p99) would flatten the others' bars.
        log = "p99" in ylabel and min(meds) > 0 and max(meds) / min(meds) > 20
        if log:
            ax.set_yscale("log")
            ylabel += ", log scale"
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.bar(range(len(names)), meds, color=[color(n) for n in names], alpha=0.8,
               edgecolor="black", lw=0.5)
        for i, n in enumerate(names):
            vals = [v for _, v in sorted(per[n].items())]
            k = len(vals)
            xs = [i + (0.3 * ((j / (k - 1)) - 0.5) if k > 1 else 0) for j in range(k)]
            ax.scatter(xs, vals, s=12, color="black", zorder=3,
                       label="one round" if i == 0 else None)
            ax.annotate(f"{meds[i]:,.0f}", (i, max(vals + [meds[i]])), xytext=(0, 4),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7.5)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30 if len(names) > 4 else 0,
                           ha="right" if len(names) > 4 else "center", fontsize=8.5)
        ax.set_ylabel(ylabel)
        ax.set_title(subtitle, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save(fig, plots, base, made)
    plt.close(fig)


def latest_all(res, script, kind, mode=None):
    """{name: {round: value}} of the latest run of `script` with rows of `kind` (every peer
    that run measured), and its date."""
    runs = res.runs(script, kind, mode)
    if not runs:
        return {}, None
    date = max(runs)
    per = {name: figures(v) for name, v in runs[date][1].items()}
    return {name: v for name, v in per.items() if v}, date


def make_plots(res, plots):
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "poolserve-bench"
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    os.makedirs(plots, exist_ok=True)
    made = {}

    # (a) every duel in the CSV, the targets' first and in the table's order.
    keys = [(t["script"], t["mode"], t["name"], t["baseline"]) for t in TARGETS
            if t["type"] == "duel"]
    keys += [k for k in res.groups("duel_ratio") if k not in keys]
    targets = {(t["script"], t["mode"], t["name"], t["baseline"]): (t["op"], t["target"])
               for t in TARGETS if t["type"] == "duel"}
    entries = []
    for script, mode, name, baseline in keys:
        got = res.pick(script, "duel_ratio", [name], mode, baseline)
        if got:
            rounds = got[2][name]
            vals = [v for _, v in sorted(rounds.items()) if positive(v)]
            op, target = targets.get((script, mode, name, baseline), (None, None))
            if vals:
                entries.append((label_of(script, mode, name, baseline), vals, op, target,
                                len(rounds) - len(vals)))
    strip_plot(plt, entries, "Shared-core duels: requests per CPU-second, poolserve / baseline, "
               "per round", "ratio (poolserve / baseline)", plots, "duels", made)

    # The targets judged on sequential rounds: their per-round ratios.
    entries = []
    for t in TARGETS:
        if t["type"] != "ratio":
            continue
        got = res.pick(t["script"], t["kind"], [t["name"], t["baseline"]], t["mode"])
        if got:
            a, b = got[2][t["name"]], got[2][t["baseline"]]
            vals = paired_ratios(a, b)
            what = {"p99_us": "p99", "rps": "req/s"}.get(t["kind"], "msgs/s")
            label = label_of(t["script"], t["mode"], t["name"], t["baseline"])
            if vals:
                entries.append((label.replace("\n", f" {what}\n", 1), vals, t["op"], t["target"],
                                len(set(a) | set(b)) - len(vals)))
    strip_plot(plt, entries, "Sequential rounds: poolserve / baseline within each round",
               "ratio (poolserve / baseline)", plots, "ratios", made)

    # (b) requests/s and p99 of every peer in the sequential rounds.
    panels = []
    for mode in sorted({r["mode"] for r in res.rows if r["script"] == "http1/run.sh"
                        and r["kind"] == "rps"}, key=lambda m: (m != "keepalive", m)):
        rps, date = latest_all(res, "http1/run.sh", "rps", mode)
        p99, _ = latest_all(res, "http1/run.sh", "p99_us", mode)
        panels += [(f"{mode}: requests/s (run of {date[:10]})", "requests/s", rps),
                   (f"{mode}: p99 latency", "p99 (µs)", p99)]
    bar_plot(plt, ticker, panels,
             "HTTP/1.1 (wrk), sequential rounds: bar = median, dot = one round", plots,
             "http1_peers", made)

    rps, date = latest_all(res, "h2/run.sh", "rps")
    p99, _ = latest_all(res, "h2/run.sh", "p99_us")
    panels = [(f"requests/s (run of {date[:10] if date else '?'})", "requests/s", rps),
              ("p99 latency", "p99 (µs)", p99)]
    bar_plot(plt, ticker, panels,
             "HTTP/2 and gRPC (h2load), sequential rounds: bar = median, dot = one round",
             plots, "h2_peers", made)

    panels = []
    for size in sorted({r["mode"] for r in res.rows if r["script"] == "ws/run.sh"
                        and r["kind"] == "ws_rate"}, key=lambda s: int(s) if s.isdigit() else 0):
        rate, _ = latest_all(res, "ws/run.sh", "ws_rate", size)
        p99, _ = latest_all(res, "ws/run.sh", "ws_p99_us", size)
        shown = label_of("ws/run.sh", size, "", "").split("\n")[0]
        panels += [(f"{shown}: messages/s", "messages/s", rate),
                   (f"{shown}: p99 latency", "p99 (µs)", p99)]
    bar_plot(plt, ticker, panels,
             "WebSocket echo, sequential rounds: bar = median, dot = one round", plots,
             "ws_echo", made)

    panels = []
    for script, shown in (("http1/run.sh", "HTTP/1.1 keep-alive"), ("h2/run.sh", "HTTP/2"),
                          ("ws/run.sh", "WebSocket")):
        per, _ = latest_all(res, script, "idle_bytes_per_conn")
        per = {k: v for k, v in per.items() if not k.endswith("_fast_ping")}
        med = {k: statistics.median(v.values()) for k, v in per.items()}
        pool = [f"{ours} {signed(med[ours] - med[theirs], '+')} B"
                for ours, theirs in IDLE_PAIRS.get(script, []) if ours in med and theirs in med]
        panels.append((shown + (f"\npool overhead: {', '.join(pool)}" if pool else ""),
                       "RSS per idle connection (bytes)", per))
    bar_plot(plt, ticker, panels,
             "Memory per idle connection (RSS growth / connections): bar = median, dot = one round",
             plots, "idle_memory", made)

    # A plot this run has no data for is removed, so RESULTS.md never links an old one.
    for base in PLOT_NAMES:
        if base not in made:
            for ext in (".png", ".svg"):
                path = os.path.join(plots, base + ext)
                if os.path.exists(path):
                    os.remove(path)
    return made


PLOT_TITLES = {
    "duels": "Duels: the per-round ratios of each duel, median and target",
    "ratios": "Targets judged on sequential rounds: per-round ratios",
    "http1_peers": "HTTP/1.1 requests/s and p99 of every peer",
    "h2_peers": "HTTP/2 and gRPC requests/s and p99 of every peer",
    "ws_echo": "WebSocket echo messages/s and p99",
    "idle_memory": "Memory per idle connection",
}


# --- RESULTS.md ----------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", default=os.path.join(BENCH, "out", "results.csv"))
    ap.add_argument("--commands", default=os.path.join(BENCH, "out", "commands.tsv"))
    ap.add_argument("--md", default=os.path.join(BENCH, "RESULTS.md"))
    ap.add_argument("--plots", default=os.path.join(BENCH, "plots"))
    args = ap.parse_args()

    res = Results(args.csv)
    commands = read_commands(args.commands)
    made = make_plots(res, args.plots)

    lines = [
        "# Benchmark results",
        "",
        "Written by `bench/report.py` from the rows `bench/run-all.sh`'s run left in "
        "`bench/out/results.csv`; how each figure is taken: [README.md](README.md). Ratios are "
        "poolserve / baseline. A duel runs both at once on one core, fresh processes every "
        "round, and compares requests per CPU-second within each round; a ratio target is met "
        "when the median and the geometric mean of the per-round ratios both meet it (a duel "
        f"needs {MIN_DUEL_ROUNDS} rounds or more, a target on sequential rounds "
        f"{MIN_SEQ_ROUNDS} paired rounds). Verdicts compare the unrounded figures. A failed "
        "round (no figure) is left out and counted; a row whose phase failed or timed out "
        "reads \"partial\" and is not judged. Issue #16's targets come first, then earlier "
        "issues' (h2 over TLS duel, `Connection: close`, heartbeat CPU), then the HTTP/2 and "
        "gRPC instruction counts.",
        "",
        "| what | figure | baseline | target | date | command |",
        "|---|---|---|---|---|---|",
    ]
    for t in TARGETS:
        fig, baseline, verdict, date, phase = row_for(t, res)
        if fig is None:
            if t.get("optional") and commands.get(t["phase"], ("skipped",))[0] == "skipped":
                continue
            fig = missing_text(t, commands, res)
            if t["op"] is None:
                verdict = "reported"
            else:
                verdict = target_text(t["op"], t["target"], unit_of(t))
            date, cmd = "—", command_for(t["phase"], None, commands)
        else:
            verdict = partial_verdict(t, phase, commands) or verdict
            cmd = command_for(phase, t["script"], commands)
            date = date[:10]
        lines.append("| " + " | ".join(md_cell(c) for c in
                                        (t["what"], fig, baseline, verdict, date, cmd)) + " |")
    if made:
        md_dir = os.path.dirname(os.path.abspath(args.md))
        lines += ["", "## Plots", ""]
        for base in PLOT_NAMES:
            if base in made:
                png, svg = (os.path.relpath(p, md_dir) for p in made[base])
                lines.append(f"- [{PLOT_TITLES[base]}]({png}) ([SVG]({svg}))")
        lines.append("")
        for base in PLOT_NAMES:
            if base in made:
                png = os.path.relpath(made[base][0], md_dir)
                lines += [f"![{PLOT_TITLES[base]}]({png})", ""]
    with open(args.md, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {args.md} and {len(made)} plots in {args.plots}", file=sys.stderr)


if __name__ == "__main__":
    main()
