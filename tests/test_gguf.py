"""kernelgpt.io.gguf on valid files: small files written by tests/gguf_writer.py (every value
type, several tensor types, alignments, versions) and the real SmolLM2-135M-Instruct GGUF
(`kernelgpt fetch smollm2`), compared against the `gguf` package (llama.cpp's reader) when it
is installed. Malformed files: tests/test_gguf_malformed.py. Open time: benchmarks/bench_gguf.py.
"""
import os
import struct

import numpy as np
import pytest

import gguf_writer as w
from kernelgpt.io import fetch
from kernelgpt.io.gguf import (GGML_TYPES, GGUFError, GGUFFile, LlamaParams, TensorInfo,
                               ValueType, validate_llama)

try:
    import gguf as gguf_package
except ImportError:  # the oracle is optional
    gguf_package = None
needs_oracle = pytest.mark.skipif(gguf_package is None, reason="the `gguf` package is not "
                                  "installed (pip install gguf): no oracle to compare with")


def smollm2_path():
    """The real model, if fetched (kernelgpt fetch smollm2) or named by KERNELGPT_SMOLLM2_GGUF."""
    env = os.environ.get("KERNELGPT_SMOLLM2_GGUF")
    if env and os.path.isfile(env):
        return env
    path = fetch.cached("smollm2")
    return str(path) if path else None


needs_smollm2 = pytest.mark.skipif(smollm2_path() is None, reason="SmolLM2 GGUF not available: "
                                   "run `kernelgpt fetch smollm2` or set KERNELGPT_SMOLLM2_GGUF")


def write(tmp_path, blob, name="model.gguf"):
    path = tmp_path / name
    path.write_bytes(blob)
    return path


@pytest.fixture
def tiny(tmp_path):
    kvs, tensors = w.llama_parts()
    return write(tmp_path, w.build(w.encode(kvs), tensors)), kvs, tensors


def expected_value(vtype, value):
    """What Metadata returns for a value written by gguf_writer."""
    if vtype == w.ARRAY:
        elem, items = value
        return [expected_value(elem, x) for x in items]
    if vtype == w.FLOAT32:
        return float(np.float32(value))
    if vtype == w.BOOL:
        return bool(value)
    return value


def plain(v):
    """numpy arrays (also inside lists) as lists, for comparisons."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def test_round_trip_every_value_type(tiny):
    path, kvs, tensors = tiny
    with GGUFFile(path) as f:
        assert f.version == 3 and f.alignment == 32 and f.data_offset % 32 == 0
        assert list(f.metadata) == list(kvs) and len(f.metadata) == len(kvs)
        for key, (vtype, value) in kvs.items():
            assert f.metadata.value_type(key) == vtype, key
            assert plain(f.metadata[key]) == expected_value(vtype, value), key
            if vtype == w.ARRAY:
                assert f.metadata.array_type(key) == value[0]
                assert f.metadata.array_length(key) == len(value[1])
            else:
                assert f.metadata.array_type(key) is None
        # numeric arrays are numpy views with the element type's dtype; strings are lists
        assert f.metadata["test.f32s"].dtype == np.float32
        assert f.metadata["test.bools"].dtype == np.bool_
        assert f.metadata["tokenizer.ggml.token_type"].dtype == np.int32
        assert isinstance(f.metadata["tokenizer.ggml.tokens"], list)
        assert isinstance(f.metadata["test.u64"], int) and f.metadata["test.u64"] == 2**64 - 3
        with pytest.raises(TypeError, match="not an array"):
            f.metadata.array_length("llama.block_count")
        assert "general.name" in f.metadata and "nope" not in f.metadata
        with pytest.raises(KeyError):
            f.metadata["nope"]
        assert "array of 12 string" in repr(f.metadata)


def test_tensor_infos_and_views(tiny):
    path, kvs, tensors = tiny
    blob = path.read_bytes()
    with GGUFFile(path) as f:
        assert list(f.tensors) == [t.name for t in tensors]
        for t in tensors:
            info = f.tensors[t.name]
            assert isinstance(info, TensorInfo)
            assert info.ne == tuple(t.ne) and info.shape == tuple(reversed(t.ne))
            assert info.type == t.type and info.n_elements == int(np.prod(t.ne))
            assert info.nbytes == len(t.data) and info.offset % 32 == 0
            assert blob[info.offset:info.offset + info.nbytes] == t.data
            view = f.tensor(t.name)
            assert view.tobytes() == t.data and not view.flags.writeable
            ggml = GGML_TYPES[t.type]
            if ggml.name == "F32":
                assert view.dtype == np.float32 and view.shape == info.shape
                np.testing.assert_array_equal(view, np.frombuffer(t.data, "<f4").reshape(info.shape))
            elif ggml.name == "F16":
                assert view.dtype == np.float16 and view.shape == info.shape
            else:  # quantized: rows of blocks, as the gguf package gives them
                assert view.dtype == np.uint8
                assert view.shape == info.shape[:-1] + (info.shape[-1] // ggml.block_size * ggml.type_size,)
        assert f.tensors["token_embd.weight"].type_name == "Q8_0"
        assert f.tensors["blk.0.attn_q.weight"].ggml_type.block_size == 32
        with pytest.raises(KeyError, match="no tensor named"):
            f.tensor("nope")


def test_all_numpy_tensor_types(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {"f32": rng.standard_normal((3, 5)).astype("<f4"),
              "f16": rng.standard_normal((7,)).astype("<f2"),
              "f64": rng.standard_normal((2, 3, 5)),
              "i8": rng.integers(-128, 127, (1, 1, 1, 13), dtype="<i1"),
              "i32": rng.integers(-2**31, 2**31 - 1, (11,), dtype="<i4"),
              "bf16": rng.integers(0, 2**16, (4, 3), dtype="<u2")}
    kinds = {"f32": "F32", "f16": "F16", "f64": "F64", "i8": "I8", "i32": "I32", "bf16": "BF16"}
    tensors = [w.Tensor(n, tuple(reversed(a.shape)), w.GGML[kinds[n]][0], a.tobytes())
               for n, a in arrays.items()]
    with GGUFFile(write(tmp_path, w.build([], tensors))) as f:
        for name, a in arrays.items():
            got = f.tensor(name)
            assert got.shape == a.shape and got.dtype == a.dtype.newbyteorder("=")
            np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_alignment(tmp_path, alignment):
    kvs, tensors = w.llama_parts()
    kvs["general.alignment"] = (w.UINT32, alignment)
    path = write(tmp_path, w.build(w.encode(kvs), tensors, alignment=alignment))
    with GGUFFile(path) as f:
        assert f.alignment == alignment and f.data_offset % alignment == 0
        for t in tensors:
            assert f.tensors[t.name].offset % alignment == 0
            assert f.tensor(t.name).tobytes() == t.data
        validate_llama(f.metadata, f.tensors)


def test_version_2_and_empty_files(tmp_path):
    kvs, tensors = w.llama_parts()
    with GGUFFile(write(tmp_path, w.build(w.encode(kvs), tensors, version=2))) as f:
        assert f.version == 2 and len(f.tensors) == len(tensors)
    # no tensors and no metadata: just a header, with no data section at all
    with GGUFFile(write(tmp_path, b"GGUF" + struct.pack("<IQQ", 3, 0, 0), "empty.gguf")) as f:
        assert len(f.metadata) == 0 and f.tensors == {}


def test_validate_llama_on_valid_files(tiny, tmp_path):
    with GGUFFile(tiny[0]) as f:
        p = validate_llama(f.metadata, f.tensors)
    assert p == LlamaParams(n_layer=2, n_embd=32, n_head=4, n_kv_head=2, head_dim=8, n_ff=64,
                            context_length=64, rope_theta=10000.0, rope_dim=8,
                            rms_norm_eps=float(np.float32(1e-5)), vocab_size=12,
                            tied_embeddings=True, tokenizer_model="gpt2")
    with GGUFFile(write(tmp_path, w.llama_file(untied=True), "untied.gguf")) as f:
        assert validate_llama(f.metadata, f.tensors).tied_embeddings is False
    # plain dicts work too (e.g. metadata from another reader)
    with GGUFFile(tiny[0]) as f:
        assert validate_llama(dict(f.metadata), dict(f.tensors)) == p


def test_close_and_lifetime(tiny):
    path = tiny[0]
    f = GGUFFile(path)
    view = f.tensor("output_norm.weight")
    copy = view.copy()
    types = f.metadata["tokenizer.ggml.token_type"]
    assert not f.closed and "open" in repr(f)
    f.close()
    f.close()  # idempotent
    assert f.closed and "closed" in repr(f)
    np.testing.assert_array_equal(view, copy)  # views keep the mapping alive
    assert types.tolist()[:2] == [3, 3]
    assert f.metadata["llama.block_count"] == 2  # scalars were decoded at open
    with pytest.raises(ValueError, match="closed"):
        f.tensor("output_norm.weight")
    with pytest.raises(ValueError, match="closed"):
        f.metadata["tokenizer.ggml.merges"]  # not read before close
    with GGUFFile(path) as g:
        pass
    assert g.closed


def test_errors_are_value_errors_naming_the_file(tmp_path):
    path = write(tmp_path, b"GGUF" + struct.pack("<I", 7), "bad.gguf")
    with pytest.raises(GGUFError) as err:
        GGUFFile(path)
    assert isinstance(err.value, ValueError) and str(path) in str(err.value)
    assert "unsupported GGUF version 7" in str(err.value)
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "missing.gguf")


def test_ggml_type_table():
    names = {t.name for t in GGML_TYPES.values()}
    assert {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
            "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ4_NL", "IQ4_XS", "I8", "I16", "I32", "I64",
            "F64"} <= names
    assert GGML_TYPES[3].block_size == 32 and GGML_TYPES[3].type_size == 20   # Q4_1
    assert GGML_TYPES[8].block_size == 32 and GGML_TYPES[8].type_size == 34   # Q8_0
    assert GGML_TYPES[12].block_size == 256 and GGML_TYPES[12].type_size == 144  # Q4_K


@needs_oracle
def test_ggml_type_table_matches_gguf_package():
    sizes = gguf_package.constants.GGML_QUANT_SIZES
    for t in GGML_TYPES.values():
        theirs = gguf_package.GGMLQuantizationType(t.id)
        assert theirs.name == t.name
        if t.name == "Q8_1":  # ggml's block_q8_1 holds two fp16 (36 bytes); gguf-py says 40
            assert t.type_size == 36
            continue
        assert sizes[theirs] == (t.block_size, t.type_size), t.name


def assert_same_as_gguf_package(path, skip_keys=()):
    """All metadata, tensor infos and raw tensor bytes identical to llama.cpp's reader."""
    reader = gguf_package.GGUFReader(str(path))
    with GGUFFile(path) as f:
        fields = {k: v for k, v in reader.fields.items() if not k.startswith("GGUF.")}
        assert list(fields) == list(f.metadata)
        for key, field in fields.items():
            if key in skip_keys:
                continue
            assert f.metadata.value_type(key) == int(field.types[0]), key
            if f.metadata.value_type(key) == ValueType.ARRAY and len(field.types) > 1:
                assert f.metadata.array_type(key) == int(field.types[1]), key
            assert plain(f.metadata[key]) == plain(field.contents()), key
        assert [t.name for t in reader.tensors] == list(f.tensors)
        for t in reader.tensors:
            info = f.tensors[t.name]
            assert info.type == int(t.tensor_type), t.name
            assert info.ne == tuple(int(d) for d in t.shape), t.name
            assert info.offset == t.data_offset and info.nbytes == t.n_bytes, t.name
            assert info.n_elements == t.n_elements, t.name
            mine = f.tensor(t.name)
            assert mine.shape == t.data.shape and mine.dtype == t.data.dtype, t.name
            assert mine.tobytes() == t.data.tobytes(), t.name


@needs_oracle
def test_small_file_matches_gguf_package(tiny, tmp_path):
    # the gguf package mis-reads arrays of arrays, so that key is compared above instead
    assert_same_as_gguf_package(tiny[0], skip_keys={"test.nested"})
    assert_same_as_gguf_package(write(tmp_path, w.llama_file(untied=True), "u.gguf"),
                                skip_keys={"test.nested"})


@needs_smollm2
def test_smollm2_contents():
    with GGUFFile(smollm2_path()) as f:
        assert f.version == 3 and len(f.tensors) == 272 and len(f.metadata) == 33
        m = f.metadata
        assert m["general.architecture"] == "llama" and m["tokenizer.ggml.pre"] == "smollm"
        tokens = m["tokenizer.ggml.tokens"]
        assert len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        assert m.array_length("tokenizer.ggml.merges") == 48900
        assert m["tokenizer.ggml.merges"][0] == "Ġ t"
        assert m["tokenizer.chat_template"].startswith("{% for message in messages %}")
        p = validate_llama(m, f.tensors)
        assert (p.n_layer, p.n_embd, p.n_head, p.n_kv_head, p.n_ff) == (30, 576, 9, 3, 1536)
        assert p.rope_theta == 100000.0 and p.tied_embeddings and p.vocab_size == 49152
        emb = f.tensors["token_embd.weight"]
        assert emb.type_name == "Q8_0" and emb.shape == (49152, 576)
        assert f.tensors["blk.0.ffn_down.weight"].type_name == "Q4_1"
        assert f.tensor("token_embd.weight").shape == (49152, 576 // 32 * 34)
        norm = f.tensor("output_norm.weight")
        assert norm.dtype == np.float32 and np.isfinite(norm).all() and np.abs(norm).max() > 0


@needs_smollm2
@needs_oracle
def test_smollm2_matches_gguf_package():
    assert_same_as_gguf_package(smollm2_path())


def test_cli(tiny, capsys):
    from kernelgpt import cli
    assert cli.main(["gguf", str(tiny[0]), "--tensors", "--check-llama"]) == 0
    out = capsys.readouterr().out
    assert "GGUF v3, 33 metadata entries, 20 tensors" in out
    assert "[12 x string: '<|endoftext|>', '<|im_start|>', 'a', ...]" in out
    assert "[12 x int32: 3, 3, 1, ...]" in out
    assert "blk.1.ffn_down.weight" in out and "LlamaParams(n_layer=2" in out
    bad = tiny[0].parent / "bad.gguf"
    bad.write_bytes(b"GGUF\x01\x00\x00\x00")
    assert cli.main(["gguf", str(bad)]) == 1
    assert "version 1 is not supported" in capsys.readouterr().err


def test_arrays_nested_to_the_limit(tmp_path):
    value = (w.INT16, [-5, 7])
    for _ in range(3):  # an array at depth 0 holding arrays down to depth 3: the deepest allowed
        value = (w.ARRAY, [value, value])
    with GGUFFile(write(tmp_path, w.build([w.kv("deep", w.ARRAY, value)], []))) as f:
        assert plain(f.metadata["deep"]) == [[[[-5, 7]] * 2] * 2] * 2


from hypothesis import given, settings, strategies as st  # noqa: E402

_SCALARS = {w.UINT8: st.integers(0, 255), w.INT8: st.integers(-128, 127),
            w.UINT16: st.integers(0, 2**16 - 1), w.INT32: st.integers(-2**31, 2**31 - 1),
            w.UINT64: st.integers(0, 2**64 - 1), w.INT64: st.integers(-2**63, 2**63 - 1),
            w.FLOAT64: st.floats(allow_nan=False), w.BOOL: st.integers(0, 1),
            w.STRING: st.text(max_size=20)}
_VALUES = st.one_of(
    *[s.map(lambda v, t=t: (t, v)) for t, s in _SCALARS.items()],
    *[st.lists(s, max_size=8).map(lambda v, t=t: (w.ARRAY, (t, v))) for t, s in _SCALARS.items()])


@settings(max_examples=40, deadline=None)
@given(kvs=st.dictionaries(st.text(min_size=1, max_size=12), _VALUES, max_size=8),
       shapes=st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=4), max_size=4),
       alignment=st.sampled_from([1, 4, 32, 256]))
def test_random_valid_files_round_trip(tmp_path_factory, kvs, shapes, alignment):
    """Random metadata (keys with any Unicode) and F32 tensors of random shapes."""
    kvs = {k: v for k, v in kvs.items() if k != "general.alignment"}
    kvs["general.alignment"] = (w.UINT32, alignment)
    rng = np.random.default_rng(len(shapes))
    tensors = [w.tensor(f"t{i}", tuple(s), "F32", rng) for i, s in enumerate(shapes)]
    path = write(tmp_path_factory.mktemp("rt"), w.build(w.encode(kvs), tensors, alignment=alignment))
    with GGUFFile(path) as f:
        assert list(f.metadata) == list(kvs)
        for key, (vtype, value) in kvs.items():
            assert f.metadata.value_type(key) == vtype
            assert plain(f.metadata[key]) == expected_value(vtype, value)
        for t in tensors:
            assert f.tensor(t.name).tobytes() == t.data
            assert f.tensors[t.name].offset % alignment == 0
