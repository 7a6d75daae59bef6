"""Coverage-guided fuzzing of the parsers of untrusted files, with atheris (pip install atheris).

    python fuzz/run.py all --seconds 20            # every target for 20 s (the CI step)
    python fuzz/run.py gguf --runs 200000          # one target, longer (by hand)
    python fuzz/run.py list

Each target (fuzz/targets.py) runs in its own process: kernelgpt's Python modules are
instrumented for coverage, the seeds come from tests/data/fuzz/<target>/ (real files), the
growing corpus lives in fuzz/corpus/<target>/ (git-ignored). A crash (an exception other than
the documented ValueError / TypeError, a timeout, or a native crash) is copied into
tests/data/fuzz/<target>/ as a regression input, which tests/test_fuzz_regressions.py then
replays on every test run, and this script exits 1. The summary line of each target gives
its executions and the coverage libFuzzer reached (cov: edges, ft: features).

To fuzz the native parsers under AddressSanitizer + UBSan, guided by their coverage too, run
it through the clang build of tools/sanitize.sh (.ci/run does, for a short time):
    tools/sanitize.sh build && tools/sanitize.sh python fuzz/run.py all --seconds 60
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = HERE.parent / "tests" / "data" / "fuzz"
CORPUS = HERE / "corpus"
INSTRUMENTED = ["kernelgpt.io.gguf", "kernelgpt.io.safetensors", "kernelgpt.checkpoint",
                "kernelgpt.config", "kernelgpt.tokenizer", "kernelgpt.tokenizer.encoding",
                "kernelgpt.tokenizer.vocab_import", "kernelgpt.chat"]


def child(name: str, libfuzzer_args) -> None:
    import atheris
    with atheris.instrument_imports(include=["kernelgpt"]):
        import importlib
        for module in INSTRUMENTED:
            importlib.import_module(module)
    sys.path.insert(0, str(HERE))
    import targets
    sys.setrecursionlimit(3000)
    atheris.Setup([sys.argv[0]] + list(libfuzzer_args), targets.TARGETS[name])
    atheris.Fuzz()


def run_target(name: str, runs: int, seconds: int, timeout: int) -> bool:
    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS / name
    crashes = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    args = [str(corpus)] + ([str(seeds)] if seeds.is_dir() else []) + [
        f"-runs={runs}" if runs else "-runs=-1", f"-max_total_time={seconds}" if seconds else "",
        f"-timeout={timeout}", "-rss_limit_mb=4096", "-max_len=65536",
        f"-artifact_prefix={crashes}/", "-print_final_stats=1"]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--"] + [a for a in args if a]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    log = proc.stdout + proc.stderr
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    covs = re.findall(r"cov: (\d+) ft: (\d+)", log)
    secs = re.findall(r"Done (\d+) runs in (\d+) second", log)
    cov = f"cov {covs[-1][0]}, ft {covs[-1][1]}" if covs else "cov ?"
    summary = (f"{name}: {int(execs[-1]) if execs else '?':,} executions" if execs else f"{name}: ? executions")
    summary += f" in {secs[-1][1]} s, {cov}" if secs else f", {cov}"
    found = sorted(p for p in crashes.iterdir() if p.is_file())
    if proc.returncode != 0 or found:
        print(summary + f": FAILED (exit {proc.returncode})")
        print("\n".join(log.splitlines()[-40:]))
        if found:
            seeds.mkdir(parents=True, exist_ok=True)
            for p in found:
                dst = seeds / p.name
                shutil.copyfile(p, dst)
                print(f"  regression input saved: {dst.relative_to(HERE.parent)}")
        return False
    print(summary, flush=True)
    shutil.rmtree(crashes, ignore_errors=True)
    return True


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        child(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    sys.path.insert(0, str(HERE))
    import targets
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target", help="a target name, 'all' or 'list'")
    ap.add_argument("--runs", type=int, default=0, help="executions per target (0: no limit)")
    ap.add_argument("--seconds", type=int, default=0, help="time per target (0: no limit)")
    ap.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    args = ap.parse_args(argv)
    if args.target == "list":
        print("\n".join(targets.TARGETS))
        return 0
    names = list(targets.TARGETS) if args.target == "all" else args.target.split(",")
    unknown = [n for n in names if n not in targets.TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; known: {', '.join(targets.TARGETS)}")
    if not args.runs and not args.seconds:
        ap.error("give --runs or --seconds")
    ok = [run_target(n, args.runs, args.seconds, args.timeout) for n in names]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
