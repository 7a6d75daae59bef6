"""The `kernelgpt` command through its real entry point (python -m kernelgpt): user errors are
one "error:" line and never a traceback, closed pipes and Ctrl-C end quietly, --version, every
option's help shows its default, --threads, train --no-progress lines, and chat on a tiny
GGUF (no SmolLM2 needed; the terminal session with SmolLM2 is test_chat_terminal.py)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kernelgpt
from kernelgpt.cli import _COMMANDS, build_parser, error_message
from kernelgpt.sampling import DEFAULT_SAMPLING

sys.path.insert(0, str(Path(__file__).parent))
import gguf_writer  # noqa: E402

TIMEOUT = 120


def kernelgpt_cmd(*args, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", TIMEOUT)
    env = dict(os.environ)
    env.pop("KERNELGPT_DEBUG", None)
    env.update(kw.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "kernelgpt", *map(str, args)],
                          capture_output=True, text=True, env=env, **kw)


def assert_clean_error(r: subprocess.CompletedProcess, *, match: str = "", code=None):
    assert r.returncode != 0, (r.stdout[-500:], r.stderr[-500:])
    if code is not None:
        assert r.returncode == code, r.stderr
    assert "error:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert match.lower() in r.stderr.lower(), r.stderr


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A runnable 2-layer Llama GGUF without a chat template (64-token context)."""
    kvs, tensors = gguf_writer.llama_parts(numeric=True)
    del kvs["tokenizer.chat_template"]
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    path.write_bytes(gguf_writer.build(gguf_writer.encode(kvs), tensors))
    return path


# ---- errors -------------------------------------------------------------------------------------

def test_error_message_strips_the_repr_of_a_key_error():
    assert error_message(KeyError("token id 7 is out of range")) == "token id 7 is out of range"
    assert error_message(FileNotFoundError(2, "No such file or directory", "x.txt")) == \
        "No such file or directory: x.txt"


def _bad_arguments(tmp: Path):
    text = tmp / "notes.txt"
    text.write_text("not a model\n")
    missing = tmp / "missing"
    return [
        (["tokenize", "-d", "99999999"], "token id 99999999 is out of range [0, "),
        (["tokenize", "-d", "--", "-3"], "out of range"),
        (["tokenize", "-d", "twelve"], "integer"),
        (["tokenize", "-e", tmp, "hello"], "directory"),
        (["tokenize", "-e", missing / "v.tiktoken", "hello"], "no such file"),
        (["tokenize", "--train", missing], "no such file"),
        (["tokenize", "--threads", "0", "hi"], "--threads"),
        (["sample", "--threads", "-2"], "--threads"),
        (["sample", "--threads", "many"], "--threads"),
        (["sample", "--temperature", "-1"], "--temperature"),
        (["sample", "--temperature", "nan"], "--temperature"),
        (["sample", "--top-p", "0"], "--top-p"),
        (["sample", "--top-k", "-1"], "--top-k"),
        (["sample", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["sample", "--ckpt", missing], "checkpoint"),
        (["sample", "--ckpt", text], ""),
        (["generate", "--prompt", "x", "--model", missing / "model.gguf"], "no such model"),
        (["generate", "--prompt", "x", "--model", text], ""),
        (["generate", "--prompt", "x", "--max-context", "0"], "--max-context"),
        (["generate", "--prompt", "x", "--repetition-penalty", "0"], "--repetition-penalty"),
        (["chat", "--model", missing / "model.gguf"], "no such model"),
        (["chat", "--model", tmp], ""),  # a directory that is no checkpoint
        (["chat", "--threads", "0"], "--threads"),
        (["gguf", missing / "x.gguf"], "no such file"),
        (["gguf", tmp], "directory"),
        (["gguf", text], "not a GGUF file"),
        (["train", "--data", missing / "corpus.txt", "--out", tmp / "run"], ""),
        (["train", "--data", text, "--out", text], ""),  # a file where a directory goes
        (["train", "--data", text, "--out", tmp / "run2", "--batch-size", "0"], "batch_size"),
        (["train", "--threads", "0"], "--threads"),
        (["bench", "--only", "nope"], "unknown kernel families"),
        (["bench", "--threads", "0"], "--threads"),
        (["explain", "no-such-lesson"], ""),
        (["no-such-command"], "invalid choice"),
    ]


def test_user_errors_are_one_line_without_a_traceback(tmp_path):
    failures = []
    for argv, match in _bad_arguments(tmp_path):
        r = kernelgpt_cmd(*argv)
        try:
            assert_clean_error(r, match=match)
        except AssertionError as err:
            failures.append(f"kernelgpt {' '.join(map(str, argv))}: {err}")
    assert not failures, "\n\n".join(failures)


def test_out_of_range_id_exits_1_with_the_command_name():
    r = kernelgpt_cmd("tokenize", "-e", "gpt2", "-d", "99999999")
    if "not fetched" in r.stderr or "fetch" in r.stderr and "gpt2" in r.stderr:
        pytest.skip("gpt2 vocabulary not fetched")
    assert_clean_error(r, match="kernelgpt tokenize: error: token id 99999999 is out of range",
                       code=1)


def test_kernelgpt_debug_shows_the_traceback():
    r = kernelgpt_cmd("sample", "--ckpt", "no/such/checkpoint", env={"KERNELGPT_DEBUG": "1"})
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_a_gguf_without_a_chat_template_says_to_use_template_chatml(tiny_gguf):
    r = kernelgpt_cmd("chat", "--model", tiny_gguf, input="hello\n")
    assert_clean_error(r, match="--template chatml", code=1)


# ---- closed pipes and Ctrl-C --------------------------------------------------------------------

def _read_then_close(argv, n_bytes=10, stdin=None, env=None):
    """Starts kernelgpt with stdout a pipe, reads n_bytes and closes the pipe (as `| head -c`
    does). Returns (exit status, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "kernelgpt", *map(str, argv)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=stdin, env=env)
    try:
        data = p.stdout.read(n_bytes)
        p.stdout.close()
        err = p.stderr.read().decode()
        code = p.wait(timeout=TIMEOUT)
    finally:
        p.kill()
    assert len(data) == n_bytes, err
    return code, err


@pytest.mark.parametrize("argv", [
    ["sample", "--max-new-tokens", "2000", "--seed", "0"],
    ["sample", "--max-new-tokens", "2000", "--prompt", "x" * 100],
    ["tokenize", "--train", "CORPUS", "--vocab-size", "400", "--trace"],
    ["tokenize", "--help"],
    ["train", "--help"],
])
def test_a_closed_pipe_ends_quietly(argv, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog; " * 2000)
    argv = [corpus if a == "CORPUS" else a for a in argv]
    code, err = _read_then_close(argv, n_bytes=1 if "--help" in argv else 10)
    assert code in (0, 141), err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_a_closed_pipe_on_tokenize_output(tmp_path):
    from kernelgpt.io import fetch
    if fetch.cached("cl100k_base") is None:
        pytest.skip("cl100k_base not fetched")
    text = tmp_path / "big.txt"
    text.write_text("Hello world, how are you today? " * 20000)
    with open(text) as stdin:
        code, err = _read_then_close(["tokenize"], stdin=stdin)
    assert code in (0, 141), err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_ctrl_c_exits_130_without_a_traceback():
    p = subprocess.Popen([sys.executable, "-m", "kernelgpt", "sample", "--max-new-tokens",
                          "1000000", "--seed", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert len(p.stdout.read(50)) == 50  # it is generating
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert b"Traceback" not in err, err


# ---- --version, --help --------------------------------------------------------------------------

def test_version():
    r = kernelgpt_cmd("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"kernelgpt {kernelgpt.__version__}"


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", [name for name, _, _ in _COMMANDS])
def test_help_shows_every_option_and_its_default(command):
    r = kernelgpt_cmd(command, "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # lines rewrapped
    sub = _subparsers()[command]
    for action in sub._actions:
        if action.dest == "help":
            continue
        for option in action.option_strings:
            assert option in text, (command, option)
        assert action.help, (command, action.dest, "has no help text")
        default = action.default
        if "(default" in action.help:  # said in words ("(default: a newline)")
            assert "(default" in text
            continue
        if default in (None, False, "", []) or not action.option_strings:
            continue
        shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
        assert f"default: {shown})" in text, (command, action.option_strings, shown)
    if command in ("chat", "generate", "sample"):
        assert "0 = greedy" in text


def test_top_level_help_lists_every_command():
    r = kernelgpt_cmd("--help")
    assert r.returncode == 0
    for name, _, _ in _COMMANDS:
        assert name in r.stdout


def test_train_flags_from_the_config_have_real_help():
    from kernelgpt.cli.train import TRAIN_HELP
    text = " ".join(kernelgpt_cmd("train", "--help").stdout.split())
    for name in TRAIN_HELP:
        assert f"--{name.replace('_', '-')}" in text
    assert "TrainConfig." not in text  # every field has a written help text
    assert "(default: 12)" in text and "(default: 0.001)" in text  # batch size, learning rate


# ---- defaults and --threads ---------------------------------------------------------------------

@pytest.mark.parametrize("command", [["chat"], ["generate", "--prompt", "x"], ["sample"]])
def test_sampling_defaults_are_the_package_defaults(command):
    args = build_parser().parse_args(command)
    for field in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
        assert getattr(args, field) == getattr(DEFAULT_SAMPLING, field), field
    assert build_parser().parse_args(command + ["--max-tokens", "7"]).max_new_tokens == 7


@pytest.mark.parametrize("command", ["chat", "generate", "sample", "train", "tokenize", "bench"])
def test_threads_option(command):
    assert build_parser().parse_args([command, "--threads", "3"] +
                                     (["--prompt", "x"] if command == "generate" else [])
                                     ).threads == 3


def test_threads_is_applied_before_the_work(capsys):
    from kernelgpt import cli
    before = kernelgpt.get_num_threads()
    try:
        assert cli.main(["sample", "--threads", "1", "--max-new-tokens", "2", "--seed", "0"]) == 0
        assert kernelgpt.get_num_threads() == 1
    finally:
        kernelgpt.set_num_threads(before)


# ---- train --no-progress ------------------------------------------------------------------------

def test_train_no_progress_prints_a_line_per_log_interval(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 200)
    t0 = time.perf_counter()
    r = kernelgpt_cmd("train", "--data", corpus, "--out", tmp_path / "run", "--n-layer", 1,
                      "--n-embd", 16, "--n-head", 2, "--block-size", 16, "--batch-size", 2,
                      "--max-iters", 9, "--log-interval", 3, "--eval-interval", 6,
                      "--eval-iters", 1, "--no-progress", "--no-plot", "--threads", 1)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("step ") and "/9:" in line]
    assert [line.split(":")[0] for line in lines] == \
        ["step 1/9", "step 3/9", "step 6/9", "step 9/9"], r.stdout
    for line in lines:
        assert "loss " in line and "tok/s" in line and line.rstrip().endswith(" s"), line
    assert ("val loss" in lines[2]) and ("val loss" in lines[3]) and "val loss" not in lines[1]
    assert "it/s" not in r.stderr and "%|" not in r.stderr  # no progress bar
    assert time.perf_counter() - t0 < TIMEOUT


# ---- chat and generate on a tiny model ----------------------------------------------------------

def test_chat_with_a_chosen_template_and_its_commands(tiny_gguf):
    r = kernelgpt_cmd("chat", "--model", tiny_gguf, "--template", "chatml", "--max-tokens", 4,
                      "--seed", 0, "--stats", "--history", "",
                      input="hello\n/help\n/system Be brief.\nhi\n/reset\n/nope\n/quit\n")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "context 64 tokens (KV cache up to" in r.stderr
    assert "/reset" in r.stderr and "system prompt set" in r.stderr
    assert "conversation cleared" in r.stderr and "unknown command /nope" in r.stderr
    assert "prompt tokens in" in r.stderr  # --stats


def test_chat_says_when_old_turns_are_dropped(tiny_gguf):
    r = kernelgpt_cmd("chat", "--model", tiny_gguf, "--template", "chatml", "--max-tokens", 8,
                      "--seed", 0, input="hello there friend\n" * 6)
    assert r.returncode == 0, r.stderr
    assert "[dropped the 2 oldest messages to fit the 64-token context]" in r.stderr, r.stderr
    assert "KV cache up to 8 kB" in r.stderr  # 2 layers x (K, V) x 2 heads x 8 x 64 x 2 bytes (fp16)


def test_chat_ends_at_end_of_input(tiny_gguf):
    r = kernelgpt_cmd("chat", "--model", tiny_gguf, "--template", "chatml", "--max-tokens", 3,
                      input="hello\n")
    assert r.returncode == 0, r.stderr


def test_generate_says_when_the_reply_is_cut(tiny_gguf):
    r = kernelgpt_cmd("generate", "--model", tiny_gguf, "--prompt", "a", "--max-tokens", 3,
                      "--temperature", 0, "--threads", 1)
    assert r.returncode == 0, r.stderr
    if "cut at" in r.stderr:  # unless a stop token came first
        assert "[text cut at 3 tokens: --max-new-tokens]" in r.stderr
