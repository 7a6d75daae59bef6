"""The text-in, text-out API (text_model.py): sampling defaults, chat sessions that own their
KV cache, stateless chat with prefix reuse, ChatResult, OpenAI-shaped completions, keyword
checks, the context, and load_model on our own checkpoints. Most tests need SmolLM2
(`kernelgpt fetch smollm2`; .ci/run fetches it) and skip without it."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kernelgpt
from kernelgpt.chat import MissingTemplateError
from kernelgpt.generate import GenerationStats, default_model_dir, generate
from kernelgpt.io import fetch
from kernelgpt.sampling import DEFAULT_SAMPLING, SamplingConfig, sampling_config
from kernelgpt.text_model import ChatResult, ChatSession, TextModel

ROOT = Path(__file__).resolve().parents[1]
needs_smollm2 = pytest.mark.skipif(fetch.cached("smollm2") is None,
                                   reason="SmolLM2 not fetched (kernelgpt fetch smollm2)")
GRAVITY = [{"role": "user", "content": "What is gravity?"}]


@pytest.fixture(scope="module")
def smol():
    if fetch.cached("smollm2") is None:
        pytest.skip("SmolLM2 not fetched (kernelgpt fetch smollm2)")
    return kernelgpt.load_model("smollm2")


def greedy(**kw):
    return dict(temperature=0, **kw)


def interleave(*iterables) -> list:
    """Takes one piece from each iterator in turn until all end; the texts, in order."""
    its, texts = [iter(x) for x in iterables], [[] for _ in iterables]
    live = set(range(len(its)))
    while live:
        for i in sorted(live):
            try:
                texts[i].append(next(its[i]))
            except StopIteration:
                live.discard(i)
    return ["".join(t) for t in texts]


# ---- one set of sampling defaults ---------------------------------------------------------------

def test_sampling_defaults_are_one_set_for_python_and_the_cli():
    from kernelgpt.cli import build_parser
    assert sampling_config() == DEFAULT_SAMPLING
    assert DEFAULT_SAMPLING.temperature > 0 and DEFAULT_SAMPLING.top_p < 1  # a chat default
    for command in (["chat"], ["generate", "--prompt", "x"], ["sample"]):
        args = build_parser().parse_args(command)
        for field in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            assert getattr(args, field) == getattr(DEFAULT_SAMPLING, field), (command, field)


def test_sampling_config_overrides_and_rejects_unknown_names():
    assert sampling_config({"temperature": 0}).greedy
    assert sampling_config({"repeat_penalty": 1.3}).repetition_penalty == 1.3  # llama-cpp name
    assert sampling_config({"temperature": None}) == DEFAULT_SAMPLING  # OpenAI's null
    with pytest.raises(TypeError, match="unexpected keyword argument 'temprature'.*temperature"):
        sampling_config({"temprature": 0.5})
    base = SamplingConfig(temperature=0.9, top_k=5)
    assert sampling_config({"top_k": 7}, base) == SamplingConfig(temperature=0.9, top_k=7)


def test_generate_without_settings_uses_the_defaults(monkeypatch):
    model = TextModel_from_checkpoint()
    seen = []
    import kernelgpt.generate as g
    real = g.Sampler

    def spy(config, seed=None):
        seen.append(config)
        return real(config, seed=seed)
    monkeypatch.setattr(g, "Sampler", spy)
    "".join(generate(model.gpt, model.tokenizer, "ROMEO:", 3, seed=0))
    model.generate("ROMEO:", max_tokens=3, seed=0)
    assert seen == [DEFAULT_SAMPLING, DEFAULT_SAMPLING]


def TextModel_from_checkpoint() -> TextModel:
    return kernelgpt.load_model(str(default_model_dir()))


# ---- README's snippet ---------------------------------------------------------------------------

def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if 'load_model("smollm2")' in b and "chat" in b)


def _first_words(text: str, n: int = 3) -> list:
    return re.findall(r"\w+", text)[:n]


@needs_smollm2
def test_readme_snippet_answers_like_the_cli(capsys):
    exec(compile(_readme_snippet(), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "Paris" in out and "Gravity" in out, out[-500:]
    answer = out[out.index("Gravity"):]
    assert len(answer.split()) > 10, answer
    cli = subprocess.run([sys.executable, "-m", "kernelgpt", "chat", "--max-new-tokens", "40"],
                         input="What is gravity?\n/quit\n", capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr
    reply = cli.stdout[cli.stdout.index("Gravity"):] if "Gravity" in cli.stdout else cli.stdout
    assert _first_words(reply) == _first_words(answer), (reply[:200], answer[:200])


@needs_smollm2
def test_readme_conversation_snippet_runs(smol, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    snippet = next(b for b in blocks if "chat_session" in b)
    scope = {"smol": smol}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert scope["r"].finish_reason in ("stop", "length") and scope["r"].text
    assert len(scope["session"].messages) == 5  # system, two user turns, two replies
    assert capsys.readouterr().out.strip()


# ---- conversations as objects -------------------------------------------------------------------

@needs_smollm2
def test_two_sessions_interleave_like_each_alone(smol):
    prompts = ["What is gravity?", "Name three colors."]
    solo = [smol.chat_session().send(p, stream=False, max_tokens=24, **greedy()).text
            for p in prompts]
    a, b = smol.chat_session(), smol.chat_session()
    assert isinstance(a, ChatSession) and a.cache is not b.cache
    assert interleave(a.send(prompts[0], max_tokens=24, **greedy()),
                      b.send(prompts[1], max_tokens=24, **greedy())) == solo
    # the second turn of each still follows its own conversation
    a2 = a.send("Say that again in five words.", stream=False, max_tokens=16, **greedy())
    ref = smol.chat_session()
    ref.send(prompts[0], stream=False, max_tokens=24, **greedy())
    assert a2.text == ref.send("Say that again in five words.", stream=False, max_tokens=16,
                               **greedy()).text
    assert a.messages[0] == {"role": "user", "content": prompts[0]}
    assert [m["role"] for m in a.messages] == ["user", "assistant"] * 2
    assert a.last is a2 and a2.stats.cached_tokens > a2.prompt_tokens // 2  # prefix reused


@needs_smollm2
def test_stateless_chat_calls_interleave_and_reuse_prefixes(smol):
    m1 = [{"role": "user", "content": "What is gravity?"}]
    m2 = [{"role": "system", "content": "You are a pirate."},
          {"role": "user", "content": "Hello!"}]
    solo = [smol.chat(m, stream=False, max_tokens=20, **greedy()).text for m in (m1, m2)]
    assert interleave(smol.chat(m1, max_tokens=20, **greedy()),
                      smol.chat(m2, max_tokens=20, **greedy())) == solo
    # the next turn, resent whole, prefills only what is new
    follow = m1 + [{"role": "assistant", "content": solo[0]},
                   {"role": "user", "content": "Thanks!"}]
    r = smol.chat(follow, stream=False, max_tokens=8, **greedy())
    assert r.stats.cached_tokens >= len(smol.encode_chat(m1)) - 1


@needs_smollm2
def test_chat_result_finish_reason_and_token_counts(smol):
    r = smol.chat(GRAVITY, stream=False, max_tokens=5, **greedy())
    assert isinstance(r, ChatResult) and str(r) == r.text
    assert r.finish_reason == "length" and r.completion_tokens == 5
    assert r.prompt_tokens == len(smol.encode_chat(GRAVITY))
    assert r.total_tokens == r.prompt_tokens + 5
    r = smol.chat(GRAVITY, stream=False, max_tokens=64, stop=["."], **greedy())
    assert r.finish_reason == "stop" and "." not in r.text and r.text
    hi = smol.chat([{"role": "user", "content": "Say hi."}], stream=False, max_tokens=200,
                   **greedy())
    assert hi.finish_reason == "stop" and hi.completion_tokens < 200  # <|im_end|>
    # streamed: the iterator's result once it ends
    it = smol.chat(GRAVITY, max_tokens=5, **greedy())
    text = "".join(it)
    assert it.result.text == text and it.result.finish_reason == "length"


@needs_smollm2
def test_interrupted_reply_is_kept_and_marked(smol):
    s = smol.chat_session()
    it = iter(s.send("Tell me a long story about a dragon.", max_tokens=100, **greedy()))
    first = [next(it), next(it)]
    it.close()
    assert s.last.finish_reason == "interrupted" and s.last.text == "".join(first)
    assert s.messages[-1] == {"role": "assistant", "content": "".join(first)}
    it = iter(s.send("Go on.", max_tokens=100, **greedy()))
    next(it)
    with pytest.raises(KeyboardInterrupt):
        it.throw(KeyboardInterrupt)
    assert s.last.finish_reason == "interrupted" and len(s.messages) == 4
    r = s.send("Thanks.", stream=False, max_tokens=8, **greedy())  # the session still works
    assert r.completion_tokens > 0
    s.reset()
    assert s.messages == [] and s.last is None


@needs_smollm2
def test_session_system_prompt(smol):
    s = smol.chat_session(system="You are a pirate.")
    s.send("Hi", stream=False, max_tokens=4, **greedy())
    assert s.messages[0] == {"role": "system", "content": "You are a pirate."}
    s.system = "You are terse."
    assert s.messages == [{"role": "system", "content": "You are terse."}]
    with pytest.raises(TypeError, match="system"):
        smol.chat_session(system=3)


@needs_smollm2
def test_create_chat_completion_is_openai_shaped(smol):
    out = smol.create_chat_completion(GRAVITY, max_tokens=12, **greedy())
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": len(smol.encode_chat(GRAVITY)),
                            "completion_tokens": 12,
                            "total_tokens": len(smol.encode_chat(GRAVITY)) + 12}
    chunks = list(smol.create_chat_completion(GRAVITY, stream=True, max_tokens=12, **greedy()))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"][0]["delta"] == {}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == choice["message"]["content"]
    stopped = smol.create_chat_completion(GRAVITY, max_tokens=64, stop=".", **greedy())
    assert stopped["choices"][0]["finish_reason"] == "stop"
    done = smol.create_completion("The capital of France is", max_tokens=4, **greedy())
    assert done["object"] == "text_completion" and done["usage"]["completion_tokens"] == 4
    assert done["choices"][0]["text"] == smol.generate("The capital of France is", max_tokens=4,
                                                       **greedy())


@needs_smollm2
def test_keyword_arguments(smol):
    with pytest.raises(TypeError, match="'foo'.*max_tokens.*temperature"):
        smol.chat(GRAVITY, foo=1)
    with pytest.raises(TypeError, match="'n_predict'.*max_tokens"):
        smol.create_chat_completion(GRAVITY, n_predict=3)
    with pytest.raises(TypeError, match="'temp'"):
        smol.generate("x", temp=0.3)
    with pytest.raises(TypeError, match="'foo'"):
        smol.chat_session().send("hi", foo=1)
    a = smol.generate("Once upon a time", max_tokens=6, **greedy())
    assert a == smol.generate("Once upon a time", max_new_tokens=6, **greedy())
    assert a == smol.generate("Once upon a time", 6, **greedy())
    with pytest.raises(ValueError, match="disagree"):
        smol.generate("x", max_tokens=3, max_new_tokens=4)
    both = smol.generate(["Once upon a time", "1, 2, 3,"], max_tokens=6, **greedy())
    assert both[0] == a and isinstance(both[1], str)
    ids = smol.tokenizer.encode("Once upon a time")
    assert smol.generate(ids, max_tokens=6, **greedy()) == a
    with pytest.raises(ValueError, match="out of range"):
        smol.generate([10 ** 9], max_tokens=2)
    with pytest.raises(TypeError, match="max_new_tokens must be an int"):
        smol.generate("x", max_tokens="5")


@needs_smollm2
def test_messages_in_openai_forms(smol):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "},
                                          {"type": "text", "text": "gravity?"}]}]
    assert smol.encode_chat(parts) == smol.encode_chat(GRAVITY)
    with pytest.raises(ValueError, match="role"):
        smol.chat([{"role": "wizard", "content": "hi"}], stream=False)
    with pytest.raises(TypeError):
        smol.chat("What is gravity?", stream=False)


# ---- context ------------------------------------------------------------------------------------

@needs_smollm2
def test_cache_holds_the_models_context(smol):
    assert smol.context_length == 8192 == smol.new_cache().max_len
    assert smol.chat_session().cache.max_len == 8192
    c = smol.config
    # a float16 cache by default with quantized weights (kv_dtype="float32" doubles it)
    assert smol.kv_cache_bytes() == 2 * c.n_layer * c.n_kv_head * c.head_dim * 8192 * 2
    assert smol.kv_cache_bytes() == smol.new_cache().nbytes
    short = kernelgpt.load_model("smollm2", max_context=512)
    assert short.context_length == 512 == short.new_cache().max_len
    with pytest.raises(ValueError, match="max_context"):
        kernelgpt.load_model("smollm2", max_context=0)


@needs_smollm2
@pytest.mark.slow
def test_a_5000_token_prompt(smol):
    stats = GenerationStats()
    smol.generate("word " * 4999, max_tokens=1, stats=stats, **greedy())
    assert 5000 <= stats.prompt_tokens <= 8192


@needs_smollm2
def test_long_chats_drop_the_oldest_turns_with_a_notice():
    small = kernelgpt.load_model("smollm2", max_context=320)
    s = small.chat_session(system="You tell stories.")
    notices = []
    for i in range(4):
        r = s.send(f"Tell me a long story about dragon number {i}.", stream=False,
                   max_tokens=100, **greedy())
        assert r.prompt_tokens + r.completion_tokens <= 320
        notices.append(r.notice)
    assert notices[0] is None and any(notices)
    assert s.messages[0]["role"] == "system"  # the system prompt is never dropped
    assert s.last.dropped_turns >= 2 and "oldest" in s.last.notice
    too_long = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(ValueError, match="context"):
        small.chat(too_long, stream=False)
    tiny = kernelgpt.load_model("smollm2", max_context=48)
    long = tiny.chat([{"role": "user", "content": "Tell me a long story about a dragon."}],
                     stream=False, max_tokens=1000, **greedy())
    assert long.finish_reason == "length" and long.prompt_tokens + long.completion_tokens <= 48
    assert long.completion_tokens > 0


# ---- our own checkpoints through load_model -----------------------------------------------------

def test_load_model_opens_checkpoints():
    model = kernelgpt.load_model(str(default_model_dir()))
    named = kernelgpt.load_model("shakespeare-char")
    for m in (model, named):
        assert isinstance(m, TextModel) and m.weights == "fp32"
        text = m.generate("ROMEO:", max_tokens=30, seed=1, temperature=0.8)
        assert isinstance(text, str) and len(text) == 30
        assert m.tokenizer.decode(m.tokenizer.encode("ROMEO:")) == "ROMEO:"
    assert model.generate("JULIET:", max_tokens=20, **greedy()) == \
        named.generate("JULIET:", max_tokens=20, **greedy())
    pieces = list(model.generate("JULIET:", max_tokens=20, stream=True, **greedy()))
    assert "".join(pieces) == model.generate("JULIET:", max_tokens=20, **greedy())
    with pytest.raises(MissingTemplateError, match="chatml"):
        model.chat_session()
    with pytest.raises(MissingTemplateError, match="chatml"):
        model.chat(GRAVITY, stream=False)
    with pytest.raises(ValueError, match="max_context"):
        kernelgpt.load_model("shakespeare-char", max_context=10 ** 6)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        kernelgpt.load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="known"):
        kernelgpt.load_model("no-such-model")
    with pytest.raises(TypeError):
        kernelgpt.load_model(3)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        kernelgpt.load_model(str(tmp_path))  # an empty directory is no checkpoint


def test_generate_checks_its_prompt():
    model = TextModel_from_checkpoint()
    with pytest.raises(TypeError, match="bytes"):
        model.generate(b"ROMEO", max_tokens=2)
    with pytest.raises(ValueError, match="out of range"):
        model.generate([0, 1, 99999], max_tokens=2)
    with pytest.raises(ValueError, match="longer than the model's context"):
        model.generate("a" * 1000, max_tokens=2)
    with pytest.raises(ValueError, match="stream=True takes one prompt"):
        model.generate(["a", "b"], stream=True)
    assert np.isscalar(len(model.generate("ROMEO:", max_tokens=0)))
