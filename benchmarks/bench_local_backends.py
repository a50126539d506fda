"""Local backends side by side: our transformers path, our llama.cpp backend, plain llama-cpp-python.

news-riddle few-shot on Gemma 3 270M (the packaged GGUF, Q4_K_M; transformers runs the converted
model at ``--dtype``, default the settings' ``auto``, recorded), the first ``-n`` (16) bundled
test articles, greedy, 64 new tokens, the task's stop strings, the same prompts and budget on
every side:

- ``ours-transformers``: ``load_chain("news-riddle", "few-shot", backend="transformers")``,
  one ``chain.batch`` (``LocalModel.generate``: batched, stitched prefill);
- ``ours-llama.cpp``: the same chain with ``backend="llama.cpp"`` (prompts ordered so shared
  prefixes follow each other; the KV cache of the shared part is reused; greedy decoding runs
  ``--llama-batch`` sequences per decode step, default the settings' ``llamacpp_batch``);
- ``plain-llama.cpp``: the peer, ``llama_cpp.Llama.create_completion`` called directly, one prompt
  at a time in input order with its own prefix cache, on the prompts our llama.cpp run sent
  (captured from its callbacks), with the same ``Llama`` settings (context, ``n_threads``,
  ``n_threads_batch``, ``n_batch``).

On ``benchmarks/harness.py``: each side lives in its own process (``harness.ChildSide``: loaded
once, its own peak RSS), the sides interleaved over the repeats; both llama.cpp sides start each
run from an empty cache (``reset()``). The figure is articles/s; quality per side is the valid
count (the output parses as a news riddle) and the texts identical to plain llama-cpp-python's.

``--strategy lora`` runs the ``lora`` strategy instead (the adapter of ``--adapter``, default
the full-recipe adapter in ``$LLMAPPS_HOME/adapters/news-riddle-gemma-3-270m``): transformers
with PEFT, our llama.cpp backend with the adapter converted to a llama.cpp LoRA file, and plain
llama-cpp-python given the same file (``Llama(lora_path=)``). Its prompts share no prefix.

::

    python benchmarks/bench_local_backends.py                    # example_selection=order
    python benchmarks/bench_local_backends.py --selection similarity \
        --out benchmarks/results/bench_local_backends_similarity.json
    python benchmarks/bench_local_backends.py --strategy lora \
        --out benchmarks/results/bench_local_backends_lora.json
    python benchmarks/bench_local_backends.py --quick            # 1 article, 4 tokens

``--quick`` still needs the packaged Gemma GGUF (there is no tiny GGUF model): it is a slow test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gemma-3-270m"


def _articles(n: int, split: str = "test") -> list[dict[str, Any]]:
    from chains.news_data import samples

    return [{k: a[k] for k in ("id", "title", "text")} for a in samples(split)[:n]]


class _Prompts:
    """A callback handler that keeps the completion prompts a chain sends, in call order."""

    def __new__(cls) -> Any:
        from langchain_core.callbacks import BaseCallbackHandler

        class Handler(BaseCallbackHandler):
            def __init__(self) -> None:
                self.prompts: list[str] = []
                self.tokens = 0

            def on_llm_start(self, serialized: Any, prompts: list[str], **kw: Any) -> None:
                self.prompts.extend(prompts)

            def on_llm_end(self, response: Any, **kw: Any) -> None:
                usage = (response.llm_output or {}).get("token_usage") or {}
                self.tokens += int(usage.get("completion_tokens", 0))

        return Handler()


def _dtype_loaded() -> str | None:
    """The dtype of the transformers model this process loaded (the chain's), if any."""
    from llmapps.models.pool import default_pool

    pool = default_pool()
    for key in pool.loaded():
        model = getattr(pool.peek(key), "model", None)
        if getattr(model, "dtype", None) is not None:
            return str(model.dtype).removeprefix("torch.")
    return None


def make_ours(backend: str, args: argparse.Namespace) -> Callable[[], harness.Run]:
    """Our chain on ``backend``, loaded; a function doing one run over the articles."""
    from llmapps.apps import load_chain
    from llmapps.models.llamacpp import load_gguf_model

    lora = _lora_file(args) if args.strategy == "lora" else None
    if backend == "llama.cpp":
        # cached: the chain gets this one (the lora strategy names its model base+adapter)
        load_gguf_model(MODEL, n_threads=args.threads, lora_path=lora, batch_size=args.llama_batch)
    else:
        import torch

        torch.set_num_threads(args.threads)
    opts: dict[str, Any] = {
        "backend": backend,
        "max_new_tokens": args.max_new_tokens,
        "temperature": 0.0,
        "structured": args.structured,
    }
    if args.strategy == "lora":
        opts["adapter"] = str(args.adapter)
    else:
        opts.update(base_model=MODEL, example_selection=args.selection)
    chain = load_chain("news-riddle", args.strategy, **opts)
    arts = _articles(args.n, args.split)

    def run() -> harness.Run:
        reused = 0
        if backend == "llama.cpp":
            lm = load_gguf_model(MODEL, lora_path=lora)
            lm.reset()  # no head start from before
            reused = lm.reused_tokens
        handler = _Prompts()
        rows = chain.batch(arts, config={"callbacks": [handler]})
        info: dict[str, Any] = {"completion_tokens": handler.tokens}
        if backend == "llama.cpp":
            lm = load_gguf_model(MODEL, lora_path=lora)
            ids = [lm.tokenize(p) for p in handler.prompts]
            counts = [len(t) for t in ids]
            info.update(
                dtype="GGUF Q4_K_M",
                prompt_tokens_mean=round(sum(counts) / len(counts), 1),
                prefilled_tokens=sum(counts) - (lm.reused_tokens - reused),
                shared_prefix_tokens=_common_prefix(ids),
                prompts=handler.prompts,
                stop=_stop(),
            )
        else:
            info["dtype"] = _dtype_loaded()
        return harness.Run(len(arts), texts=[r["raw"] for r in rows], info=info)

    return run


def _common_prefix(ids: list[list[int]]) -> int:
    """Leading tokens every prompt has."""
    n = min(len(t) for t in ids)
    for j in range(n):
        if any(t[j] != ids[0][j] for t in ids):
            return j
    return n


def _lora_file(args: argparse.Namespace) -> Path:
    """The llama.cpp LoRA file of ``--adapter`` for the packaged base (converted once)."""
    from llmapps.models.gguf_lora import lora_gguf_for
    from llmapps.models.packaged import gguf_path

    return lora_gguf_for(args.adapter, gguf_path(MODEL))


def _stop() -> list[str]:
    from prompts import load_task

    return list(load_task("news_riddle/one_step").stop)


def _settings_batch() -> int:
    from llmapps.settings import get_settings

    return get_settings().generation.llamacpp_batch


def make_plain(args: argparse.Namespace) -> Callable[[], harness.Run]:
    """Plain llama-cpp-python with our backend's settings, on the prompts our run sent."""
    import llama_cpp

    from llmapps.models.llamacpp import read_gguf_header
    from llmapps.models.native_probe import check_llamacpp
    from llmapps.models.packaged import gguf_path
    from llmapps.settings import get_settings

    spec = json.loads(Path(args.prompts_from).read_text())
    prompts, stop = spec["prompts"], spec["stop"]
    check_llamacpp()  # the peer runs in this process: probe the build first, as our backend does
    path = str(gguf_path(MODEL))
    trained = read_gguf_header(path).context_length  # the context our backend allocates
    n_ctx = min(get_settings().generation.llamacpp_context, trained or 1 << 30)
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
        lora_path=str(_lora_file(args)) if args.strategy == "lora" else None,
    )

    # what its own prefix cache leaves to prefill, input order: all but the tokens a prompt
    # shares with the one before (one token at least); counted here, outside the timed run
    ids = [llm.tokenize(p.encode("utf-8"), add_bos=True, special=True) for p in prompts]
    prefilled = len(ids[0]) + sum(
        len(b) - min(_common_prefix([a, b]), len(b) - 1) for a, b in itertools.pairwise(ids)
    )

    def run() -> harness.Run:
        llm.reset()
        texts, tokens = [], 0
        for p in prompts:
            r = llm.create_completion(p, max_tokens=args.max_new_tokens, temperature=0.0, stop=stop)
            texts.append(r["choices"][0]["text"])
            tokens += int(r["usage"]["completion_tokens"])
        return harness.Run(
            len(prompts),
            texts=texts,
            info={
                "completion_tokens": tokens,
                "dtype": "GGUF Q4_K_M",
                "n_ctx": n_ctx,
                "prefilled_tokens": prefilled,
            },
        )

    return run


def child(args: argparse.Namespace) -> int:
    """One side's process: load, then run whenever the harness asks."""
    if args.side == "plain-llama.cpp":
        return harness.serve_side(make_plain(args))
    backend, _, dtype = args.side.removeprefix("ours-").partition("-")
    if dtype:  # ours-transformers-<dtype>: this process loads the model at that dtype
        os.environ["LLMAPPS_DTYPE"] = dtype
    return harness.serve_side(make_ours(backend, args))


def _measure(args: argparse.Namespace, sides: list[harness.Side], reference: str) -> Any:
    """Articles per second of ``sides`` against ``reference``'s texts, valid where they parse."""
    from chains.news_riddle import parse_fields

    return harness.measure_with(
        args,
        sides,
        harness.Metric("articles/s"),
        valid=lambda t: bool(parse_fields(t)["valid"]),
        reference=reference,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=16, help="bundled articles of --split")
    ap.add_argument("--split", choices=["test", "validation"], default="test")
    ap.add_argument(
        "--structured",
        choices=["auto", "on", "off"],
        default="auto",
        help="constrained decoding on every side of ours (off: free text, the model's own format)",
    )
    ap.add_argument(
        "--dtypes",
        default=None,
        help="comma list (e.g. float32,bfloat16): one transformers side per dtype, interleaved, "
        "with our llama.cpp backend as the reference and no plain llama-cpp-python side",
    )
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default=None, help="transformers side (default: settings' auto)")
    ap.add_argument(
        "--llama-batch",
        type=int,
        default=None,
        help="sequences our llama.cpp backend decodes together (default: settings' llamacpp_batch)",
    )
    ap.add_argument("--selection", choices=["order", "similarity"], default="order")
    ap.add_argument("--strategy", choices=["few-shot", "lora"], default="few-shot")
    ap.add_argument("--adapter", type=Path, help="lora: the adapter folder (default: full recipe)")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--prompts-from", help=argparse.SUPPRESS)
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.max_new_tokens = 1, 4
    if args.strategy == "lora" and args.adapter is None:
        from llmapps.settings import get_settings

        args.adapter = get_settings().home / "adapters" / "news-riddle-gemma-3-270m"
    if args.side:
        return child(args)

    name = {"few-shot": "bench_local_backends", "lora": "bench_local_backends_lora"}[args.strategy]
    if args.selection == "similarity" and args.strategy == "few-shot":
        name += "_similarity"
    if args.dtypes:
        name += "_dtypes"
    config = {
        "model": MODEL,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "threads": args.threads,
        "dtype": args.dtypes or args.dtype or "auto",
        "split": args.split,
        "structured": args.structured,
        "example_selection": args.selection if args.strategy == "few-shot" else None,
        "greedy": True,
        **({"strategy": "lora", "adapter": str(args.adapter)} if args.strategy == "lora" else {}),
    }
    common = [
        "-n",
        str(args.n),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--threads",
        str(args.threads),
        "--selection",
        args.selection,
        "--strategy",
        args.strategy,
        "--split",
        args.split,
        "--structured",
        args.structured,
        *(["--adapter", str(args.adapter)] if args.adapter else []),
        *(["--llama-batch", str(args.llama_batch)] if args.llama_batch else []),
    ]
    env = {**os.environ, **({"LLMAPPS_DTYPE": args.dtype} if args.dtype else {})}

    def cmd(side: str, *extra: str) -> list[str]:
        return [sys.executable, __file__, "--side", side, *common, *extra]

    if args.dtypes:
        return _dtype_run(args, name, config, cmd, env, argv)
    llama_batch = args.llama_batch or _settings_batch()
    config["llama_batch"] = llama_batch
    with tempfile.TemporaryDirectory(prefix="bench-local-backends-") as tmp:
        spec = Path(tmp) / "prompts.json"
        ours_llama = harness.ChildSide(cmd("ours-llama.cpp"), env=env)
        plain = harness.ChildSide(cmd("plain-llama.cpp", "--prompts-from", str(spec)), env=env)
        ours_hf = harness.ChildSide(cmd("ours-transformers"), env=env)

        def llama_run() -> harness.Run:
            r = ours_llama()
            prompts, stop = r.info.pop("prompts"), r.info.pop("stop")
            if not spec.exists():  # the peer's process starts on the prompts ours sent first
                spec.write_text(json.dumps({"prompts": prompts, "stop": stop}))
            return r

        sides = [
            harness.Side(
                "ours-llama.cpp",
                llama_run,
                role="ours",
                threads=args.threads,
                batch_size=llama_batch,
                note=f"{llama_batch} sequences per decode step (llmapps.models.llamacpp_batch)",
            ),
            harness.Side(
                "plain-llama.cpp",
                plain,
                threads=args.threads,
                batch_size=1,
                note="llama_cpp.Llama.create_completion, one prompt at a time",
            ),
            harness.Side(
                "ours-transformers",
                ours_hf,
                role="ours",
                dtype=args.dtype,
                threads=args.threads,
            ),
        ]
        try:
            m = _measure(args, sides, reference="plain-llama.cpp")
        finally:
            for c in (ours_llama, plain, ours_hf):
                c.close()
        inputs = json.loads(spec.read_text())["prompts"]
    for sr in m.sides:
        sr.side.inputs = inputs
    harness.finish(
        name,
        m,
        args,
        config=config,
        what=f"news-riddle {args.strategy} on {MODEL}, {args.n} test articles, "
        f"{args.max_new_tokens} new tokens: our two backends vs plain llama-cpp-python",
        argv=argv,
    )
    return 0


def _dtype_run(
    args: argparse.Namespace,
    name: str,
    config: dict[str, Any],
    cmd: Callable[..., list[str]],
    env: dict[str, str],
    argv: list[str] | None,
) -> int:
    """One transformers side per dtype of ``--dtypes`` and our llama.cpp backend (the GGUF's Q4
    kernels) as the texts' reference, each in its own process, interleaved."""

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    children = [harness.ChildSide(cmd("ours-llama.cpp"), env=env)]
    children += [harness.ChildSide(cmd(f"ours-transformers-{d}"), env=env) for d in dtypes]

    def llama_run() -> harness.Run:
        r = children[0]()
        for key in ("prompts", "stop"):  # kept by the three-backend run only, for its peer
            r.info.pop(key)
        return r

    sides = [
        harness.Side("ours-llama.cpp", llama_run, role="ours", threads=args.threads, dtype="Q4_K_M")
    ]
    sides += [
        harness.Side(f"ours-transformers-{d}", c, role="ours", dtype=d, threads=args.threads)
        for d, c in zip(dtypes, children[1:], strict=True)
    ]
    try:
        m = _measure(args, sides, reference="ours-llama.cpp")
    finally:
        for c in children:
            c.close()
    harness.finish(
        name,
        m,
        args,
        config=config,
        what=f"news-riddle {args.strategy} on {MODEL}, {args.n} {args.split} articles, "
        f"{args.max_new_tokens} new tokens, structured {args.structured}: transformers at "
        f"{', '.join(dtypes)} vs our llama.cpp backend (Q4_K_M)",
        argv=argv,
    )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
