"""kernelgpt serve: the model behind an OpenAI-compatible HTTP API (kernelgpt/serve.py).

    kernelgpt serve                                   # SmolLM2 on 127.0.0.1:8000
    kernelgpt serve --model file.gguf --port 8080 --api-key "$KEY" --host 0.0.0.0
"""
from __future__ import annotations

import sys

from ..llama import load_model
from ..sampling import SamplingConfig
from ._common import add_sampling_arguments, add_threads_argument, positive_int
from .generate import sampling_settings


def add_arguments(p) -> None:
    p.add_argument("--model", default="smollm2",
                   help="'smollm2' (kernelgpt fetch smollm2), a .gguf path or a checkpoint "
                        "directory written by kernelgpt train")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (0.0.0.0 exposes it: set --api-key)")
    p.add_argument("--port", type=int, default=8000, help="the TCP port")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on the /v1 routes")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients send and /v1/models lists (default: the file's)")
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                   help="sequences decoded together, one KV cache each")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests that may wait for a free sequence; more get 503")
    p.add_argument("--prefill-chunk", type=positive_int, default=256, metavar="N",
                   help="prompt tokens prefilled per step (a long prompt shares the steps)")
    p.add_argument("--max-body", type=positive_int, default=1 << 20, metavar="BYTES",
                   help="the largest request body; larger gets 413")
    p.add_argument("--weights", choices=["quantized", "fp32", "bf16"], default="quantized",
                   help="quantized: as stored in the GGUF; fp32: dequantized; bf16: rounded")
    p.add_argument("--max-context", type=positive_int, default=None, metavar="N",
                   help="a shorter context than the model's: smaller KV caches")
    p.add_argument("--kv-dtype", choices=["float16", "float32"], default=None,
                   help="the KV caches' dtype (default: float16 with quantized weights)")
    p.add_argument("--template", default=None, metavar="NAME|FILE|JINJA",
                   help="the chat template (default: the model file's)")
    add_sampling_arguments(p)  # the defaults a request's temperature / top_p replace
    add_threads_argument(p)


def main(args) -> int:
    from ..serve import serve
    if args.max_queue < 0:
        raise ValueError(f"--max-queue must be >= 0, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    sampling = SamplingConfig(**sampling_settings(args))
    model = load_model(args.model, weights=args.weights, max_context=args.max_context,
                       template=args.template, kv_dtype=args.kv_dtype)
    if args.host not in ("127.0.0.1", "localhost", "::1") and args.api_key is None:
        print(f"kernelgpt serve: warning: listening on {args.host} without --api-key",
              file=sys.stderr)
    print(f"kernelgpt serve: {model.name} on http://{args.host}:{args.port}/v1 "
          f"(batch {args.max_batch}, context {model.context_length} tokens)", file=sys.stderr)
    serve(model, host=args.host, port=args.port, api_key=args.api_key,
          max_batch=args.max_batch, max_queue=args.max_queue, max_body=args.max_body,
          prefill_chunk=args.prefill_chunk, model_name=args.model_name, sampling=sampling)
    return 0
