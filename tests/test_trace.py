"""kernelgpt.trace and `kernelgpt trace`: the numbers of the page equal the model's (the pieces
equal encode, the last position's logits equal forward's, the greedy tokens equal generate's),
and the page works in a real browser (headless Chromium: the pieces, one heatmap per head, the
bars recomputed from the stored logits as the sampler computes them, no console error, a
screenshot)."""
import base64
import html.parser
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kernelgpt.llama import load_model
from kernelgpt.sampling import filtered_distribution
from kernelgpt.trace import bpe_steps, collect, render_html, write_html

sys.path.insert(0, os.path.dirname(__file__))
from smollm2_files import gguf_path  # noqa: E402


def _logits(data):
    return np.frombuffer(base64.b64decode(data["final"]["logits_b64"]), "<f4")


def _attention(layer):
    H, T, S = layer["attention_shape"]
    return np.frombuffer(base64.b64decode(layer["attention_b64"]), "<u2").reshape(H, T, S) / 65535


def test_bpe_steps_walk_the_merges():
    ranks = {bytes([i]): i for i in range(256)}
    for pair in (b"lo", b"low", b"er", b"lower"):
        ranks[pair] = len(ranks)
    steps = bpe_steps(b"lowest", ranks)
    assert steps[0] == [b"l", b"o", b"w", b"e", b"s", b"t"]
    assert steps[1] == [b"lo", b"w", b"e", b"s", b"t"] and steps[-1] == [b"low", b"e", b"s", b"t"]
    assert bpe_steps(b"lower", ranks)[-1] == [b"lower"]
    assert bpe_steps(b"", ranks) == [[]]


@pytest.fixture(scope="module")
def shipped():
    return load_model("shakespeare-char")


def test_the_trace_is_the_models_own_pass(shipped):
    prompt = "ROMEO:\nWhat light"
    data = collect(prompt, shipped, max_new_tokens=6)
    tok, gpt = shipped.tokenizer, shipped.gpt
    ids = tok.encode(prompt)
    assert data["tokens"]["ids"] == ids and data["chat"] is False
    assert [i for p in data["tokens"]["pieces"] for i in p["ids"]] == ids
    ref = gpt.logits(np.asarray([ids]))[0, -1]
    got = _logits(data)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    c = gpt.config
    assert len(data["layers"]) == c.n_layer + 1
    for layer in data["layers"][1:]:
        a = _attention(layer)
        assert a.shape == (c.n_head, len(ids), len(ids))
        np.testing.assert_allclose(a.sum(-1), 1.0, atol=5e-4)   # rows of weights (uint16 steps)
        assert np.abs(np.triu(a, 1)).max() == 0                  # causal
        assert len(layer["residual_norms"]) == len(ids)
    # the logit lens after the last block is the model's own prediction
    assert data["layers"][-1]["lens"][0][0] == int(np.argmax(ref))
    steps = data["generation"]["steps"]
    greedy = shipped.generate(prompt, max_tokens=6, temperature=0)
    assert data["generation"]["text"] == greedy
    assert [s["kv_bytes"] for s in steps] == sorted(s["kv_bytes"] for s in steps)
    assert all(0 < s["p_model"] <= 1 and s["p"] == 1.0 for s in steps)  # greedy: p = 1
    assert data["positions"]["kind"] == "learned" and len(data["positions"]["norms"]) == len(ids)
    names = {k[0] for k in data["timing"]["kernels"]}
    assert {"attention", "linear"} <= names


def test_sampled_generation_follows_the_seed(shipped):
    a = collect("JULIET:", shipped, 5, temperature=0.9, top_k=20, seed=3)
    b = collect("JULIET:", shipped, 5, temperature=0.9, top_k=20, seed=3)
    assert a["generation"]["text"] == b["generation"]["text"]
    assert a["final"]["sampling"] == {"temperature": 0.9, "top_k": 20, "top_p": 1.0,
                                      "min_p": 0.0, "seed": 3}


def test_bad_input_is_refused(shipped):
    with pytest.raises(ValueError, match="non-empty"):
        collect("", shipped)
    with pytest.raises(ValueError, match="exceed the model's context"):
        collect("a" * 120, shipped, max_new_tokens=20)
    with pytest.raises(ValueError, match="max_new_tokens"):
        collect("a", shipped, max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        collect("a", shipped, temperature=-1)


def test_page_embeds_the_data_safely(shipped, tmp_path):
    data = collect("ROMEO:", shipped, max_new_tokens=1)
    data["prompt"] = "</script><b>x"  # (a vocabulary with these characters could hold them)
    page = render_html(data)
    assert page.count("</script>") == 2  # the data's own "</" is escaped
    path = write_html(data, tmp_path / "t.html")
    assert path.read_text(encoding="utf-8") == page


@pytest.mark.skipif(gguf_path() is None, reason="SmolLM2 not fetched (kernelgpt fetch smollm2)")
def test_smollm2_in_its_chat_template():
    tm = load_model(str(gguf_path()))
    data = collect("What is gravity?", tm, max_new_tokens=3)
    assert data["chat"] is True
    ids = tm.encode_chat([{"role": "user", "content": "What is gravity?"}])
    assert data["tokens"]["ids"] == list(ids)
    pieces = data["tokens"]["pieces"]
    assert any(p.get("special") for p in pieces)
    gravity = next(p for p in pieces if p["text"] == " gravity")
    assert len(gravity["steps"]) > 3 and len(gravity["steps"][0]) == len(" gravity")
    ref = tm.gpt.logits(np.asarray([ids]))[0, -1]
    got = _logits(data)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert data["positions"]["kind"] == "rope"
    assert len(data["layers"]) == 31 and _attention(data["layers"][1]).shape[0] == 9
    assert data["generation"]["steps"][0]["text"] == tm.tokenizer.decode([int(np.argmax(ref))])


def test_cli_writes_the_page(tmp_path):
    out = tmp_path / "page.html"
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "trace", "ROMEO:", "--model", "shipped",
                        "--html", str(out), "--max-new-tokens", "3"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and out.exists() and "trace-data" in out.read_text()
    r = subprocess.run([sys.executable, "-m", "kernelgpt", "trace", "", "--model", "shipped",
                        "--html", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "non-empty" in r.stderr and "Traceback" not in r.stderr


# ---- in a real browser --------------------------------------------------------------------------

def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _Dom(html.parser.HTMLParser):
    """The elements the test reads from the rendered page."""

    def __init__(self):
        super().__init__()
        self.pieces, self.heatmaps, self.bars, self.ready = [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if "piece" in cls:
            self.pieces.append(a.get("data-ids"))
        if tag == "canvas" and "heatmap" in cls and "data-head" in a:
            self.heatmaps.append((int(a["data-layer"]), int(a["data-head"]), a.get("width")))
        if "bar" in cls:
            self.bars.append((int(a["data-token"]), float(a["data-p"])))
        if tag == "body" and a.get("data-ready") == "1":
            self.ready = True


def _render(chromium, page, fragment, tmp_path, screenshot=None):
    url = page.resolve().as_uri() + fragment
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    args = base + (["--window-size=1200,2400", f"--screenshot={screenshot}"] if screenshot
                   else ["--dump-dom"])
    r = subprocess.run(args + [url], capture_output=True, text=True, timeout=120)
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    dom = _Dom()
    dom.feed(r.stdout)
    return dom, console, r


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_the_page_in_headless_chromium(shipped, tmp_path):
    chromium = _chromium()
    data = collect("ROMEO:\nBut soft", shipped, max_new_tokens=4)
    page = write_html(data, tmp_path / "trace.html")
    dom, console, r = _render(chromium, page, "#temperature=0.8&top_k=12", tmp_path)
    assert dom.ready, r.stderr[-3000:]
    assert any("kernelgpt trace: ready" in line for line in console), console
    assert not [line for line in console if "error" in line.lower() or "uncaught" in line.lower()]
    # the prompt's pieces, one heatmap per layer and head
    assert [list(map(int, p.split(","))) for p in dom.pieces] == \
        [p["ids"] for p in data["tokens"]["pieces"]]
    c = shipped.gpt.config
    assert sorted((l, h) for l, h, _ in dom.heatmaps) == \
        [(l, h) for l in range(c.n_layer) for h in range(c.n_head)]
    assert all(w and int(w) > 1 for _, _, w in dom.heatmaps)  # drawn
    # the bars: the sampler's own distribution for those settings
    probs = filtered_distribution(_logits(data), temperature=0.8, top_k=12)
    assert len(dom.bars) == 12
    for token, p in dom.bars:
        assert abs(p - probs[token]) < 1e-6 * max(p, 1e-3), (token, p, probs[token])
    # moving a slider moves the bars
    other, _, _ = _render(chromium, page, "#temperature=1.6&top_p=0.5&min_p=0.05", tmp_path)
    probs2 = filtered_distribution(_logits(data), temperature=1.6, top_p=0.5, min_p=0.05)
    assert other.bars and other.bars != dom.bars
    for token, p in other.bars:
        assert abs(p - probs2[token]) < 1e-6 * max(p, 1e-3)
    greedy, _, _ = _render(chromium, page, "#temperature=0", tmp_path)
    assert greedy.bars == [(int(np.argmax(_logits(data))), 1.0)]
    shot = tmp_path / "trace.png"
    _render(chromium, page, "", tmp_path, screenshot=shot)
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
