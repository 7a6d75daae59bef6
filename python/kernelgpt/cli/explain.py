"""`kernelgpt explain`: the explainer's concepts computed by the package (kernelgpt.lessons)."""
from __future__ import annotations

from typing import List

from ..lessons import LESSONS, describe, require_matplotlib, run_lesson
from ._common import add_threads_argument


def _lesson_list() -> str:
    return "\n".join(f"{name:>17}  {describe(name)}" for name in LESSONS)


def add_arguments(p) -> None:
    p.epilog = ("lessons:\n" + _lesson_list()
                + "\n\n--plot needs matplotlib: pip install 'kernelgpt[plot]'")
    p.add_argument("lesson", nargs="?", default=None,
                   help="one of: " + ", ".join(LESSONS) + ", or 'all'")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="also draw the lesson into DIR/<lesson>.png (needs matplotlib)")
    add_threads_argument(p)   # checked >= 1 and applied (kernelgpt.set_num_threads) by cli.main


def main(args) -> int:
    if args.lesson is None:
        print(_lesson_list())
        print("\nkernelgpt explain <lesson> [--plot DIR] [--threads N]")
        return 0
    names: List[str] = list(LESSONS) if args.lesson == "all" else [args.lesson]
    if args.lesson != "all" and args.lesson not in LESSONS:
        raise ValueError(f"unknown lesson {args.lesson!r}; choose from {', '.join(LESSONS)}, all")
    if args.plot is not None:
        require_matplotlib()   # say so before any lesson runs
    for name in names:
        if len(names) > 1:
            print(f"\n=== {name} ===")
        print(run_lesson(name, args.plot))
    return 0
