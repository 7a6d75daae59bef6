"""kernelgpt serve (kernelgpt/serve.py): the real server on a free loopback port, talked to with
the official `openai` client (and raw HTTP where the client would refuse to send): greedy text
equal to model.generate's, streaming, stop strings, usage counts, concurrent requests batched,
every error case (400, 401, 413, 503, unknown route), a client that disconnects mid-stream, and
`kernelgpt serve` itself as a process."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from smollm2_files import gguf_path

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

GGUF = gguf_path()
pytestmark = pytest.mark.skipif(GGUF is None, reason="SmolLM2 GGUF not fetched: kernelgpt fetch smollm2")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def model():
    from kernelgpt.llama import load_model
    return load_model(GGUF)


class Server:
    """create_app(model, **kw) served by uvicorn in a thread, on a free port."""

    def __init__(self, model, **kw):
        from kernelgpt.serve import create_app
        self.app = create_app(model, **kw)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.01)

    def client(self, api_key="none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kw)

    def raw(self, path, body=None, headers=None, method=None):
        """(status, parsed JSON) of one HTTP request; body: bytes or a JSON-able object."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def health(self):
        return self.raw("/health")[1]

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def server(model):
    s = Server(model, max_batch=4)
    yield s
    s.stop()


def test_completion_greedy_equals_generate(server, model):
    prompt = "The three primary colors are"
    r = server.client().completions.create(model=model.name, prompt=prompt, max_tokens=24,
                                           temperature=0)
    assert r.choices[0].text == model.generate(prompt, max_tokens=24, temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason in ("length", "stop")
    n = len(model.tokenizer.encode(prompt))
    assert r.usage.prompt_tokens == n and r.usage.total_tokens == n + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 24


def test_chat_greedy_stream_and_usage(server, model):
    want = model.create_chat_completion(QUESTION, max_tokens=32, temperature=0)
    client = server.client()
    r = client.chat.completions.create(model=model.name, messages=QUESTION, max_tokens=32,
                                       temperature=0)
    assert r.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(model.encode_chat(QUESTION)) == want["usage"]["prompt_tokens"]
    assert r.usage.completion_tokens == want["usage"]["completion_tokens"]
    assert r.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    chunks = list(client.chat.completions.create(model=model.name, messages=QUESTION,
                                                 max_tokens=32, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == r.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_stop_strings_and_sampling_fields(server, model):
    client = server.client()
    full = client.completions.create(model=model.name, prompt="Count: 1, 2, 3,", max_tokens=20,
                                     temperature=0).choices[0].text
    assert " 5" in full
    r = client.completions.create(model=model.name, prompt="Count: 1, 2, 3,", max_tokens=20,
                                  temperature=0, stop=[" 5", "never"])
    assert r.choices[0].text == full[:full.index(" 5")] and r.choices[0].finish_reason == "stop"
    stream = client.completions.create(model=model.name, prompt="Count: 1, 2, 3,", max_tokens=20,
                                       temperature=0, stop=" 5", stream=True)
    assert "".join(c.choices[0].text for c in stream) == r.choices[0].text
    a, b = (client.chat.completions.create(model=model.name, messages=QUESTION, max_tokens=12,
                                           temperature=1.0, top_p=0.95, seed=7)
            for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content  # the seed repeats


def test_penalties_logit_bias_and_llama_cpp_fields(server, model):
    """The OpenAI penalties and logit_bias, and llama.cpp's top_k / min_p / typical_p /
    repeat_penalty: the same text as model.generate with the same settings."""
    client = server.client()
    prompt = "List the colors of the rainbow:"
    greedy = model.generate(prompt, max_tokens=12, temperature=0)
    first = model.tokenizer.encode(greedy)[0]
    settings = dict(frequency_penalty=1.5, presence_penalty=0.5, logit_bias={first: -100})
    expected = model.generate(prompt, max_tokens=12, temperature=0, **settings)
    r = client.completions.create(model=model.name, prompt=prompt, max_tokens=12, temperature=0,
                                  frequency_penalty=1.5, presence_penalty=0.5,
                                  logit_bias={str(first): -100})
    assert r.choices[0].text == expected != greedy
    assert first not in model.tokenizer.encode(expected)
    extra = dict(top_k=20, min_p=0.05, typical_p=0.9, repeat_penalty=1.3)
    r = client.completions.create(model=model.name, prompt=prompt, max_tokens=12,
                                  temperature=0.8, seed=3, extra_body=extra)
    extra["repetition_penalty"] = extra.pop("repeat_penalty")
    assert r.choices[0].text == model.generate(prompt, max_tokens=12, temperature=0.8, seed=3,
                                               **extra)


def test_concurrent_requests_are_batched_and_each_equals_its_run_alone(server, model):
    prompts = [f"Question {i}: why is the sky blue? Answer:" for i in range(6)]
    alone = [model.generate(p, max_tokens=16, temperature=0) for p in prompts]
    steps = server.health()["steps"]
    results = [None] * len(prompts)

    def ask(i):
        results[i] = server.client().completions.create(
            model=model.name, prompt=prompts[i], max_tokens=16, temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone
    # 6 requests x (1 prefill + 15 decode) would be ~96 steps one at a time; batched, fewer
    assert server.health()["steps"] - steps < 6 * 16


def test_models_and_health(server, model):
    ids = [m.id for m in server.client().models.list()]
    assert ids == [model.name]
    h = server.health()
    assert h["status"] == "ok" and h["slots"] == 4


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": QUESTION, "temperature": 5}, "temperature"),
    ({"messages": QUESTION, "temperature": "hot"}, "temperature"),
    ({"messages": QUESTION, "top_p": 0}, "top_p"),
    ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
    ({"messages": QUESTION, "max_tokens": 2.5}, "max_tokens"),
    ({"messages": QUESTION, "n": 2}, "n"),
    ({"messages": QUESTION, "stop": [1]}, "stop"),
    ({"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": QUESTION, "stream": "yes"}, "stream"),
    ({"messages": QUESTION, "model": "gpt-4"}, "model"),
    ({"messages": QUESTION, "frequency_penalty": 2.5}, "frequency_penalty"),
    ({"messages": QUESTION, "presence_penalty": "x"}, "presence_penalty"),
    ({"messages": QUESTION, "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"messages": QUESTION, "logit_bias": {"10000000": 1}}, "logit_bias"),
    ({"messages": QUESTION, "logit_bias": {"5": 101}}, "logit_bias"),
    ({"messages": QUESTION, "logit_bias": [1]}, "logit_bias"),
    ({"messages": QUESTION, "typical_p": 0}, "typical_p"),
    ({"messages": QUESTION, "top_k": -1}, "top_k"),
    ({"messages": QUESTION, "tools": [{"type": "function"}]}, "tools"),
])
def test_bad_fields_get_400_in_the_api_shape(server, body, param):
    status, err = server.raw("/v1/chat/completions", body)
    assert status == 400, err
    assert err["error"]["param"] == param and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"]


def test_malformed_requests(server, model):
    for body in (b"{not json", b"\xff\xfe", b"[1, 2]", b""):
        status, err = server.raw("/v1/completions", body)
        assert status == 400 and "error" in err, (body, err)
    status, err = server.raw("/v1/completions", {"prompt": ""})
    assert status == 400 and err["error"]["param"] == "prompt"
    status, err = server.raw("/v1/nothing", {"prompt": "a"})
    assert status == 404 and "error" in err
    status, err = server.raw("/v1/completions", method="GET")
    assert status == 405 and "error" in err
    with pytest.raises(openai.BadRequestError, match="model_not_found|does not exist"):
        server.client().completions.create(model="nope", prompt="a", max_tokens=1)
    assert server.health()["status"] == "ok"  # still alive after all of it


def test_prompt_longer_than_the_context_body_limit_and_queue(model):
    s = Server(model, context=64, max_body=4096, max_batch=1, max_queue=0)
    try:
        with pytest.raises(openai.BadRequestError) as e:
            s.client().completions.create(model=model.name, prompt="word " * 100, max_tokens=4)
        assert e.value.status_code == 400 and e.value.body["code"] == "context_length_exceeded"
        status, err = s.raw("/v1/completions", {"prompt": "x" * 5000})
        assert status == 413 and err["error"]["code"] == "request_too_large"
        # one long stream holds the only slot; with no queue, the next request gets 503
        stream = s.client().completions.create(model=model.name, prompt="Once upon a time",
                                               max_tokens=40, temperature=0, stream=True)
        first = next(iter(stream))
        assert first.choices[0].text is not None
        status, err = s.raw("/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        assert status == 503 and err["error"]["code"] == "server_busy", err
        rest = "".join(c.choices[0].text for c in stream)
        assert first.choices[0].text + rest
        status, _ = s.raw("/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        assert status == 200
    finally:
        s.stop()


def test_api_key(model):
    s = Server(model, api_key="s3cret", max_batch=1)
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        with pytest.raises(openai.AuthenticationError):
            s.client("s3cre").completions.create(model=model.name, prompt="a", max_tokens=1)
        assert s.raw("/v1/models")[0] == 401
        assert [m.id for m in s.client("s3cret").models.list()] == [model.name]
        assert s.raw("/health")[0] == 200  # health stays open
    finally:
        s.stop()


def test_a_client_that_disconnects_frees_its_sequence(server, model):
    import http.client
    essay = [{"role": "user", "content": "Write a 3000-word essay on the history of Rome."}]
    body = {"model": model.name, "messages": essay, "max_tokens": 4000, "temperature": 0,
            "stream": True}
    dropped = server.health()["dropped"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    got = [resp.fp.readline() for _ in range(6)]
    assert any(line.startswith(b"data: ") for line in got)
    assert server.health()["running"] == 1
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
    conn.close()
    deadline = time.time() + 20
    while server.health()["running"]:
        assert time.time() < deadline, "the disconnected sequence was not freed"
        time.sleep(0.05)
    assert server.health()["dropped"] == dropped + 1
    r = server.client().completions.create(model=model.name, prompt="Hi", max_tokens=2)
    assert r.usage.completion_tokens >= 1


def test_kernelgpt_serve_command(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "kernelgpt", "serve", "--model", str(GGUF),
                             "--port", str(port), "--max-batch", "2", "--max-context", "256"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    assert json.loads(r.read())["slots"] == 2
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()
                time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model=client.models.list().data[0].id,
                                           messages=QUESTION, max_tokens=8, temperature=0)
        assert "Paris" in r.choices[0].message.content
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "Traceback" not in out, out


def test_scheduler_chunked_prefill_and_joining_mid_flight(model):
    """The scheduler alone (no HTTP): prompts prefilled 7 tokens per step while others decode,
    requests that arrive while others run; each greedy text equals model.generate's."""
    from kernelgpt.sampling import Sampler, SamplingConfig
    from kernelgpt.serve import Request, Scheduler
    prompts = ["The history of the Roman Empire begins with the founding of Rome, and",
               "List three fruits:", "def fibonacci(n):"]
    want = [model.generate(p, max_tokens=12, temperature=0) for p in prompts]
    sched = Scheduler(model, max_batch=2, prefill_chunk=7, context=256)
    try:
        reqs = []
        for i, p in enumerate(prompts):
            ids = model.tokenizer.encode(p)
            reqs.append(sched.submit(Request(ids, 12, Sampler(SamplingConfig(temperature=0)), [])))
            if i == 0:
                time.sleep(0.05)  # the next ones join while the first runs
        for r in reqs:
            assert r.finished.wait(60)
        texts = ["".join(v for k, v in r.received if k == "text") for r in reqs]
        assert texts == want
        assert all(r.received[-1][0] == "done" for r in reqs)
        assert sched.load()["running"] == 0 and sorted(sched.free) == [0, 1]
    finally:
        sched.close()
