"""Reading vocabularies written by other tools: GPT-2's encoder.json + vocab.bpe, and the
tokenizer in a GGUF file's metadata. Both spell token bytes with GPT-2's byte-to-unicode
alphabet and list merges as "left right".

The functions here read and check; they return plain values (ranks, special tokens, the
scanner), and the classmethods `Encoding.from_gpt2_files`, `Encoding.from_gguf_vocab` and
`Encoding.from_gguf_metadata` (encoding.py) build the Encoding from them.

Merge rule (GGUF). Merging follows the ranks (ids) of the merged tokens, tiktoken's rule;
Hugging Face follows the position of the pair in the merge list. They agree when merged
tokens are numbered in merge order after their parts (SmolLM2: merge k makes token 252 + k)
and every token longer than one byte comes from a merge, both checked by `gguf_vocab`
(ValueError otherwise), and when no adjacent pair whose concatenation is a token, but not by
its own merge, is ever the best candidate: true of vocabularies that BPE training made
(checked on SmolLM2 against reference.bpe_encode_merges in the tests, and on 412,394 distinct
pieces of Python source and Shakespeare against Hugging Face tokenizers).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Dict, Optional, Sequence, Tuple, Union

__all__ = ["GGUF_PRE_TOKENIZERS", "gpt2_char_to_byte", "gpt2_files", "gguf_vocab",
           "gguf_metadata_arguments"]

from .patterns import GGUF_PRE_TOKENIZERS, gguf_pre_tokenizer  # noqa: F401 (re-exported)

_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNUSED, _GGUF_BYTE = \
    1, 2, 3, 4, 5, 6  # llama.cpp's token types


def gpt2_char_to_byte() -> Dict[str, int]:
    """GPT-2's byte-to-unicode spelling, reversed: printable bytes other than space stand for
    themselves, the other bytes are chr(256), chr(257), ... in byte order. The dict's order
    (printable bytes first) is also the order of GPT-2's 256 byte tokens."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in printable}
    others = [b for b in range(256) if b not in table.values()]
    table.update({chr(256 + k): b for k, b in enumerate(others)})
    return table


def gpt2_files(encoder_json: Union[str, os.PathLike], vocab_bpe: Union[str, os.PathLike],
               special_tokens: Optional[Dict[str, int]]) -> Tuple[Dict[bytes, int], Dict[str, int]]:
    """(mergeable ranks, special tokens) of a GPT-2 style vocabulary: the 256 byte tokens in
    GPT-2's order, then one token per line of vocab.bpe, checked against encoder.json."""
    char_to_byte = gpt2_char_to_byte()

    def to_bytes(word: str) -> bytes:
        try:
            return bytes(char_to_byte[c] for c in word)
        except KeyError as err:
            raise ValueError(f"{vocab_bpe}: token {word!r:.40} has the character {err.args[0]!r}, "
                             "which is not in GPT-2's byte-to-unicode alphabet") from None

    ranks = {bytes([b]): i for i, b in enumerate(char_to_byte.values())}
    lines = pathlib.Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    for line in lines[1:]:
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{vocab_bpe}: a merge line must be two tokens, got {line!r:.60}")
        first, second = parts
        ranks[to_bytes(first) + to_bytes(second)] = len(ranks)
    encoder = json.loads(pathlib.Path(encoder_json).read_text(encoding="utf-8"))
    if not isinstance(encoder, dict):
        raise ValueError(f"{encoder_json}: expected a JSON object of token -> id")
    specials = {"<|endoftext|>": 50256} if special_tokens is None else dict(special_tokens)
    from_json = {to_bytes(k): v for k, v in encoder.items() if k not in specials and
                 k != "<|startoftext|>"}
    if from_json != ranks:
        raise ValueError(f"{encoder_json} does not match the merges in {vocab_bpe}")
    return ranks, specials


def gguf_vocab(tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
               pre: Optional[str], bos_token_id: Optional[int], eos_token_id: Optional[int]):
    """(mergeable ranks, special tokens, added tokens, decode-only tokens, scanner) of a GGUF
    vocabulary given as plain lists (see Encoding.from_gguf_vocab), after checking everything
    the merge rule relies on."""
    patterns = gguf_pre_tokenizer(pre).patterns
    scanner = patterns if isinstance(patterns, str) else list(patterns)
    vocab = byte_level_vocab(tokens, merges, token_types, bos_token_id, eos_token_id)
    return vocab + (scanner,)


def byte_level_vocab(tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
                     bos_token_id: Optional[int], eos_token_id: Optional[int],
                     where: str = "from_gguf_vocab"):
    """(mergeable ranks, special tokens, added tokens, decode-only tokens) of a byte-level BPE
    vocabulary in GPT-2's byte-to-unicode spelling (a GGUF's or a tokenizer.json's), after
    checking everything the merge rule relies on (the module docstring); `where` names the
    caller in errors. Token types, as llama.cpp numbers them:
      1 normal        a mergeable token (its text in the byte-to-unicode alphabet); one that is
                      not (Command-R has 1,403: '\u200d', '‼', ...) can never come out of
                      llama.cpp's byte-level encoder, so it only decodes (to its UTF-8 text)
      3 control       a special token (<|im_start|>): matched when allowed_special says so
      4 user-defined  an added token (Qwen 2's [PAD151646], MPT's space runs, DeepSeek's
                      'õ'): matched in every text as it is written, as llama.cpp and Hugging
                      Face match added tokens before pre-tokenizing
      5 unused        decodes to its text, never produced
    A normal token of several bytes that no merge makes is never produced either (the merge
    rule could not make it): it only decodes."""
    lists = {}
    for what, seq in (("tokens", tokens), ("merges", merges), ("token_types", token_types)):
        if isinstance(seq, (str, bytes, dict)) or not hasattr(seq, "__len__"):
            raise TypeError(f"{where}: {what} must be a list, got {type(seq).__name__}")
        lists[what] = list(seq)  # numpy arrays too
    tokens, merges, token_types = lists["tokens"], lists["merges"], lists["token_types"]
    if len(token_types) != len(tokens):
        raise ValueError(f"{where}: {len(tokens)} tokens but {len(token_types)} token types")
    char_to_byte = gpt2_char_to_byte()
    ranks: Dict[bytes, int] = {}
    specials: Dict[str, int] = {}
    added: Dict[str, int] = {}
    decode_only: Dict[str, int] = {}
    for i, (token, kind) in enumerate(zip(tokens, token_types)):
        if not isinstance(token, str):
            raise TypeError(f"{where}: token {i} is a {type(token).__name__}, not a str")
        if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNUSED) and token == "":
            raise ValueError(f"{where}: token {i} is an empty string")
        if kind == _GGUF_CONTROL:
            specials[token] = i
        elif kind == _GGUF_USER_DEFINED:
            if token in added or token in specials:
                raise ValueError(f"{where}: tokens {added.get(token, specials.get(token))} and "
                                 f"{i} are both {token!r}")
            added[token] = i
        elif kind == _GGUF_UNUSED:
            decode_only[token] = i
        elif kind == _GGUF_NORMAL:
            try:
                data = bytes(char_to_byte[c] for c in token)
            except (KeyError, TypeError):
                decode_only[token] = i
                continue
            if data in ranks:
                raise ValueError(f"{where}: tokens {ranks[data]} and {i} are both {token!r}")
            ranks[data] = i
        else:
            raise ValueError(f"{where}: token {i} ({token!r}) has type {kind!r}; only "
                             "normal (1), control (3), user-defined (4) and unused (5) tokens "
                             "are supported in a byte-level BPE vocabulary")
    # Check that ranks reproduce the merge order (see the module docstring).
    made = set()
    previous = -1
    ids = {t: i for i, t in enumerate(tokens)}
    for k, merge in enumerate(merges):
        parts = merge.split(" ") if isinstance(merge, str) else ()
        if len(parts) != 2 or parts[0] not in ids or parts[1] not in ids:
            raise ValueError(f"{where}: merge {k} ({merge!r}) is not 'left right' "
                             "with two tokens of the vocabulary")
        result = ids.get(parts[0] + parts[1])
        if result is None or token_types[result] != _GGUF_NORMAL:
            raise ValueError(f"{where}: merge {k} ({merge!r}) makes "
                             f"{parts[0] + parts[1]!r}, which is not a normal token")
        if result < previous:  # several merges may make one token (Llama 3 lists every split)
            raise ValueError(f"{where}: merge {k} ({merge!r}) makes token {result}, "
                             "which is not numbered after the tokens of earlier merges: "
                             "kernelgpt needs merged tokens numbered in merge order")
        previous = result
        made.add(result)
    # A normal token of several bytes that no merge makes (Aquila's '<|endoftext|>' at id 0)
    # can never come out of merging: it only decodes.
    for data, i in [(d, i) for d, i in ranks.items() if len(d) > 1 and i not in made]:
        del ranks[data]
        decode_only[tokens[i]] = i
    for what, value in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value < len(tokens)):
            raise ValueError(f"{where}: {what} must be a token id in [0, "
                             f"{len(tokens)}), got {value!r}")
    return ranks, specials, added, decode_only


def gguf_metadata_arguments(metadata: Dict[str, object]) -> Tuple[tuple, Dict[str, object]]:
    """The (positional, keyword) arguments of Encoding.from_gguf_vocab that a GGUF file's
    {key: value} metadata holds, after checking that it describes a byte-level BPE."""
    if not isinstance(metadata, dict):
        raise TypeError(f"from_gguf_metadata: expected a dict, got {type(metadata).__name__}")
    model = metadata.get("tokenizer.ggml.model")
    if model != "gpt2":
        kinds = {"bert": "WordPiece", "t5": "Unigram", "rwkv": "RWKV", "plamo2": "PLaMo-2",
                 "gemma4": "SentencePiece-style BPE on raw UTF-8", "none": "no tokenizer"}
        kind = f" ({kinds[model]})" if model in kinds else ""
        raise ValueError(f"from_gguf_metadata: tokenizer.ggml.model is {model!r}{kind}; kernelgpt "
                         "reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece BPE)")
    missing = [k for k in ("tokens", "merges", "token_type")
               if f"tokenizer.ggml.{k}" not in metadata]
    if missing:
        raise ValueError("from_gguf_metadata: the metadata has no " +
                         ", ".join(f"tokenizer.ggml.{k}" for k in missing))
    get = metadata.get
    args = (get("tokenizer.ggml.tokens"), get("tokenizer.ggml.merges"),
            get("tokenizer.ggml.token_type"), get("tokenizer.ggml.pre"))  # pre: None -> default
    kwargs = dict(bos_token_id=get("tokenizer.ggml.bos_token_id"),
                  eos_token_id=get("tokenizer.ggml.eos_token_id"),
                  add_bos_token=bool(get("tokenizer.ggml.add_bos_token", False)))
    return args, kwargs


# ---- Hugging Face tokenizer.json ------------------------------------------------------------

def _byte_level_step(step: dict) -> bool:
    return step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False)


def _escape(literal: str) -> str:
    """A regex that matches `literal` as it is."""
    return "".join("\\" + c if c in "\\.^$|?*+()[]{}-/" else c for c in literal)


def tokenizer_json_scanner(pre):
    """What a tokenizer.json's pre_tokenizer splits like: a scanner's name or a list of
    patterns for the general engine (patterns.scanner_for), or ValueError naming what is not
    supported. Each step becomes one pattern, applied to the pieces of the steps before it:
      Split(Regex P or String S, behavior "Isolated", invert false)   P, or S escaped
      Digits(individual_digits)                                       \\p{N} (or \\p{N}+)
      Punctuation(behavior "Isolated")                                one punctuation character
      ByteLevel(use_regex=True)                                       GPT-2's regex
      ByteLevel(use_regex=False)                                      nothing (bytes only)
    ByteLevel must not add a prefix space. SmolLM2's Digits + ByteLevel and single patterns
    with a hand-written scanner (GPT-2, Llama 3, Qwen 2, cl100k) get that scanner."""
    from .patterns import GPT2_ORIGINAL_PATTERN, scanner_for
    if not isinstance(pre, dict):
        raise ValueError("tokenizer.json: pre_tokenizer is missing; a byte-level BPE needs one "
                         "(ByteLevel, or a Split regex then ByteLevel)")
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise ValueError("tokenizer.json: pre_tokenizer.pretokenizers must be a list of objects")
    patterns = []
    byte_level = False
    for step in steps:
        kind = step.get("type")
        if byte_level:
            raise ValueError("tokenizer.json: only ByteLevel as the last pre-tokenizer step is "
                             f"supported, got {kind!r} after it")
        if kind == "ByteLevel":
            if not _byte_level_step(step):
                raise ValueError("tokenizer.json: unsupported pre_tokenizer: ByteLevel with "
                                 "add_prefix_space = true")
            byte_level = True
            if step.get("use_regex", True):
                patterns.append(GPT2_ORIGINAL_PATTERN)
        elif kind == "Split":
            spec = step.get("pattern") or {}
            if step.get("behavior") != "Isolated" or step.get("invert"):
                raise ValueError("tokenizer.json: only a Split with behavior 'Isolated' and "
                                 f"invert false is supported, got {json.dumps(step)[:200]}")
            if isinstance(spec.get("Regex"), str):
                patterns.append(spec["Regex"])
            elif isinstance(spec.get("String"), str) and spec["String"]:
                patterns.append(_escape(spec["String"]))
            else:
                raise ValueError(f"tokenizer.json: a Split needs a Regex or String pattern, got "
                                 f"{json.dumps(step)[:200]}")
        elif kind == "Digits":
            patterns.append(r"\p{N}" if step.get("individual_digits") else r"\p{N}+")
        elif kind == "Punctuation" and step.get("behavior", "Isolated") == "Isolated":
            patterns.append(r"[\p{P}!-/:-@\[-`{-~]")
        else:
            raise ValueError(f"tokenizer.json: unsupported pre_tokenizer {json.dumps(pre)[:300]}; "
                             "supported steps: Split (Isolated), Digits, Punctuation (Isolated), "
                             "ByteLevel (add_prefix_space false)")
    if not byte_level:
        raise ValueError(f"tokenizer.json: unsupported pre_tokenizer {json.dumps(pre)[:300]}: "
                         "a byte-level BPE needs a ByteLevel step")
    if not patterns:
        raise ValueError("tokenizer.json: ByteLevel(use_regex=false) alone does not split; "
                         "a Split step is needed before it")
    if patterns == [r"\p{N}", GPT2_ORIGINAL_PATTERN]:
        return "smollm"
    spec = scanner_for(patterns)
    # Building a splitter checks every pattern now, with the error naming it.
    from .. import _C
    try:
        _C.BPE.from_ranks({}, {}, spec)
    except ValueError as e:
        raise ValueError(f"tokenizer.json: the pre-tokenizer's regex cannot be used: {e}") from None
    return spec


def tokenizer_json_arguments(data: dict, where: str = "tokenizer.json"):
    """(tokens, merges, token_types, scanner, bos_token_id, add_bos_token) of a Hugging Face
    tokenizer.json (parsed) of the byte-level BPE family, or ValueError naming the part that
    is not supported (a WordPiece or Unigram model, a normalizer, byte fallback, ...)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object")
    model = data.get("model")
    if not isinstance(model, dict):
        raise ValueError(f"{where}: has no 'model' object")
    if model.get("type", "BPE") != "BPE":
        raise ValueError(f"{where}: the model is {model.get('type')!r}; kernelgpt reads byte-level "
                         "BPE tokenizers only (not WordPiece, Unigram or WordLevel)")
    for key, off in (("dropout", None), ("unk_token", None), ("continuing_subword_prefix", None),
                     ("end_of_word_suffix", None), ("byte_fallback", False)):
        if model.get(key) not in (off, "", None, False):
            raise ValueError(f"{where}: model.{key} = {model.get(key)!r} is not supported "
                             "(byte-level BPE has none)")
    if data.get("normalizer") is not None:
        kind = data["normalizer"].get("type") if isinstance(data["normalizer"], dict) else data["normalizer"]
        raise ValueError(f"{where}: the normalizer {kind!r} is not supported (byte-level BPE "
                         "tokenizers have none)")
    scanner = tokenizer_json_scanner(data.get("pre_tokenizer"))
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{where}: model.vocab must be an object of token -> id")
    by_id: Dict[int, str] = {}
    special = set()
    for token, i in vocab.items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ValueError(f"{where}: model.vocab[{token!r}] = {i!r} is not a token id")
        by_id[i] = token
    for added in data.get("added_tokens") or []:
        if not isinstance(added, dict) or not isinstance(added.get("content"), str) or \
                isinstance(added.get("id"), bool) or not isinstance(added.get("id"), int):
            raise ValueError(f"{where}: an added_tokens entry needs 'id' and 'content', got {added!r:.100}")
        for flag in ("lstrip", "rstrip", "single_word"):
            if added.get(flag):
                raise ValueError(f"{where}: added token {added['content']!r} has {flag} = true, "
                                 "which is not supported")
        if by_id.get(added["id"], added["content"]) != added["content"]:
            raise ValueError(f"{where}: added token {added['id']} is {added['content']!r} but the "
                             f"vocabulary says {by_id[added['id']]!r}")
        by_id[added["id"]] = added["content"]
        special.add(added["id"])  # matched in the text before pre-tokenizing, as added tokens are
    n = max(by_id) + 1 if by_id else 0
    missing = [i for i in range(n) if i not in by_id]
    if missing:
        raise ValueError(f"{where}: token ids must be 0..{n - 1} without gaps; {len(missing)} are "
                         f"missing (the first is {missing[0]})")
    tokens = [by_id[i] for i in range(n)]
    if len(set(tokens)) != n:
        raise ValueError(f"{where}: two ids have the same token text")
    merges = model.get("merges")
    if not isinstance(merges, list):
        raise ValueError(f"{where}: model.merges must be a list")
    merges = [m if isinstance(m, str) else " ".join(m) if isinstance(m, list) and len(m) == 2
              and all(isinstance(x, str) for x in m) else None for m in merges]
    if None in merges:
        raise ValueError(f"{where}: model.merges entries must be 'left right' or [left, right]")
    types = [_GGUF_CONTROL if i in special else _GGUF_NORMAL for i in range(n)]
    bos, add_bos = None, False
    post = data.get("post_processor")
    if isinstance(post, dict) and post.get("type") == "TemplateProcessing":
        single = post.get("single") or []
        if len(single) == 2 and "SpecialToken" in single[0] and "Sequence" in single[1]:
            name = single[0]["SpecialToken"].get("id")
            ids = [i for i, t in enumerate(tokens) if t == name]
            if ids:
                bos, add_bos = ids[0], True
    return tokens, merges, types, scanner, bos, add_bos


def tokenizer_json_from_gguf(metadata: Dict[str, object]) -> dict:
    """A Hugging Face tokenizer.json (as a dict) for the byte-level BPE vocabulary of a GGUF
    file's metadata: its tokens, merges, added and special tokens, and its pre-tokenizer
    written as the model's Split regexes (GGUF_PRE_TOKENIZERS) then ByteLevel. The `tokenizers`
    library runs it as the model's own tokenizer.json would; the tests and the benchmark use
    it as the reference and the peer. Special (control) tokens become special added tokens,
    which `tokenizers` matches in the text: compare with encode(..., allowed_special="all")."""
    from .patterns import _PATTERN_OF
    tokens = list(metadata["tokenizer.ggml.tokens"])
    types = [int(t) for t in metadata["tokenizer.ggml.token_type"]]
    pre = gguf_pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    if pre.patterns == "smollm":
        patterns = [r"\p{N}", _PATTERN_OF["gpt2"].replace(r"\s++$|", "").replace("++", "+")]
    elif isinstance(pre.patterns, str):
        patterns = [_PATTERN_OF[pre.patterns]]
    else:
        patterns = list(pre.patterns)
    vocab: Dict[str, int] = {}
    for i, (t, kind) in enumerate(zip(tokens, types)):
        if kind in (_GGUF_NORMAL, _GGUF_CONTROL, _GGUF_USER_DEFINED):
            vocab.setdefault(t, i)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": kind == _GGUF_CONTROL}
             for i, (t, kind) in enumerate(zip(tokens, types))
             if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED) and vocab.get(t) == i]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                  "use_regex": False}
    split = [{"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
             for p in patterns]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
            "normalizer": None, "post_processor": None, "decoder": byte_level,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": split + [byte_level]},
            "model": {"type": "BPE", "dropout": None, "unk_token": None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None,
                      "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": pre.ignore_merges, "vocab": vocab,
                      "merges": list(metadata["tokenizer.ggml.merges"])}}
