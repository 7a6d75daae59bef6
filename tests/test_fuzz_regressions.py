"""Every input in tests/data/fuzz/<target>/ (the fuzz seeds and each crash fuzz/run.py ever
found) replayed through its fuzz target (fuzz/targets.py): each must be accepted or refused
with a documented error, never crash."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "fuzz"


def _targets():
    spec = importlib.util.spec_from_file_location("kernelgpt_fuzz_targets", ROOT / "fuzz" / "targets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TARGETS


TARGETS = _targets()
CASES = [(t, p) for t in TARGETS for p in sorted((DATA / t).glob("*")) if p.is_file()]


def test_every_target_has_seeds():
    assert {t for t, _ in CASES} == set(TARGETS)


@pytest.mark.parametrize("target, path", CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_fuzz_input(target, path):
    TARGETS[target](path.read_bytes())
