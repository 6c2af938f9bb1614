"""`llmaas engine` (one model behind the OpenAI API) and `llmaas serve` (a gateway and the built-in
model's engine in one process)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway import durations
from gateway.cli_generate import DEFAULT_MODEL

if TYPE_CHECKING:
    from gateway.gateway_server import Gateway
    from gateway.http import Router

API_KEY_ENV = "LLMAAS_API_KEY"
# The in-process engine's name in `llmaas serve`'s fleet; no socket is behind it.
LOCAL_ENGINE_URL = "http://in-process-engine"


def add_serve_parsers(commands: argparse._SubParsersAction) -> None:
    engine = commands.add_parser("engine", help="serve one model over the OpenAI-compatible API")
    engine.add_argument("--model", required=True, help="catalog name, .gguf file or Hugging Face folder")
    engine.add_argument("--port", type=int, required=True)
    engine.add_argument("--served-model-name", nargs="+", metavar="NAME",
                        help="names the API serves the model under (default: --model as given)")
    engine.add_argument("--api-key", default=os.environ.get("LLMAAS_ENGINE_API_KEY"),
                        help="a bearer token every /v1 and /internal request must carry (default: "
                             "$LLMAAS_ENGINE_API_KEY; none: open to whoever reaches the port)")
    engine.add_argument("--task", choices=["generate", "embed"], default="generate",
                        help="embed: answer /v1/embeddings only (a decoder used as an embedding model)")
    engine.add_argument("--pooling", choices=["last", "mean", "cls"],
                        help="--task embed: the last token's hidden state, the mean of all, or the first's "
                             "(default: the folder's sentence-transformers 1_Pooling config, else last; cls "
                             "for an encoder)")
    engine.add_argument("--matryoshka", action="store_true",
                        help="--task embed: the model is Matryoshka-trained (as Qwen3-Embedding is): answer any "
                             "`dimensions` up to its size (default: what its config.json says)")
    _add_common(engine, host="127.0.0.1")
    engine.set_defaults(run=run_engine)

    serve = commands.add_parser("serve", help=f"a gateway and an engine with the built-in model ({DEFAULT_MODEL})")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default=DEFAULT_MODEL, help=argparse.SUPPRESS)
    serve.add_argument("--no-auth", action="store_true",
                       help="accept requests without an API key (local experiments only)")
    serve.add_argument("--prompt-retention", type=_retention, metavar="DURATION",
                       help="keep each request's prompt in the audit trail this long (e.g. 90d), encrypted "
                            "with the key in LLMAAS_AUDIT_KEY (`llmaas audit new-key`); default: keep none")
    _add_common(serve, host="127.0.0.1")
    serve.set_defaults(run=run_serve)


def _retention(text: str) -> str:
    try:
        seconds = durations.seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the retention must be longer than zero")
    return text


def _add_common(p: argparse.ArgumentParser, host: str) -> None:
    p.add_argument("--host", default=host)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                   help="bfloat16 runs the C++ bf16 kernels (several times faster on CPU)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--max-num-seqs", type=int, default=64, help="most sequences decoded together")
    p.add_argument("--max-num-batched-tokens", type=int,
                   help="token budget of one engine step (default: 256 on CPU, 512 on GPUs)")
    p.add_argument("--max-model-len", type=int, help="longest prompt + output (default: the model's context)")
    p.add_argument("--kv-cache-mb", type=int, default=256, help="memory for the KV cache, in MiB")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="CUDA: size the KV cache to this share of GPU memory instead of --kv-cache-mb")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto",
                   help="dummy: random weights of the model's shapes, for speed tests (needs a Hugging Face folder)")
    p.add_argument("--no-prefix-caching", action="store_true", help="do not reuse cached prompt prefixes")
    p.add_argument("--no-quantized-decode", action="store_true",
                   help="CPU bf16: do not also keep a GGUF's Q4_1 linears for small decode steps (saves 0.625 "
                        "bytes a weight; those steps then read 3.2x the bytes; outputs are the same)")
    p.add_argument("--threads", type=int, help="CPU threads for the kernels (default: torch's)")


def run_engine(args: argparse.Namespace) -> int:
    return _serve_engine(args, with_gateway=False)


def run_serve(args: argparse.Namespace) -> int:
    return _serve_engine(args, with_gateway=True)


def _serve_engine(args: argparse.Namespace, with_gateway: bool) -> int:
    # Imported here so that `llmaas --help` does not pay for torch.
    import torch

    from engine.config import EngineConfig
    from engine.errors import EngineError
    from engine.loader.errors import ModelLoadError
    from gateway.engine_server import build_router, load_engine
    from gateway.http import run
    from gateway.metrics import RegistryCollector, ServingMetrics

    try:
        config = EngineConfig(dtype=getattr(torch, args.dtype), device=args.device, max_num_seqs=args.max_num_seqs,
                              max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
                              kv_cache_bytes=args.kv_cache_mb * 1024 * 1024,
                              gpu_memory_utilization=args.gpu_memory_utilization, load_format=args.load_format,
                              enable_prefix_caching=not args.no_prefix_caching, num_threads=args.threads,
                              quantized_decode=not args.no_quantized_decode,
                              task=getattr(args, "task", "generate"), pooling=getattr(args, "pooling", None),
                              matryoshka=getattr(args, "matryoshka", False))
        engine = load_engine(args.model, config)
    except (EngineError, ModelLoadError, ValueError) as exc:
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2
    try:
        names = getattr(args, "served_model_name", None) or [args.model]
        engine_metrics = ServingMetrics(engine)
        router = build_router(engine, names, engine_metrics, api_key=getattr(args, "api_key", None))
        startup = shutdown = connections = None
        if with_gateway:
            try:
                gateway = _local_gateway(names[0], router, require_auth=not args.no_auth,
                                         prompt_retention=args.prompt_retention,
                                         detokenize=functools.partial(engine.tokenizer.decode,
                                                                      skip_special_tokens=False))
            except ValueError as exc:  # LLMAAS_AUDIT_KEY, the tiers file, LLMAAS_DB_SYNC
                print(f"llmaas: error: {exc}", file=sys.stderr)
                return 2
            gateway.metrics.registry.register(RegistryCollector(engine_metrics.registry))
            router, startup, shutdown = gateway.router(), gateway.start, gateway.stop
            connections = gateway.metrics.connections
            if not _announce_key(gateway, args.no_auth):
                return 2
        print(f"llmaas: serving {', '.join(names)} at http://{args.host}:{args.port}/v1", flush=True)
        run(router, args.host, args.port, on_startup=startup, on_shutdown=shutdown, connections=connections)
    except OSError as exc:  # the port is taken, or the host is not ours
        print(f"llmaas: error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.shutdown()
    return 0


def _local_gateway(model: str, engine_router: Router, require_auth: bool, prompt_retention: str | None,
                   detokenize: Callable[[list[int]], str]) -> Gateway:
    from gateway.fleet.backend import LocalBackend
    from gateway.fleet.config import GatewayConfig, ModelEntry, TenancySection
    from gateway.gateway_server import Gateway

    config = GatewayConfig(models=[ModelEntry(name=model, hosts=[LOCAL_ENGINE_URL])],
                           tenancy=TenancySection(require_auth=require_auth, prompt_retention=prompt_retention))
    return Gateway(config, backend_for=lambda url: LocalBackend(engine_router, name=url),
                   detokenizers={model: detokenize})


def _announce_key(gateway: Gateway, no_auth: bool) -> bool:
    """One token for the local user: LLMAAS_API_KEY when set, else a fresh one printed once.
    False (after saying why) when LLMAAS_API_KEY cannot be a key."""
    if no_auth:
        print("llmaas: --no-auth: requests need no API key", flush=True)
        return True
    assert gateway.tenancy is not None
    try:
        secret, _ = gateway.tenancy.local_token(os.environ.get(API_KEY_ENV))
    except ValueError as exc:  # not usable as a key (too short, or posing as one made here)
        print(f"llmaas: error: {API_KEY_ENV}: {exc}", file=sys.stderr)
        return False
    if secret is None:
        print(f"llmaas: API key: the value of {API_KEY_ENV}", flush=True)
    else:
        print(f"llmaas: API key (shown once; set {API_KEY_ENV} to choose your own): {secret}", flush=True)
    return True
