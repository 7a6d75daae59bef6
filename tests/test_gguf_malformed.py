"""Malformed GGUF files: each must raise GGUFError (a ValueError) with a message naming the
problem, within 1 s, without allocating more than 64 MiB, and never crash. The files are
built by tests/gguf_writer.py from a valid 2-layer Llama and then broken one field at a time.
`*_model` cases are valid GGUF files that validate_llama must reject.

Run them under AddressSanitizer + UBSan too: tools/sanitize.sh tests/test_gguf_malformed.py
"""
import json
import os
import struct
import subprocess
import sys
import time

import pytest

import gguf_writer as w
from kernelgpt import _C
from kernelgpt.io.gguf import GGUFError, GGUFFile, validate_llama

HEADER = 24  # magic, version, tensor count, metadata count


def parts():
    return w.llama_parts()


def file_with(kvs=None, tensors=None, **kw):
    """The valid file with some metadata values or tensors replaced."""
    base_kvs, base_tensors = parts()
    if kvs:
        for key, v in kvs.items():
            if v is None:
                base_kvs.pop(key)
            else:
                base_kvs[key] = v
    return w.build(w.encode(base_kvs), base_tensors if tensors is None else tensors(base_tensors),
                   **kw)


def raw_entry(entry: bytes, at=0, **kw):
    """The valid file with one hand-made metadata entry inserted at position `at`."""
    kvs, tensors = parts()
    entries = w.encode(kvs)
    entries.insert(at, entry)
    return w.build(entries, tensors, **kw)


def key_then(vtype, payload: bytes, key="test.broken"):
    return w.string(key) + struct.pack("<I", vtype & 0xFFFFFFFF) + payload


def with_tensor(index=0, **changes):
    def edit(tensors):
        for k, v in changes.items():
            setattr(tensors[index], k, v)
        return tensors
    return file_with(tensors=edit)


def header_only(version=3, n_tensors=0, n_kv=0, magic=b"GGUF"):
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def valid_file():
    kvs, tensors = parts()
    return w.build(w.encode(kvs), tensors)


def truncated_at(fraction):
    blob = valid_file()
    return blob[:int(len(blob) * fraction)]


def end_of_infos():
    """Offset where the tensor infos end in the valid file (where the padding starts)."""
    kvs, tensors = parts()
    blob = w.build(w.encode(kvs), tensors)
    meta = HEADER + sum(len(e) for e in w.encode(kvs))
    infos = sum(8 + len(t.name) + 4 + 8 * len(t.ne) + 12 for t in tensors)
    return blob, meta + infos


def one_tensor(ne, type_name="F32", n_dims=None, data=b"\0" * 32):
    return w.build([], [w.Tensor("t", ne, w.GGML[type_name][0], data, n_dims=n_dims)])


def overlapping(tensors):
    tensors[1].offset = 0  # output_norm.weight on top of token_embd.weight
    return tensors


def shifted_offset(delta, absolute=False):
    def edit(tensors):
        # place every tensor explicitly; move the last one
        offset = 0
        for t in tensors:
            t.offset = offset
            offset = w.align(offset + len(t.data), 32)
        tensors[-1].offset = delta if absolute else tensors[-1].offset + delta
        return tensors
    return edit


def last_offset(offset):
    return shifted_offset(offset, absolute=True)


def raw_tensor_name(name: bytes):
    """The valid file with tensor 2's name replaced by raw (possibly invalid UTF-8) bytes."""
    kvs, tensors = parts()
    blob = w.build(w.encode(kvs), tensors)
    old = w.string(tensors[2].name)
    return blob.replace(old, w.string(name), 1)


def nested(depth):
    v = (w.UINT8, [1])
    for _ in range(depth):
        v = (w.ARRAY, [v])
    return v


CASES = {
    # header
    "empty_file": (lambda: b"", "only 0 bytes"),
    "three_bytes": (lambda: b"GGU", "only 3 bytes"),
    "bad_magic": (lambda: b"GGML" + valid_file()[4:], "magic"),
    "version_1": (lambda: header_only(version=1), "version 1 is not supported"),
    "version_0": (lambda: header_only(version=0), "unsupported GGUF version 0"),
    "version_4": (lambda: header_only(version=4), "unsupported GGUF version 4"),
    "big_endian": (lambda: header_only(version=3 << 24), "big-endian"),
    "truncated_in_header": (lambda: header_only()[:13], "truncated: the tensor count"),
    "tensor_count_huge": (lambda: header_only(n_tensors=1 << 62), "tensor count .* exceeds"),
    "tensor_count_negative": (lambda: header_only(n_tensors=w.U64), "tensor count .* exceeds"),
    "kv_count_huge": (lambda: header_only(n_kv=1 << 40), "metadata count .* exceeds"),
    "kv_count_negative": (lambda: header_only(n_kv=w.U64), "metadata count .* exceeds"),
    "kv_count_too_large_for_file": (lambda: header_only(n_kv=1000) + b"\0" * 100,
                                    "cannot fit in the 100 bytes"),
    "kv_count_one_too_many": (lambda: file_with(n_kv=len(parts()[0]) + 1),
                              "metadata entry 35|tensor 0"),
    "tensor_count_one_too_many": (lambda: file_with(n_tensors=len(parts()[1]) + 1),
                                  "tensor 20|tensor infos"),
    "truncated_at_5_percent": (lambda: truncated_at(0.05), "truncated"),
    "truncated_at_40_percent": (lambda: truncated_at(0.40), "truncated|outside the file"),
    "truncated_at_90_percent": (lambda: truncated_at(0.90), "outside the file"),
    "truncated_before_data": (lambda: end_of_infos()[0][:end_of_infos()[1]],
                              "tensor data would start at"),
    # metadata keys and values
    "key_length_huge": (lambda: raw_entry(struct.pack("<Q", 1 << 62) + b"abc"),
                        "key length .* exceeds"),
    "key_length_past_end": (lambda: raw_entry(struct.pack("<Q", 60000) + b"abc", at=35),
                            "truncated: the key needs 60000 bytes"),
    "key_too_long": (lambda: raw_entry(w.string("k" * 70000) + struct.pack("<IB", w.UINT8, 1)),
                     "key length 70000 exceeds the limit of 65536"),
    "string_array_count_huge": (lambda: raw_entry(key_then(w.ARRAY, struct.pack("<IQ", w.STRING,
                                                                                1 << 27))),
                                "array of 134217728 string values needs at least 8 bytes each"),
    "key_empty": (lambda: raw_entry(w.string("") + struct.pack("<IB", w.UINT8, 1)), "empty key"),
    "key_not_utf8": (lambda: raw_entry(w.string(b"bad\xff") + struct.pack("<IB", w.UINT8, 1)),
                     "key .* not valid UTF-8"),
    "key_duplicate": (lambda: raw_entry(w.kv("llama.block_count", w.UINT32, 2), at=5),
                      "'llama.block_count'.*duplicate key"),
    "value_type_unknown": (lambda: raw_entry(key_then(13, b"\0" * 8)), "unknown value type 13"),
    "value_type_negative": (lambda: raw_entry(key_then(-1, b"\0" * 8)),
                            "unknown value type 4294967295"),
    "bool_not_0_or_1": (lambda: raw_entry(key_then(w.BOOL, b"\x02")), "bool value 2"),
    "scalar_truncated": (lambda: header_only(n_kv=1) + key_then(w.UINT64, b"\1\2\3"),
                         "truncated: the uint64 needs 8 bytes"),
    "string_length_huge": (lambda: raw_entry(key_then(w.STRING, struct.pack("<Q", 1 << 63))),
                           "string value length .* exceeds"),
    "string_length_past_end": (lambda: raw_entry(key_then(w.STRING, struct.pack("<Q", 1 << 20)
                                                          + b"x")), "truncated: the string value"),
    "string_not_utf8": (lambda: raw_entry(key_then(w.STRING, w.string(b"ok\xed\xa0\x80"))),
                        "string value .* not valid UTF-8"),
    "string_overlong_utf8": (lambda: raw_entry(key_then(w.STRING, w.string(b"\xc0\xaf"))),
                             "not valid UTF-8"),
    "array_element_type_unknown": (lambda: raw_entry(key_then(w.ARRAY, struct.pack("<IQ", 99, 1)
                                                              + b"\0" * 8)),
                                   "unknown array element type 99"),
    "array_length_huge": (lambda: raw_entry(key_then(w.ARRAY, struct.pack("<IQ", w.UINT8, 1 << 62))),
                          "array length .* exceeds"),
    "array_length_past_end": (lambda: raw_entry(key_then(w.ARRAY, struct.pack("<IQ", w.INT32,
                                                                              1 << 27))),
                              "array of 134217728 int32 values"),
    "array_string_past_end": (lambda: raw_entry(key_then(w.ARRAY, struct.pack("<IQ", w.STRING, 2)
                                                         + w.string("ok")
                                                         + struct.pack("<Q", 1 << 20))),
                              r"element \[1\]: truncated: the string value"),
    "array_string_not_utf8": (lambda: raw_entry(key_then(w.ARRAY, w.value(w.ARRAY, (w.STRING, [
        "a", "b", b"\xe2\x82"])))), r"element \[2\]: string value .* not valid UTF-8"),
    "array_bool_not_0_or_1": (lambda: raw_entry(key_then(w.ARRAY, w.value(w.ARRAY, (w.UINT8, [
        1, 0, 7])).replace(struct.pack("<I", w.UINT8), struct.pack("<I", w.BOOL), 1))),
                              r"element \[2\]: bool value 7"),
    "arrays_nested_too_deep": (lambda: raw_entry(key_then(w.ARRAY, w.value(w.ARRAY, nested(5)))),
                               "nested more than 4 deep"),
    "nested_array_truncated": (lambda: raw_entry(key_then(w.ARRAY, struct.pack("<IQ", w.ARRAY, 3)
                                                          + struct.pack("<IQ", w.UINT16, 1 << 30))),
                               r"element \[0\]: (truncated|array length)"),
    # alignment
    "alignment_zero": (lambda: file_with({"general.alignment": (w.UINT32, 0)}),
                       "general.alignment 0 is not a power of two"),
    "alignment_not_power_of_two": (lambda: file_with({"general.alignment": (w.UINT32, 48)}),
                                   "general.alignment 48 is not a power of two"),
    "alignment_huge": (lambda: file_with({"general.alignment": (w.UINT32, 1 << 31)}),
                       "not a power of two up to"),
    "alignment_mismatch": (lambda: file_with({"general.alignment": (w.UINT32, 64)}),
                           "not a multiple of the alignment 64|outside the file"),
    "alignment_wrong_type": (lambda: file_with({"general.alignment": (w.UINT64, 32)}),
                             "general.alignment must be a uint32, not uint64"),
    # tensor infos
    "tensor_name_empty": (lambda: with_tensor(3, name=""), "tensor 3: empty tensor name"),
    "tensor_name_too_long": (lambda: with_tensor(3, name="x" * 65),
                             "tensor name length 65 exceeds the limit of 64"),
    "tensor_name_not_utf8": (lambda: raw_tensor_name(b"blk\xff"), "tensor name .* not valid UTF-8"),
    "tensor_name_duplicate": (lambda: with_tensor(4, name="blk.0.attn_norm.weight"),
                              "'blk.0.attn_norm.weight'.*duplicate tensor name"),
    "n_dims_zero": (lambda: with_tensor(1, n_dims=0, ne=()), "n_dims 0 is not between 1 and 4"),
    "n_dims_five": (lambda: one_tensor((1, 1, 1, 1, 8), n_dims=5), "n_dims 5 is not between"),
    "n_dims_huge": (lambda: one_tensor((8,), n_dims=0xFFFFFFFF), "n_dims 4294967295"),
    "n_dims_larger_than_written": (lambda: with_tensor(1, n_dims=3), "tensor 1.*"),
    "dimension_zero": (lambda: one_tensor((8, 0)), "dimension 1 is 0"),
    "dimension_negative": (lambda: one_tensor((8, -1)), "dimension 1 is 18446744073709551615"),
    "dimensions_overflow": (lambda: one_tensor((1 << 32, 1 << 31, 2)), "multiply to more than"),
    "nbytes_overflow": (lambda: one_tensor((1 << 62, 1), "F32"), "data size overflows|outside"),
    "ggml_type_unknown": (lambda: with_tensor(1, type=99), "unknown or removed ggml type 99"),
    "ggml_type_removed": (lambda: with_tensor(1, type=4), "unknown or removed ggml type 4"),
    "ggml_type_negative": (lambda: with_tensor(1, type=-1), "ggml type 4294967295"),
    "block_size_mismatch": (lambda: one_tensor((33, 2), "Q4_1", data=b"\0" * 64),
                            "dimension 0 \\(33\\) is not a multiple of Q4_1's block size 32"),
    "data_offset_past_end": (lambda: file_with(tensors=last_offset(1 << 40)), "outside the file"),
    "data_offset_wraps": (lambda: file_with(tensors=last_offset(w.U64 + 1 - 4096)),
                          "outside the file"),
    "data_misaligned": (lambda: file_with(tensors=shifted_offset(4)),
                        "data offset .* is not a multiple of the alignment 32"),
    "data_overlap": (lambda: file_with(tensors=overlapping),
                     "tensors '(token_embd|output_norm).weight' and '(token_embd|output_norm).weight' overlap"),
    "data_too_big_for_file": (lambda: one_tensor((4096, 4096), "F32"), "outside the file"),
}


def model(**kvs):
    return lambda: file_with(kvs)


def model_tensors(edit):
    return lambda: file_with(tensors=edit)


def drop_tensor(name):
    return lambda ts: [t for t in ts if t.name != name]


def reshape_tensor(name, shape, type_name="F32"):
    def edit(ts):
        return [w.tensor(name, shape, type_name) if t.name == name else t for t in ts]
    return edit


def add_tensor(name, shape, type_name="F32"):
    return lambda ts: ts + [w.tensor(name, shape, type_name)]


TOKENS = ("tokenizer.ggml.tokens", w.ARRAY)

# valid GGUF, invalid model
MODEL_CASES = {
    "architecture_missing_model": (model(**{"general.architecture": None}),
                                   "missing required metadata 'general.architecture'"),
    "architecture_other_model": (model(**{"general.architecture": (w.STRING, "gpt2")}),
                                 "general.architecture is 'gpt2'"),
    "block_count_missing_model": (model(**{"llama.block_count": None}),
                                  "missing required metadata 'llama.block_count'"),
    "embedding_length_string_model": (model(**{"llama.embedding_length": (w.STRING, "32")}),
                                      "'llama.embedding_length' must be an integer"),
    "context_length_zero_model": (model(**{"llama.context_length": (w.UINT32, 0)}),
                                  "'llama.context_length' = 0 is outside"),
    "head_count_not_dividing_model": (model(**{"llama.attention.head_count": (w.UINT32, 5)}),
                                      "not a multiple of llama.attention.head_count 5"),
    "kv_heads_not_dividing_model": (model(**{"llama.attention.head_count_kv": (w.UINT32, 3)}),
                                    "not a multiple of llama.attention.head_count_kv 3"),
    "rope_freq_base_missing_model": (model(**{"llama.rope.freq_base": None}),
                                     "missing required metadata 'llama.rope.freq_base'"),
    "rms_eps_negative_model": (model(**{"llama.attention.layer_norm_rms_epsilon": (w.FLOAT32, -1.0)}),
                               "must be a finite positive number"),
    "tokenizer_model_spm_model": (model(**{"tokenizer.ggml.model": (w.STRING, "llama")}),
                                  "only 'gpt2'"),
    "tokens_missing_model": (model(**{"tokenizer.ggml.tokens": None}),
                             "missing required metadata 'tokenizer.ggml.tokens'"),
    "tokens_not_strings_model": (model(**{"tokenizer.ggml.tokens": (w.ARRAY, (w.INT32, [1] * 12))}),
                                 "must be an array of strings"),
    "tokens_duplicate_model": (model(**{"tokenizer.ggml.tokens": (w.ARRAY, (w.STRING, w.TOKENS[:-1] + ["a"]))}),
                               "has 'a' twice"),
    "vocab_size_mismatch_model": (model(**{"llama.vocab_size": (w.UINT32, 13)}),
                                  "llama.vocab_size 13 != 12 tokens"),
    "token_type_length_model": (model(**{"tokenizer.ggml.token_type": (w.ARRAY, (w.INT32, [1] * 11))}),
                                "token_type has 11 entries for 12 tokens"),
    "token_type_value_model": (model(**{"tokenizer.ggml.token_type": (w.ARRAY, (w.INT32, [1] * 11 + [9]))}),
                               r"token_type\[11\] = 9"),
    "merge_unknown_token_model": (model(**{"tokenizer.ggml.merges": (w.ARRAY, (w.STRING, ["a b", "b c"]))}),
                                  "'bc' is not in the vocabulary"),
    "merge_without_space_model": (model(**{"tokenizer.ggml.merges": (w.ARRAY, (w.STRING, ["ab"]))}),
                                  "not two tokens joined by one space"),
    "merges_missing_model": (model(**{"tokenizer.ggml.merges": None}),
                             "missing required metadata 'tokenizer.ggml.merges'"),
    "bos_out_of_range_model": (model(**{"tokenizer.ggml.bos_token_id": (w.UINT32, 12)}),
                               "'tokenizer.ggml.bos_token_id' = 12 is outside"),
    "tensor_missing_model": (model_tensors(drop_tensor("blk.1.ffn_up.weight")),
                             "missing tensor 'blk.1.ffn_up.weight'"),
    "tensor_shape_model": (model_tensors(reshape_tensor("blk.0.attn_k.weight", (8, 32))),
                           r"'blk.0.attn_k.weight' has shape \(8, 32\), expected \(16, 32\)"),
    "embedding_shape_model": (model_tensors(reshape_tensor("token_embd.weight", (13, 32))),
                              r"'token_embd.weight' has shape \(13, 32\)"),
    "extra_layer_model": (model_tensors(add_tensor("blk.2.attn_norm.weight", (32,))),
                          "does not belong to any of the 2 layers"),
    "norm_quantized_model": (model_tensors(reshape_tensor("output_norm.weight", (32,), "Q8_0")),
                             "norm weights must be F32, F16 or BF16"),
}
ALL = {**CASES, **MODEL_CASES}


def open_and_check(path, model_case):
    with GGUFFile(path) as f:
        if model_case:
            validate_llama(f.metadata, f.tensors)


def test_the_base_file_is_valid(tmp_path):
    path = tmp_path / "valid.gguf"
    path.write_bytes(valid_file())
    open_and_check(path, True)


def test_enough_cases():
    assert len(CASES) >= 40 and len(ALL) >= 60


@pytest.mark.parametrize("name", list(ALL))
def test_malformed(tmp_path, name):
    make, match = ALL[name]
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(make())
    start = time.perf_counter()
    with pytest.raises(GGUFError, match=match) as err:
        open_and_check(path, name.endswith("_model"))
    assert time.perf_counter() - start < 1.0
    assert isinstance(err.value, ValueError)
    if not name.endswith("_model"):  # validate_llama does not know the file
        assert str(path) in str(err.value)


def test_every_truncation_fails(tmp_path):
    """Cut the valid file at every byte up to the end of the last tensor's data: each prefix
    is rejected, none crashes. (The parser directly, on memory: the same code GGUFFile runs
    on the mapped file, without writing thousands of files.)"""
    blob = valid_file()
    with GGUFFile_from(blob, tmp_path) as f:
        last_end = max(t.offset + t.nbytes for t in f.tensors.values())
    view = memoryview(blob)
    for n in range(last_end):
        with pytest.raises(_C.GGUFFormatError):
            _C.gguf_parse(view[:n])
    _C.gguf_parse(view[:last_end])  # the padding after the last tensor is optional
    path = tmp_path / "cut.gguf"
    for n in (0, 1, 4, 23, 24, 100, last_end - 1):  # and a few through GGUFFile
        path.write_bytes(blob[:n])
        with pytest.raises(GGUFError):
            GGUFFile(path)


def GGUFFile_from(blob, tmp_path):
    path = tmp_path / "whole.gguf"
    path.write_bytes(blob)
    return GGUFFile(path)


def test_random_byte_corruption_never_crashes(tmp_path):
    """Flip random bytes in the header: the result is either valid or a GGUFError."""
    import numpy as np
    rng = np.random.default_rng(0)
    blob = valid_file()
    _, header_end = end_of_infos()
    path = tmp_path / "fuzz.gguf"
    for _ in range(300):
        data = bytearray(blob)
        for i in rng.integers(0, header_end, rng.integers(1, 4)):
            data[i] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            f = GGUFFile(path)
        except GGUFError:
            continue
        with f:  # a valid file: every value and tensor must be readable
            for key in f.metadata:
                f.metadata[key]
            for name in f.tensors:
                f.tensor(name)


CHILD = r"""
import json, resource, sys, time
from kernelgpt.io.gguf import GGUFError, GGUFFile, validate_llama

def run(path, model_case):
    with GGUFFile(path) as f:
        if model_case:
            validate_llama(f.metadata, f.tensors)

cases = json.loads(sys.argv[1])
run(cases[0][0], False)  # warm up: imports, first allocations
def vm_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
limit = vm_bytes() + (64 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for path, model_case in cases:
    t = time.perf_counter()
    try:
        run(path, model_case)
        outcome = "no error"
    except GGUFError:
        outcome = "GGUFError"
    except BaseException as e:
        outcome = type(e).__name__ + ": " + str(e)[:200]
    out[path] = (outcome, time.perf_counter() - t)
out["rss_growth_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
print(json.dumps(out))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
@pytest.mark.skipif("LD_PRELOAD" in os.environ and "asan" in os.environ["LD_PRELOAD"],
                    reason="AddressSanitizer reserves terabytes of address space")
def test_malformed_files_allocate_less_than_64_mib(tmp_path):
    """All cases in one child process whose address space may grow by 64 MiB only: a parser
    that allocated for a claimed count (instead of checking it first) would die here."""
    cases = []
    for name, (make, _) in ALL.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(make())
        cases.append((str(path), name.endswith("_model")))
    cases.insert(0, (str(tmp_path / "valid.gguf"), True))
    (tmp_path / "valid.gguf").write_bytes(valid_file())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1",
               KERNELGPT_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = out.pop("rss_growth_kib")
    assert growth < 64 * 1024
    valid_path = cases[0][0]
    assert out.pop(valid_path)[0] == "no error"
    for path, (outcome, seconds) in out.items():
        assert outcome == "GGUFError", f"{os.path.basename(path)}: {outcome}"
        assert seconds < 1.0
