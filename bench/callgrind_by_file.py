#!/usr/bin/env python3
"""Instructions per request by source file, from two callgrind dumps, largest differences first.

Inlined code is counted in the file it was written in (callgrind's `fi=`/`fe=` records), so the
pool's own code shows as crates/pool and crates/server even where LLVM inlined it into hyper's
functions. The cost a call's line records for its callee is left out (it is the callee's own).

    bench/callgrind_by_file.py DUMP_A DUMP_B REQUESTS [ROWS]
"""

import collections
import re
import sys

NAME = re.compile(r"\((\d+)\)(?: (.*))?")


def by_file(path):
    names = {}
    totals = collections.Counter()
    file = inlined = None
    callee_cost_next = False

    def name_of(rest):
        m = NAME.match(rest)
        if not m:
            return rest
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "?")

    with open(path, errors="replace") as dump:
        for line in dump:
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith(("fl=", "fi=", "fe=")):
                name = name_of(line[3:])
                if line.startswith("fl="):
                    file, inlined = name, None
                else:
                    inlined = None if name == file else name
            elif line.startswith(("cfl=", "cfi=")):
                name_of(line[4:])
            elif line.startswith("fn="):
                inlined = None
            elif line.startswith("calls="):
                callee_cost_next = True
            elif line[0].isdigit() or line[0] in "+-*":
                if callee_cost_next:
                    callee_cost_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    totals[short(inlined or file or "?")] += int(parts[1])
    return totals


def short(path):
    path = re.sub(r"^.*/registry/src/[^/]+/", "", path)
    path = re.sub(r"^/rustc/[0-9a-f]+/library/", "std:", path)
    return re.sub(r"^.*/(crates/)", r"\1", path)


def main():
    a, b, requests = by_file(sys.argv[1]), by_file(sys.argv[2]), int(sys.argv[3])
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    files = sorted(set(a) | set(b), key=lambda f: -abs(a[f] - b[f]))
    print(f"{'A':>7} {'B':>7} {'A - B':>7}  source file (instructions per request)")
    for f in files[:rows]:
        print(f"{a[f] / requests:7.0f} {b[f] / requests:7.0f} {(a[f] - b[f]) / requests:7.0f}  {f}")
    ta, tb = sum(a.values()) / requests, sum(b.values()) / requests
    print(f"{ta:7.0f} {tb:7.0f} {ta - tb:7.0f}  all")


if __name__ == "__main__":
    main()
