"""`kernelgpt serve`: the model behind an OpenAI-compatible HTTP API.

    kernelgpt serve --model smollm2 --port 8000
    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Hi!"}]}'

Two parts, in two threads:

- ``Scheduler`` owns the model. Its thread runs steps: a request that has arrived takes a free
  slot (one KV cache each; the slot whose cache shares the longest prefix with the prompt, so
  a client resending a conversation prefills only the new turn), then one chunk of at most
  ``prefill_chunk`` prompt tokens is prefilled, then one token of every sequence past its
  prefill is decoded, all of them in one native call (GPT.batch_decoder: each weight byte read
  once per step for the whole batch). A request joins at the next step and leaves when it ends
  (continuous batching); a long prompt is prefilled a chunk per step, so the others keep getting
  tokens meanwhile. Each request keeps its own sampler (seed), stop strings and token limit,
  through generate._Sequence, the loop model.generate uses: greedy text equals generate()'s.
- ``create_app`` is the HTTP side (Starlette, served by uvicorn): it checks a request, hands
  it to the scheduler and relays the text as it comes (server-sent events with stream=true).
  Native calls release the GIL, so /health and new requests are answered while the model runs.

Errors take the OpenAI shape, ``{"error": {"message", "type", "param", "code"}}``: 400 for
malformed JSON or fields, an unknown model or a prompt the context cannot hold, 401 for a
missing or wrong API key, 413 for a body over ``max_body`` bytes, 503 when ``max_queue``
requests already wait. A client that disconnects frees its sequence at the next step.
Needs the optional extra: pip install "kernelgpt[serve]".
"""
from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections import deque
from typing import List, Optional

import numpy as np

from .chat import normalize_messages
from .generate import GenerationStats, _encode, _Sequence
from .sampling import Sampler, sampling_config

__all__ = ["Scheduler", "QueueFull", "create_app", "serve", "APIError"]


class QueueFull(RuntimeError):
    """The scheduler already holds max_queue waiting requests."""


class APIError(Exception):
    """An error for the client: HTTP status, OpenAI error type, message, param and code."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 code: Optional[str] = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


# ---- the scheduler: continuous batching over one model -------------------------------------

class Request:
    """One completion in flight: its prompt ids and settings, its place in the scheduler, and
    the events the HTTP side reads ("text", piece) ... ("done", GenerationStats) or
    ("error", message)."""

    def __init__(self, ids: List[int], max_tokens: int, sampler: Sampler, stop: List[str],
                 loop: Optional[asyncio.AbstractEventLoop] = None, constraint=None):
        self.ids, self.max_tokens, self.sampler, self.stop = list(ids), max_tokens, sampler, stop
        self.constraint = constraint  # structured.Constraint (response_format), or None
        self.stats = GenerationStats()
        self.loop = loop
        self.events: "asyncio.Queue | None" = asyncio.Queue() if loop is not None else None
        self.received: list = []  # the events, without an event loop (tests, scripts)
        self.finished = threading.Event()
        self.cancelled = False  # set by the client's side; the scheduler drops it next step
        self.slot: Optional[int] = None
        self.pos: Optional[int] = None  # prompt tokens in the cache so far
        self.seq: Optional[_Sequence] = None  # after the prefill
        self.token: Optional[int] = None  # the next token to feed
        self.t_start = time.perf_counter()

    def emit(self, kind: str, value) -> None:
        if self.loop is not None:
            try:
                self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
            except RuntimeError:  # the event loop has closed (server shutting down)
                pass
        else:
            self.received.append((kind, value))
        if kind != "text":
            self.finished.set()


class Scheduler:
    """Runs requests on `model` (a TextModel) in a thread of its own: see the module docstring.
    max_batch: sequences decoded together (one KV cache each, `context` tokens: default the
    model's); max_queue: requests that may wait for a slot (submit raises QueueFull beyond)."""

    def __init__(self, model, max_batch: int = 8, max_queue: int = 64, prefill_chunk: int = 256,
                 context: Optional[int] = None):
        for name, v in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
        self.model, self.gpt = model, model.gpt
        context = model.context_length if context is None else int(context)
        if not 1 <= context <= model.context_length:
            raise ValueError(f"context must be in [1, {model.context_length}], got {context}")
        self.caches = [model.new_cache(context) for _ in range(max_batch)]
        self.capacity = min(self.gpt.config.block_size, context)
        self.fast = self.gpt.device == "cpu" and all(self.gpt.supports_fast_decode(c)
                                                      for c in self.caches)
        self.decoder = self.gpt.batch_decoder(self.caches) if self.fast else None
        self.max_queue, self.prefill_chunk = max_queue, prefill_chunk
        self.stop_tokens = set(int(t) for t in model.stop_tokens)
        self.waiting: deque = deque()
        self.running: List[Request] = []
        self.free = list(range(max_batch))
        self.steps = 0
        self.dropped = 0  # requests whose client went away before they ended
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="kernelgpt-scheduler", daemon=True)
        self._thread.start()

    @property
    def max_batch(self) -> int:
        return len(self.caches)

    def load(self) -> dict:
        with self._cv:
            return {"running": len(self.running), "waiting": len(self.waiting),
                    "slots": self.max_batch, "steps": self.steps, "dropped": self.dropped}

    def submit(self, request: Request) -> Request:
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if len(self.waiting) - len(self.free) >= self.max_queue:  # beyond the free slots
                raise QueueFull(f"{len(self.waiting)} requests are already waiting "
                                f"(max_queue {self.max_queue})")
            self.waiting.append(request)
            self._cv.notify()
        return request

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()
        for r in list(self.running) + list(self.waiting):
            r.emit("error", "the server is shutting down")

    # -- the thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self.waiting and not self.running:
                    self._cv.wait()
                if self._closed:
                    return
                self.waiting = deque(r for r in self.waiting if not r.cancelled)
                while self.free and self.waiting:
                    r = self.waiting.popleft()
                    r.slot = self._take_slot(r.ids)
                    self.running.append(r)
            try:
                self._step()
            except Exception as e:  # noqa: BLE001 - a failed step must not kill the server
                for r in list(self.running):
                    r.emit("error", f"generation failed: {type(e).__name__}: {e}")
                    self._release(r)

    def _take_slot(self, ids: List[int]) -> int:
        best = max(self.free, key=lambda s: self.caches[s].common_prefix(ids))
        self.free.remove(best)
        return best

    def _release(self, r: Request) -> None:
        with self._cv:
            if r in self.running:
                self.running.remove(r)
                self.free.append(r.slot)

    def _step(self) -> None:
        self.steps += 1
        for r in list(self.running):
            if r.cancelled:
                r.stats.stop_reason = r.stats.stop_reason or "interrupted"
                self._release(r)
                self.dropped += 1
                r.finished.set()
        prefilling = next((r for r in self.running if r.seq is None), None)
        if prefilling is not None:
            self._prefill_chunk(prefilling)
        feed = [r for r in self.running if r.seq is not None and r.token is not None]
        if not feed:
            return
        t = time.perf_counter()
        if self.decoder is not None:
            rows = self.decoder.step([r.token for r in feed], [r.slot for r in feed])
        else:  # a device, or the numpy backend: one sequence at a time
            rows = [np.asarray(self.gpt.forward_cached(np.array([[r.token]]),
                                                       self.caches[r.slot])[0]) for r in feed]
        for r, row in zip(feed, rows):
            r.stats.decode_seconds += time.perf_counter() - t
            self._advance(r, row)

    def _prefill_chunk(self, r: Request) -> None:
        cache = self.caches[r.slot]
        if r.pos is None:  # the first chunk: keep what the slot's cache already holds
            reuse = cache.common_prefix(r.ids)
            if reuse == len(r.ids):  # all of it: recompute the last token for its logits
                reuse -= 1
            cache.truncate(reuse)
            r.pos = r.stats.cached_tokens = reuse
            r.stats.prompt_tokens = len(r.ids)
        end = min(len(r.ids), r.pos + self.prefill_chunk)
        t = time.perf_counter()
        logits = self.gpt.prefill(np.asarray([r.ids[r.pos:end]]), cache)
        r.stats.prefill_seconds += time.perf_counter() - t
        r.pos = end
        if end == len(r.ids):
            sample = r.sampler.fast if self.fast else r.sampler
            r.seq = _Sequence(self.model.tokenizer, r.ids, r.max_tokens, sample, self.stop_tokens,
                              r.stop, r.stats, self.capacity, slide=False,
                              constraint=r.constraint)
            self._advance(r, np.asarray(logits))

    def _advance(self, r: Request, logits) -> None:
        if r.cancelled:
            return
        token, text = r.seq.step(logits)
        if text:
            r.emit("text", text)
        if token is None:
            tail = r.seq.finish()
            if tail:
                r.emit("text", tail)
            self._release(r)
            r.emit("done", r.stats)
        else:
            r.token = token


# ---- the HTTP side ------------------------------------------------------------------------

_MAX_STOP = 4  # as OpenAI's API


def _int_field(body: dict, name: str, lo: int, hi: Optional[int] = None) -> Optional[int]:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise APIError(400, f"'{name}' must be an integer, got {json.dumps(v)}", name)
    if v < lo or (hi is not None and v > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise APIError(400, f"'{name}' must be {bound}, got {v}", name)
    return v


def _number_field(body: dict, name: str, lo: float, hi: float) -> Optional[float]:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise APIError(400, f"'{name}' must be a number in [{lo}, {hi}], got {json.dumps(v)}", name)
    return float(v)


def _response_format_field(body: dict, model):
    """The structured.Constraint for response_format ({"type": "json_object"} or
    {"type": "json_schema", "json_schema": {"schema": ...}}), or None for text."""
    fmt = body.get("response_format")
    if fmt is None or fmt == {"type": "text"}:
        return None
    try:
        from .structured import Constraint
        return Constraint.for_model(model, response_format=fmt)
    except ImportError as e:
        raise APIError(400, f"'response_format' needs the structured extra on the server: {e}",
                       "response_format") from None
    except (ValueError, TypeError) as e:
        raise APIError(400, f"invalid 'response_format': {e}", "response_format") from None


_MAX_LOGIT_BIAS = 1024  # entries (OpenAI's API takes up to 300)


def _logit_bias_field(body: dict, n_vocab: int) -> Optional[dict]:
    """{"token id": bias in [-100, 100]} as the OpenAI API sends it."""
    bias = body.get("logit_bias")
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise APIError(400, "'logit_bias' must be an object mapping token ids to numbers",
                       "logit_bias")
    if len(bias) > _MAX_LOGIT_BIAS:
        raise APIError(400, f"'logit_bias' takes at most {_MAX_LOGIT_BIAS} tokens, got "
                            f"{len(bias)}", "logit_bias")
    out = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < n_vocab):
            raise APIError(400, f"'logit_bias' keys must be token ids in [0, {n_vocab}), got "
                                f"{json.dumps(key)}", "logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not -100 <= value <= 100:
            raise APIError(400, f"'logit_bias' values must be numbers in [-100, 100], got "
                                f"{json.dumps(value)}", "logit_bias")
        out[int(key)] = float(value)
    return out


def _stop_field(body: dict) -> List[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise APIError(400, "'stop' must be a string or an array of strings", "stop")
    if len(stop) > _MAX_STOP:
        raise APIError(400, f"'stop' takes at most {_MAX_STOP} strings, got {len(stop)}", "stop")
    return [s for s in stop if s]


class _Endpoint:
    """What /v1/chat/completions and /v1/completions share: the request's fields checked, the
    Request built and submitted, the response (one JSON object, or an event stream)."""

    def __init__(self, app_state, chat: bool):
        self.state, self.chat = app_state, chat

    def build(self, body: dict, loop) -> tuple:
        st = self.state
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        name = body.get("model")
        if name is not None and name not in st.model_names:
            raise APIError(400, f"the model {name!r} does not exist; this server has "
                                f"{st.model_names[0]!r}", "model", "model_not_found")
        _int_field(body, "n", 1, 1)  # one choice per request
        for unsupported in ("tools", "functions"):
            if body.get(unsupported) not in (None, [], {}, {"type": "text"}):
                raise APIError(400, f"'{unsupported}' is not supported by this server", unsupported)
        if body.get("logprobs") not in (None, False, 0):
            raise APIError(400, "'logprobs' is not supported by this server", "logprobs")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise APIError(400, "'stream' must be a boolean", "stream")
        opts = body.get("stream_options") or {}
        if not isinstance(opts, dict):
            raise APIError(400, "'stream_options' must be an object", "stream_options")
        settings = {"temperature": _number_field(body, "temperature", 0.0, 2.0),
                    "top_p": _number_field(body, "top_p", 0.0, 1.0),
                    "frequency_penalty": _number_field(body, "frequency_penalty", -2.0, 2.0),
                    "presence_penalty": _number_field(body, "presence_penalty", -2.0, 2.0),
                    "logit_bias": _logit_bias_field(body, st.model.config.vocab_size),
                    # llama.cpp's server's extensions, the same names
                    "top_k": _int_field(body, "top_k", 0),
                    "min_p": _number_field(body, "min_p", 0.0, 1.0),
                    "typical_p": _number_field(body, "typical_p", 0.0, 1.0),
                    "repetition_penalty": _number_field(body, "repeat_penalty", 0.0, 10.0)}
        for name in ("top_p", "typical_p"):
            if settings[name] == 0.0:
                raise APIError(400, f"'{name}' must be > 0", name)
        if settings["repetition_penalty"] == 0.0:
            raise APIError(400, "'repeat_penalty' must be > 0", "repeat_penalty")
        seed = _int_field(body, "seed", -2 ** 63, 2 ** 64 - 1)
        if seed is not None:
            seed %= 2 ** 64  # any 64-bit int, as the API takes (the same seed, the same text)
        max_tokens = _int_field(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", 1)
        model = st.model
        if self.chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise APIError(400, "'messages' must be a non-empty array", "messages")
            try:
                ids = model.encode_chat(normalize_messages(messages))
            except (TypeError, ValueError, KeyError) as e:
                raise APIError(400, f"invalid 'messages': {e}", "messages") from None
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str) or not prompt:
                raise APIError(400, "'prompt' must be a non-empty string", "prompt")
            ids = _encode(model.tokenizer, prompt)  # as model.generate encodes a prompt
            if not ids:
                raise APIError(400, "'prompt' encodes to no tokens", "prompt")
        room = st.scheduler.capacity - len(ids)
        if room < 1:
            raise APIError(400, f"the prompt is {len(ids)} tokens; this model's context is "
                                f"{st.scheduler.capacity} tokens, with room for at least one "
                                "more", "messages" if self.chat else "prompt",
                           "context_length_exceeded")
        if max_tokens is None:
            max_tokens = room if self.chat else 16  # OpenAI's defaults: the context, or 16
        config = sampling_config(settings, st.sampling)
        request = Request(ids, max_tokens, Sampler(config, seed=seed), _stop_field(body), loop,
                          _response_format_field(body, model))
        return request, stream, bool(opts.get("include_usage"))

    def meta(self) -> dict:
        kind = "chatcmpl" if self.chat else "cmpl"
        return {"id": f"{kind}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": self.state.model_names[0], "system_fingerprint": self.state.fingerprint}

    def choice(self, text: Optional[str], finish: Optional[str], delta: bool) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if delta:
            return {"index": 0, "delta": {} if text is None else {"content": text},
                    "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text},
                "logprobs": None, "finish_reason": finish}

    @staticmethod
    def usage(stats: GenerationStats) -> dict:
        n = len(stats.new_tokens)
        return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": n,
                "total_tokens": stats.prompt_tokens + n}


def _error_response(err: APIError):
    from starlette.responses import JSONResponse
    return JSONResponse(err.body(), status_code=err.status)


def create_app(model, *, api_key: Optional[str] = None, max_batch: int = 8,
               max_queue: int = 64, max_body: int = 1 << 20, prefill_chunk: int = 256,
               context: Optional[int] = None, model_name: Optional[str] = None, sampling=None):
    """The Starlette app serving `model` (a TextModel): /v1/chat/completions,
    /v1/completions, /v1/models and /health. Its scheduler starts with the app and stops at
    shutdown (``app.state.scheduler``). sampling: the SamplingConfig a request's temperature
    and top_p replace (default sampling.DEFAULT_SAMPLING, the model's recommendation)."""
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route
    except ImportError as e:
        raise ImportError("kernelgpt serve needs Starlette and uvicorn: "
                          "pip install \"kernelgpt[serve]\"") from e
    if api_key is not None and not (isinstance(api_key, str) and api_key):
        raise ValueError("api_key must be a non-empty string or None")
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ValueError(f"max_body must be a positive int, got {max_body!r}")

    class State:
        pass

    st = State()
    st.model = model
    st.model_names = [model_name or model.name, model.name]
    st.fingerprint = f"kernelgpt-{model.gpt.kv_dtype}"
    st.sampling = sampling
    st.scheduler = None
    st.created = int(time.time())
    chat_ep, completion_ep = _Endpoint(st, chat=True), _Endpoint(st, chat=False)

    async def read_json(request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            raise APIError(413, f"the request body is {declared} bytes, over the limit of "
                                f"{max_body}", code="request_too_large")
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > max_body:
                raise APIError(413, f"the request body is over the limit of {max_body} bytes",
                               code="request_too_large")
        try:
            return json.loads(bytes(data))
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None

    async def completions(request, endpoint: _Endpoint):
        try:
            body = await read_json(request)
            loop = asyncio.get_running_loop()
            req, stream, include_usage = endpoint.build(body, loop)
            try:
                st.scheduler.submit(req)
            except QueueFull as e:
                raise APIError(503, f"the server is busy: {e}; try again later",
                               code="server_busy", kind="server_error") from None
        except APIError as e:
            return _error_response(e)
        except ClientDisconnect:
            return JSONResponse({}, status_code=499)
        meta = endpoint.meta()
        obj = "chat.completion" if endpoint.chat else "text_completion"
        if stream:
            return StreamingResponse(_events(req, endpoint, meta, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        pieces = []
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(req.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        req.cancelled = True
                        return JSONResponse({}, status_code=499)
                    continue
                if kind == "text":
                    pieces.append(value)
                elif kind == "error":
                    return _error_response(APIError(500, value, kind="server_error"))
                else:
                    text = "".join(pieces)
                    return JSONResponse(dict(meta, object=obj, choices=[
                        endpoint.choice(text, value.finish_reason, delta=False)],
                        usage=endpoint.usage(value)))
        finally:
            req.cancelled = req.cancelled or not req.finished.is_set()

    async def _events(req: Request, endpoint: _Endpoint, meta: dict, include_usage: bool):
        obj = "chat.completion.chunk" if endpoint.chat else "text_completion"

        def sse(payload) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        try:
            if endpoint.chat:
                first = endpoint.choice("", None, delta=True)
                first["delta"] = {"role": "assistant", "content": ""}
                yield sse(dict(meta, object=obj, choices=[first]))
            while True:
                kind, value = await req.events.get()
                if kind == "text":
                    yield sse(dict(meta, object=obj, choices=[endpoint.choice(value, None, True)]))
                elif kind == "error":
                    yield sse(APIError(500, value, kind="server_error").body())
                    break
                else:
                    usage = endpoint.usage(value)
                    last = endpoint.choice(None if endpoint.chat else "", value.finish_reason, True)
                    yield sse(dict(meta, object=obj, choices=[last], usage=usage))
                    if include_usage:
                        yield sse(dict(meta, object=obj, choices=[], usage=usage))
                    break
            yield "data: [DONE]\n\n"
        finally:  # the client went away (the task is cancelled) or the stream ended
            req.cancelled = req.cancelled or not req.finished.is_set()

    async def chat_completions(request):
        return await completions(request, chat_ep)

    async def text_completions(request):
        return await completions(request, completion_ep)

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": st.model_names[0], "object": "model", "created": st.created,
             "owned_by": "kernelgpt"}]})

    async def health(request):
        return JSONResponse(dict(status="ok", model=st.model_names[0], **st.scheduler.load()))

    class Guard:
        """Pure ASGI middleware: the API key on /v1 routes, and a JSON 500 (never a trace)."""

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            if api_key is not None and scope["path"].startswith("/v1"):
                headers = dict(scope.get("headers") or [])
                auth = headers.get(b"authorization", b"").decode("latin-1")
                given = auth[7:] if auth[:7].lower() == "bearer " else ""
                if not hmac.compare_digest(given.encode(), api_key.encode()):
                    err = APIError(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                   code="invalid_api_key")
                    return await _error_response(err)(scope, receive, send)
            started = False

            async def send_tracked(message):
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)
            try:
                await self.app(scope, receive, send_tracked)
            except Exception as e:  # noqa: BLE001 - the client gets the error shape, not a trace
                if not started:
                    err = APIError(500, f"internal error: {type(e).__name__}", kind="server_error")
                    await _error_response(err)(scope, receive, send)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        st.scheduler = Scheduler(model, max_batch=max_batch, max_queue=max_queue,
                                 prefill_chunk=prefill_chunk, context=context)
        app.state.scheduler = st.scheduler
        try:
            yield
        finally:
            st.scheduler.close()

    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", text_completions, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"])]
    app = Starlette(routes=routes, middleware=[Middleware(Guard)], lifespan=lifespan)

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        msg = "no such route" if status == 404 else getattr(exc, "detail", "error")
        return JSONResponse(APIError(status, f"{request.method} {request.url.path}: {msg}").body(),
                            status_code=status)

    app.add_exception_handler(404, not_found)
    app.add_exception_handler(405, not_found)
    return app


def serve(model, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **kwargs):
    """Runs the server until interrupted (uvicorn). kwargs: create_app's."""
    try:
        import uvicorn
    except ImportError as e:
        raise ImportError("kernelgpt serve needs Starlette and uvicorn: "
                          "pip install \"kernelgpt[serve]\"") from e
    app = create_app(model, **kwargs)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
