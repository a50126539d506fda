"""Where the physical limit is: this CPU's measured peaks, and each generation side's time floor.

Two parts, one results file (``results/physical_limits.json``):

1. **Peaks, measured here** with the threads the benchmarks use (2): matrix multiplies
   (``torch.nn.functional.linear``, fp32 and bf16, int8 via ``torch._int_mm`` where the build has
   it) at the shapes Gemma 3 270M runs (prefill of a 2,048-token prompt through q/gate/down, a
   decode step of 16 rows, the 262k x 640 output head), and memory bandwidth (a 1 GiB copy and a
   1 GiB read, and the bf16 head read as a matrix-vector product). Each is the best of several
   timed rounds of at least ``--min-s`` seconds: a peak, what the hardware gave at best.
2. **Floors**: for each side of ``bench_generation_gemma.json`` and ``bench_local_backends.json``
   the work it did (prompt tokens, tokens generated, rows decoded together) turned into a time
   floor, a roofline: prefill = its FLOPs (2 x non-embedding params x prompt tokens, plus
   attention, plus the head for the last token) at the dtype's peak; decode = per step the larger
   of its FLOPs at peak and its bytes (every weight read once, the output head included, plus the
   KV cache of each row) at the read bandwidth. ``fraction`` = floor / measured median (1.0 would
   be at the limit). Two floors per side: ``task`` (the 16 rows decoded in one batch, the shared
   prompt prefix, where known, prefilled once: the least any side could do) and ``as_run`` (the
   side's own batch size, every prompt token prefilled).

The GGUF sides' bytes are the file's own tensor sizes (Q4_K_M blocks; the token embedding, tied,
is the head); their compute floor uses the best of the measured peaks, since llama.cpp's
quantized kernels are not torch's (an optimistic floor for them). The floor ignores what is not
a matmul or a weight read (norms, rotary, sampling, Python), which is part of what it shows.

::

    flock /work/notes/s5/heavy.lock nice -n 5 env OMP_NUM_THREADS=2 \\
        python benchmarks/physical_limits.py            # measure, then the floors of the results
    python benchmarks/physical_limits.py --floors-only  # recompute floors with the stored peaks
    python benchmarks/physical_limits.py --quick        # small shapes: checks it runs
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness

GEMMA = "gemma-3-270m"
PROMPT = 2048  # the default prompt budget: a prefill matmul's rows
ROWS = 16  # the benchmarks' articles, decoded together by a batched side


# ---------------------------------------------------------------- peaks


def _best_rate(work: float, fn: Callable[[], Any], min_s: float, rounds: int) -> dict[str, float]:
    """``work`` units per second of ``fn``: best and median of ``rounds`` timed rounds, each a
    loop of calls lasting at least ``min_s`` (after one untimed call)."""
    fn()
    rates = []
    for _ in range(rounds):
        calls, started = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            secs = time.perf_counter() - started
            if secs >= min_s:
                break
        rates.append(work * calls / secs)
    return {"best": max(rates), "median": statistics.median(rates)}


def matmul_shapes(quick: bool) -> dict[str, tuple[int, int, int]]:
    """(rows, in, out) of the linear layers Gemma 3 270M runs, named by where they run."""
    if quick:
        return {"prefill q_proj": (64, 64, 128), "decode head": (4, 64, 1024)}
    return {
        "prefill q_proj (2048 x 640 -> 1024)": (PROMPT, 640, 1024),
        "prefill gate/up (2048 x 640 -> 2048)": (PROMPT, 640, 2048),
        "prefill down (2048 x 2048 -> 640)": (PROMPT, 2048, 640),
        "decode gate/up, 16 rows (16 x 640 -> 2048)": (ROWS, 640, 2048),
        "decode head, 16 rows (16 x 640 -> 262144)": (ROWS, 640, 262144),
        "decode head, 1 row (1 x 640 -> 262144)": (1, 640, 262144),
    }


def measure_matmul(quick: bool, min_s: float, rounds: int) -> dict[str, Any]:
    """GFLOP/s of ``linear`` per dtype and shape (int8: ``torch._int_mm``, GOP/s)."""
    import torch

    out: dict[str, Any] = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        rows = {}
        for label, (m, k, n) in matmul_shapes(quick).items():
            x = torch.randn(m, k).to(dtype)
            w = torch.randn(n, k).to(dtype) * 0.02
            with torch.inference_mode():
                r = _best_rate(
                    2 * m * k * n / 1e9,
                    functools.partial(torch.nn.functional.linear, x, w),
                    min_s,
                    rounds,
                )
            rows[label] = {k2: round(v, 1) for k2, v in r.items()}
        out[name] = {
            "gflops": rows,
            "peak_gflops": max(r["best"] for r in rows.values()),
        }
    out["int8"] = _measure_int8(quick, min_s, rounds)
    return out


def _measure_int8(quick: bool, min_s: float, rounds: int) -> dict[str, Any]:
    import torch

    rows = {}
    for label, (m, k, n) in matmul_shapes(quick).items():
        if m < 17:  # _int_mm wants more than 16 rows
            continue
        a = torch.randint(-64, 64, (m, k), dtype=torch.int8)
        b = torch.randint(-64, 64, (k, n), dtype=torch.int8)
        try:
            r = _best_rate(
                2 * m * k * n / 1e9, functools.partial(torch._int_mm, a, b), min_s, rounds
            )
        except (RuntimeError, AttributeError) as err:
            return {"error": f"torch._int_mm on this build: {err}"}
        rows[label] = {k2: round(v, 1) for k2, v in r.items()}
    if not rows:
        return {"error": "no int8 shape measured"}
    return {"gops": rows, "peak_gops": max(r["best"] for r in rows.values())}


def measure_bandwidth(quick: bool, min_s: float, rounds: int) -> dict[str, Any]:
    """GB/s of a large copy (read + write counted) and a large read (a sum), and of the bf16
    output head read by a one-row ``linear`` (what a decode step does with it)."""
    import torch

    n = (2**20 if quick else 2**28) // 1  # float32 elements: 4 MiB quick, 1 GiB
    x = torch.ones(n)
    y = torch.empty_like(x)
    size = x.numel() * 4
    copy = _best_rate(2 * size / 1e9, lambda: y.copy_(x), min_s, rounds)
    read = _best_rate(size / 1e9, lambda: x.sum(), min_s, rounds)
    vocab = 1024 if quick else 262144
    head = torch.randn(vocab, 640).to(torch.bfloat16)
    v = torch.randn(1, 640).to(torch.bfloat16)
    with torch.inference_mode():
        gemv = _best_rate(
            head.numel() * 2 / 1e9, lambda: torch.nn.functional.linear(v, head), min_s, rounds
        )
    return {
        "copy_gbs": {k: round(val, 2) for k, val in copy.items()},
        "read_gbs": {k: round(val, 2) for k, val in read.items()},
        "head_gemv_bf16_gbs": {k: round(val, 2) for k, val in gemv.items()},
        "bytes": size,
        "read_peak_gbs": round(max(read["best"], copy["best"], gemv["best"]), 2),
    }


# ---------------------------------------------------------------- the model's costs


@dataclass
class ModelCost:
    """What one token costs Gemma-like decoder: parameters by kind and the attention's shape."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    windows: list[int | None]  # per layer: the sliding window, None for full attention
    linear_params: int  # non-embedding matmul weights (q, k, v, o, gate, up, down)
    head_params: int  # the output head (vocab x hidden)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelCost:
        h, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        d = cfg.get("head_dim") or h // heads
        inter, layers = cfg["intermediate_size"], cfg["num_hidden_layers"]
        per_layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * inter
        types = cfg.get("layer_types") or ["full_attention"] * layers
        window = cfg.get("sliding_window")
        return cls(
            layers=layers,
            hidden=h,
            heads=heads,
            kv_heads=kv,
            head_dim=d,
            intermediate=inter,
            vocab=cfg["vocab_size"],
            windows=[window if t == "sliding_attention" else None for t in types],
            linear_params=per_layer * layers,
            head_params=cfg["vocab_size"] * h,
        )

    def keys_seen(self, start: int, end: int, window: int | None) -> int:
        """Sum over query positions ``start..end-1`` of the keys each attends to (causal)."""
        if window is None:
            return (end * (end + 1) - start * (start + 1)) // 2
        return sum(min(i + 1, window) for i in range(start, end))

    def prefill_flops(self, tokens: int, start: int = 0) -> float:
        """Prefill of positions ``start..tokens-1`` (earlier ones cached): the linear layers, the
        attention (QK and PV), and the head for the last position only."""
        n = tokens - start
        attn = sum(
            4 * self.heads * self.head_dim * self.keys_seen(start, tokens, w) for w in self.windows
        )
        return 2.0 * self.linear_params * n + attn + 2.0 * self.head_params

    def kv_bytes(self, context: int, itemsize: float) -> float:
        """Bytes of one row's KV cache read by one decode step at ``context`` tokens."""
        keys = sum(min(context, w) if w else context for w in self.windows)
        return 2.0 * self.kv_heads * self.head_dim * keys * itemsize

    def decode_flops(self, rows: int, context: int) -> float:
        attn = sum(
            4 * self.heads * self.head_dim * (min(context, w) if w else context)
            for w in self.windows
        )
        return rows * (2.0 * (self.linear_params + self.head_params) + attn)


def hf_config(home: Path, model: str = GEMMA) -> dict[str, Any]:
    return dict(json.loads((home / "models" / model / "config.json").read_text()))


def gguf_weight_bytes(path: Path) -> dict[str, Any]:
    """Bytes a decode step reads from a GGUF file: every tensor but the token embedding (one row
    per token is looked up), plus the head (``output.weight``, or the tied embedding)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    embd = sizes.get("token_embd.weight", 0)
    head = sizes.get("output.weight", embd)
    body = sum(v for k, v in sizes.items() if k not in ("token_embd.weight", "output.weight"))
    return {
        "file": str(path),
        "body_bytes": body,
        "head_bytes": head,
        "head_type": types.get("output.weight", types.get("token_embd.weight")),
        "step_bytes": body + head,
    }


# ---------------------------------------------------------------- floors


@dataclass
class Work:
    """What a side did in one run."""

    prompt_tokens: list[int]
    completion_tokens: int
    rows_together: int  # rows decoded in one batch
    shared_prefix: int = 0  # leading tokens every prompt has (prefilled once in the task floor)
    prefilled: int | None = None  # prompt tokens the side says it ran (a reused cache skips some)


def floor_seconds(
    cost: ModelCost,
    work: Work,
    *,
    peak_gflops: float,
    read_gbs: float,
    weight_bytes: float,
    kv_itemsize: float,
    share_prefix: bool,
) -> dict[str, float]:
    """The roofline floor of ``work``: prefill at peak compute, then decode steps at the larger of
    compute and bytes. Decode of ``rows_together`` rows reads the weights once per step, for as
    many steps as the batch's mean row length (a lower bound on its longest)."""
    peak, bw = peak_gflops * 1e9, read_gbs * 1e9
    prefix = work.shared_prefix if share_prefix else 0
    flops = cost.prefill_flops(prefix) if prefix else 0.0
    flops += sum(cost.prefill_flops(t, start=prefix) for t in work.prompt_tokens)
    if not share_prefix and work.prefilled is not None:  # as run: only what the side prefilled
        flops *= work.prefilled / sum(work.prompt_tokens)
    prefill_s = flops / peak
    n = len(work.prompt_tokens)
    rows = max(1, min(work.rows_together, n))
    batches = -(-n // rows)
    steps = work.completion_tokens / n  # per row
    context = sum(work.prompt_tokens) / n + steps / 2
    decode_s = 0.0
    for b in range(batches):
        in_batch = min(rows, n - b * rows)
        per_step_bytes = weight_bytes + in_batch * cost.kv_bytes(int(context), kv_itemsize)
        per_step_flops = cost.decode_flops(in_batch, int(context))
        decode_s += steps * max(per_step_bytes / bw, per_step_flops / peak)
    return {
        "prefill_tflop": round(flops / 1e12, 3),
        "prefill_s": round(prefill_s, 3),
        "decode_steps": round(steps * batches, 1),
        "decode_gb_per_step": round(
            (weight_bytes + rows * cost.kv_bytes(int(context), kv_itemsize)) / 1e9, 3
        ),
        "decode_s": round(decode_s, 3),
        "total_s": round(prefill_s + decode_s, 3),
    }


def _side_work(doc: dict[str, Any], side: dict[str, Any]) -> tuple[Work, str]:
    """The work of a side of a results file in the harness's schema, and how it was read."""
    cfg, info = doc.get("config", {}), side.get("info") or {}
    n = int(side.get("inputs") or cfg.get("n") or ROWS)
    if cfg.get("prompt_tokens"):
        prompts = [int(t) for t in cfg["prompt_tokens"]]
        how = "prompt tokens per prompt from the config"
    else:
        mean = info.get("prompt_tokens_mean") or next(
            (s["info"].get("prompt_tokens_mean") for s in doc["sides"] if s.get("info")), None
        )
        if mean is None:
            raise ValueError(f"{doc['name']}: no prompt token counts recorded")
        prompts = [round(float(mean))] * n
        how = "prompt tokens: the recorded mean for every prompt"
    completion = info.get("completion_tokens") or statistics.median(side["work"])
    gguf = str(side.get("dtype") or "").startswith("GGUF")
    rows = side.get("batch_size") or (1 if gguf else n)
    if not side.get("batch_size"):
        how += f"; rows decoded together not recorded, taken as {rows}"
    # the shared prefix is the prompts' (one side may be the one that recorded it)
    shared = int(
        cfg.get("shared_prefix_tokens")
        or max(int((s.get("info") or {}).get("shared_prefix_tokens") or 0) for s in doc["sides"])
    )
    prefilled = info.get("prefilled_tokens")
    if prefilled is not None:
        how += f"; prefilled {prefilled} of the prompt tokens (the side's own count)"
    return Work(prompts, int(completion), int(rows), shared, prefilled), how


def side_floors(
    doc: dict[str, Any], cost: ModelCost, peaks: dict[str, Any], gguf: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Each side's measured median seconds per run against its two floors."""
    bw = peaks["bandwidth"]["read_peak_gbs"]
    mm = peaks["matmul"]
    best = max(
        mm["float32"]["peak_gflops"],
        mm["bfloat16"]["peak_gflops"],
        mm["int8"].get("peak_gops", 0.0),
    )
    out = []
    for side in doc["sides"]:
        dtype = str(side.get("dtype") or "")
        work, how = _side_work(doc, side)
        if dtype.startswith("GGUF"):
            if gguf is None:
                continue
            peak, wbytes, kv = best, float(gguf["step_bytes"]), 2.0
            peak_is = "the best measured peak (llama.cpp's kernels are its own)"
        else:
            key = "bfloat16" if "bfloat16" in dtype else "float32"
            size = 2.0 if key == "bfloat16" else 4.0
            peak, wbytes, kv = (
                mm[key]["peak_gflops"],
                (cost.linear_params + cost.head_params) * size,
                size,
            )
            peak_is = f"the measured {key} peak"
        common = {"peak_gflops": peak, "read_gbs": bw, "weight_bytes": wbytes, "kv_itemsize": kv}
        task = floor_seconds(
            cost,
            Work(
                work.prompt_tokens,
                work.completion_tokens,
                len(work.prompt_tokens),
                work.shared_prefix,
            ),
            share_prefix=True,
            **common,
        )
        as_run = floor_seconds(cost, work, share_prefix=False, **common)
        measured = statistics.median(side["seconds"])
        out.append(
            {
                "benchmark": doc["name"],
                "side": side["name"],
                "dtype": dtype,
                "measured_s": round(measured, 3),
                "work": asdict(work)
                | {"prompt_tokens": sum(work.prompt_tokens), "prompts": len(work.prompt_tokens)},
                "read": how,
                "peak": peak_is,
                "floor_task": task,
                "floor_as_run": as_run,
                "fraction_task": round(task["total_s"] / measured, 3),
                "fraction_as_run": round(as_run["total_s"] / measured, 3),
            }
        )
    return out


BENCHMARKS = ("bench_generation_gemma.json", "bench_local_backends.json")


def floors(peaks: dict[str, Any], home: Path, results: Path) -> list[dict[str, Any]]:
    """The floors of every side of the benchmarks' results files present in ``results``."""
    from llmapps.models.packaged import gguf_path

    cost = ModelCost.from_config(hf_config(home))
    try:
        gguf = gguf_weight_bytes(Path(gguf_path(GEMMA)))
    except Exception:  # no GGUF built: the llama.cpp sides are left out
        gguf = None
    out = []
    for name in BENCHMARKS:
        path = results / name
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        if doc.get("schema") != harness.SCHEMA:
            continue  # a pre-harness file: no per-side seconds to compare
        out.extend(side_floors(doc, cost, peaks, gguf))
    return out


def report(doc: dict[str, Any]) -> str:
    p = doc["peaks"]
    mm, bw = p["matmul"], p["bandwidth"]
    lines = [
        f"{doc['machine']['cpu']}, {doc['threads']} threads: peak fp32 "
        f"{mm['float32']['peak_gflops']:.0f} GFLOP/s, bf16 {mm['bfloat16']['peak_gflops']:.0f}, "
        f"int8 {mm['int8'].get('peak_gops', float('nan')):.0f} GOP/s; read "
        f"{bw['read_gbs']['best']:.1f} GB/s, copy {bw['copy_gbs']['best']:.1f} GB/s, "
        f"bf16 head gemv {bw['head_gemv_bf16_gbs']['best']:.1f} GB/s"
    ]
    for dt in ("float32", "bfloat16"):
        for label, r in mm[dt]["gflops"].items():
            lines.append(
                f"  {dt:<9} {label:<46} {r['best']:>8.1f} GFLOP/s (median {r['median']:.1f})"
            )
    for f in doc["floors"]:
        lines.append(
            f"  {f['benchmark']} / {f['side']}: measured {f['measured_s']:.2f} s; floor "
            f"{f['floor_task']['total_s']:.2f} s (task, {f['fraction_task']:.0%}), "
            f"{f['floor_as_run']['total_s']:.2f} s (as run, {f['fraction_as_run']:.0%})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the benchmarks' 2)")
    ap.add_argument("--min-s", type=float, default=0.4, help="seconds per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per figure (best kept)")
    ap.add_argument("--floors-only", action="store_true", help="reuse the stored peaks")
    ap.add_argument("--quick", action="store_true", help="small shapes and buffers: checks it runs")
    ap.add_argument("--results", type=Path, default=harness.RESULTS, help="where results files are")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.min_s, args.rounds = 0.01, 2
    out = harness.out_path("physical_limits", args)
    import torch

    from llmapps.settings import get_settings

    torch.set_num_threads(args.threads)
    if args.floors_only:
        prior = json.loads(out.read_text())
        peaks, measured_at = prior["peaks"], prior["peaks_measured"]
    else:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        load_before = harness._load_1m()
        peaks = {
            "matmul": measure_matmul(args.quick, args.min_s, args.rounds),
            "bandwidth": measure_bandwidth(args.quick, args.min_s, args.rounds),
            "load_1m_before": round(load_before, 2),
            "load_1m_after": round(harness._load_1m(), 2),
        }
        measured_at = started
    home = get_settings().home
    try:
        sides = floors(peaks, home, args.results)
    except FileNotFoundError as err:  # no Gemma config (a fresh home): peaks only
        print(f"no floors: {err}", file=sys.stderr)
        sides = []
    doc = {
        "name": "physical_limits",
        "what": "this CPU's measured matmul peaks and memory bandwidth, and each generation "
        "side's roofline floor against its measured time",
        "command": " ".join(["python", "benchmarks/physical_limits.py", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "peaks_measured": measured_at,
        "machine": harness.machine(),
        "versions": harness.versions(),
        "threads": args.threads,
        "peaks": peaks,
        "model": asdict(ModelCost.from_config(hf_config(home))) if sides else None,
        "floors": sides,
    }
    harness.write_result(out, doc)
    print(report(doc))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
