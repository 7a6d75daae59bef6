"""`kernelgpt explain`: the explainer's concepts computed by the package (kernelgpt.lessons)."""
from __future__ import annotations

from typing import List

from ..lessons import LESSONS, run_lesson


def add_arguments(p) -> None:
    p.add_argument("lesson", nargs="?", default=None,
                   help="one of: " + ", ".join(LESSONS) + ", or 'all'")
    p.add_argument("--plot", metavar="DIR", default=None, help="also write DIR/<lesson>.png")


def main(args) -> int:
    if args.lesson is None:
        for name, fn in LESSONS.items():
            print(f"{name:>17}  {fn.__doc__.splitlines()[0]}")
        print("\nkernelgpt explain <lesson> [--plot DIR]")
        return 0
    names: List[str] = list(LESSONS) if args.lesson == "all" else [args.lesson]
    for name in names:
        if len(names) > 1:
            print(f"\n=== {name} ===")
        print(run_lesson(name, args.plot))
    return 0
