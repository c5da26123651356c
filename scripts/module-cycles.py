#!/usr/bin/env python3
"""Cycles between the top-level modules of gateway/src, read from their `crate::MODULE` uses
(tests and comments left out). Prints each module's dependencies and every cycle; exits 1 when
there is one. The design wants dependencies to run one way (config -> compile -> runtime <-
proxy, leaves importing nothing of the gateway).

    python3 scripts/module-cycles.py          (or: make cycles)
"""

import glob
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "gateway", "src")


def module_deps():
    deps = {}
    for path in glob.glob(os.path.join(ROOT, "**", "*.rs"), recursive=True):
        rel = os.path.relpath(path, ROOT)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("main", "lib"):
            continue
        text = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
        code = "\n".join(l for l in text.splitlines() if not l.strip().startswith("//"))
        used = set(re.findall(r"crate::(\w+)", code))
        deps.setdefault(top, set()).update(u for u in used if u != top)
    return deps


def cycles(deps):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in deps.get(v, ()):
            if w not in deps:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(deps):
        if v not in index:
            visit(v)
    return out


def main():
    deps = module_deps()
    for m in sorted(deps):
        print(f"{m:<12} -> {', '.join(sorted(d for d in deps[m] if d in deps)) or '(leaf)'}")
    found = cycles(deps)
    for c in found:
        print("cycle: " + ", ".join(c))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
