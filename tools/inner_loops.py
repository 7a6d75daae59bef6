"""The innermost loops of compiled kernels, counted from the compiler's output: for each function
of an object file, its innermost loops (a backward branch with no other loop inside) with the
vector instructions of one iteration. What docs/arm64.md's "on paper" table is built from.

    python tools/inner_loops.py OBJECT.o [--objdump aarch64-linux-gnu-objdump] [--top 3]
        [--function SUBSTRING]

Counted per iteration: multiply-adds (fmla / fmls, sdot / udot, smmla, bfdot / bfmmla; x86:
vfmadd*, vpdpbusd, vdpbf16ps), other vector arithmetic, vector loads and stores.
"""
from __future__ import annotations

import argparse
import re
import subprocess
from collections import Counter

FUNC = re.compile(r"^([0-9a-f]+) <(.+)>:$")
INSN = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
BRANCH = re.compile(r"^(b\.\w+|b|cbn?z|tbn?z|j\w+)$")
TARGET = re.compile(r"\b([0-9a-f]+) <")

MULADD = re.compile(r"^(fmla|fmls|sdot|udot|usdot|smmla|ummla|usmmla|bfdot|bfmmla|bfmlal[bt]?|"
                    r"vfn?madd\w*|vfn?msub\w*|vpdpbusds?|vpdpwssds?|vdpbf16ps)$")


def functions(obj: str, objdump: str):
    """{name: [(address, mnemonic, operands)]} from objdump -d."""
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", obj], capture_output=True,
                         text=True, check=True).stdout
    funcs, cur = {}, None
    for line in out.splitlines():
        m = FUNC.match(line)
        if m:
            cur = funcs.setdefault(m.group(2), [])
            continue
        m = INSN.match(line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return funcs


def vector(mnemonic: str, operands: str) -> bool:
    return (re.search(r"\bv\d+\.\d*[bhsd]\b|\bq\d+\b|\bz\d+\.", operands) is not None or
            re.search(r"%[xyz]mm|[xyz]mm\d", operands) is not None)


def innermost_loops(insns):
    """[(start, end)] address ranges of loops with no loop inside."""
    loops = []
    for addr, mn, ops in insns:
        if BRANCH.match(mn):
            t = TARGET.search(ops)
            if t and int(t.group(1), 16) <= addr:
                loops.append((int(t.group(1), 16), addr))
    return [(a, b) for a, b in loops
            if not any((a <= c and d <= b) and (c, d) != (a, b) for c, d in loops)]


def count(insns, start, end):
    c = Counter()
    for addr, mn, ops in insns:
        if start <= addr <= end:
            c["instructions"] += 1
            if MULADD.match(mn):
                c["multiply-add"] += 1
                c[mn] += 1
            elif vector(mn, ops):
                if mn.startswith(("ld", "vmov", "vbroadcast")) and ("[" in ops or "(" in ops):
                    c["vector load"] += 1
                elif mn.startswith("st") and "[" in ops:
                    c["vector store"] += 1
                else:
                    c["other vector"] += 1
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("object")
    ap.add_argument("--objdump", default="objdump")
    ap.add_argument("--top", type=int, default=3, help="loops to show per function")
    ap.add_argument("--function", default="", help="only functions whose name contains this")
    args = ap.parse_args()
    for name, insns in functions(args.object, args.objdump).items():
        if args.function not in name:
            continue
        loops = [(count(insns, a, b), a, b) for a, b in innermost_loops(insns)]
        loops = sorted([x for x in loops if x[0]["multiply-add"]], key=lambda x: -x[0]["multiply-add"])
        for c, a, b in loops[:args.top]:
            extra = ", ".join(f"{k} {v}" for k, v in sorted(c.items())
                              if k not in ("instructions", "multiply-add", "vector load",
                                           "vector store", "other vector"))
            print(f"{name[:70]:70s} [{a:x}, {b:x}]: {c['instructions']} instructions, "
                  f"{c['multiply-add']} multiply-adds ({extra}), {c['vector load']} vector loads, "
                  f"{c['vector store']} stores, {c['other vector']} other vector")


if __name__ == "__main__":
    main()
