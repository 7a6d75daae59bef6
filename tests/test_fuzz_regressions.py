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
    return module


MODULE = _targets()
TARGETS = MODULE.TARGETS
CASES = [(t, p) for t in TARGETS for p in sorted((DATA / t).glob("*")) if p.is_file()]


def test_every_target_has_seeds():
    assert {t for t, _ in CASES} == set(TARGETS)


@pytest.mark.parametrize("target, path", CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_fuzz_input(target, path):
    TARGETS[target](path.read_bytes())


def test_real_seeds_get_past_the_first_parser():
    """A seed the target's first loader refuses would leave the fuzzer exploring nothing but
    that refusal (as a pattern string the tokenizer has no scanner for once did)."""
    from kernelgpt.chat import ChatTemplate
    from kernelgpt.io import safetensors as st
    from kernelgpt.io.gguf import GGUFFile
    from kernelgpt.tokenizer import Encoding
    for path in (DATA / "gguf").glob("*.gguf"):
        with GGUFFile(path) as f:
            assert f.tensors
    for path in (DATA / "safetensors").glob("*.safetensors"):
        assert st.load(path)
    for path in (DATA / "tiktoken").glob("*.tiktoken"):
        assert Encoding.from_tiktoken_file(path, MODULE._PATTERN).n_vocab > 0
    left, _, right = (DATA / "merges" / "gpt2-tiny").read_bytes().partition(b"\0")
    Encoding.from_gpt2_files(MODULE._scratch("encoder.json", left), MODULE._scratch("vocab.bpe", right))
    for path in (DATA / "chat_template").glob("*.jinja"):
        assert "2+2?" in ChatTemplate(path.read_text(), "<s>", "</s>", name=path.stem).render(MODULE.MESSAGES[1:])
