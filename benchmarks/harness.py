"""The one harness every benchmark runs on: interleaved sides, counted repeats, recorded context.

A benchmark builds its **sides** (ours and the peers, each a callable doing one whole run and
returning a :class:`Run`: how much work it did and, where it generates text, the texts), then
calls :func:`measure`. The harness

- runs one warm-up round of every side, not counted, then ``repeats`` counted rounds, the sides
  interleaved (A B C A B C ...), so a change in machine load falls on every side alike;
- picks ``repeats`` itself when not told: 5 when every side's warm-up took under a minute, else 3
  (never fewer than 3);
- reports each figure (``metric``: a rate such as tokens/s, or a time per unit such as ms/query)
  as median and min-max over the counted rounds, and each ratio (every ``ours`` side against
  every other side) as median and min-max of the per-round ratios (paired by round, which is
  what interleaving buys);
- records per side its dtype, threads, batch size, the library versions, the inputs' hash, the
  1-minute load average before and after each run, and peak RSS;
- where a side returns texts, records quality: the valid count (``valid``) and how many texts are
  identical to the reference side's, and whether repeats gave the same texts. A ratio always
  carries both sides' quality; a side that generates text with a peer that does not is an error.

Peak RSS is sampled by a psutil thread (every 20 ms) over the side's runs, of this process or of
the process the side names (``Side.pid``: a server the side talks to); a side in its own process
(:class:`ChildSide`, which loads once and runs on request, so sides stay interleaved) reports its
process's ``ru_maxrss`` instead (``rss_method`` in the results says which). In-process sides
share what is already loaded (a model two sides use), so ``rss_growth_mb`` (the peak above where
the run started) is what a side adds; ``peak_rss_mb`` is the process's high-water mark during its
runs. A side may time only the part that counts (``Run.seconds``: training, not the model load).

Why not ``pyperf``: it is built for microbenchmarks: it spawns worker processes per benchmark,
calibrates loop counts and runs each benchmark's values to completion before the next, and its
comparison (``compare_to``) is between separate result files. Our sides are whole model runs of
seconds to minutes that share a loaded model; re-loading the model in every worker would cost more
than the run, calibration is meaningless for one run of minutes, and the A/B order is the point.
Its statistics (median, min-max) are a few lines. We take its ideas (warm-up, metadata: CPU model,
load, versions) and keep the clock injectable, so the statistics are tested on a fake clock.

Results are JSON in one schema (:func:`result_document`, ``SCHEMA``), written with
:func:`write_result` to ``benchmarks/results/<name>.json`` (``--quick`` runs write under
``benchmarks/results/quick/``, which git ignores). ``benchmarks/readme_table.py`` builds the
README's speed table from those files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
QUICK_RESULTS = RESULTS / "quick"
SCHEMA = 1
# Flags that decide which kernels run: a figure without them cannot be compared across machines.
CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
VERSIONED = (
    "llmapps",
    "torch",
    "transformers",
    "llama_cpp_python",
    "langchain-core",
    "langchain-huggingface",
    "langchain-openai",
    "faiss-cpu",
    "llama-index-core",
    "sentence-transformers",
)
LONG_RUN_S = 60.0  # a side whose warm-up takes this long gets 3 counted repeats, else 5
MIN_REPEATS = 3

Clock = Callable[[], float]


@dataclass
class Run:
    """What one call of a side did.

    Attributes:
        work: units of work done (output tokens, requests, queries); a rate is ``work / seconds``.
        texts: the texts generated, in input order, for sides that generate text.
        info: anything else the side wants kept from its last counted run; ``info["quality"]``
            is the quality of a side that generates no text (recall@10, cosine), and
            ``info["dtype"]`` the dtype of a side that learns it only when it loads.
        peak_rss_mb: the high-water mark of the side's own process, where it runs in one
            (:class:`ChildSide`); the harness's sampling of this process is then not used.
        seconds: where only part of a run counts (training, not the model load and evaluation
            around it), the side's own timing of that part; else the harness's clock decides.
    """

    work: float = 1.0
    texts: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float | None = None  # reported by a side in its own process (ru_maxrss)
    seconds: float | None = None  # the side's own timing of the part that counts, if not all


@dataclass
class Side:
    """One contestant: a name, a callable doing one whole run, and what it runs with."""

    name: str
    fn: Callable[[], Run]
    role: Literal["ours", "peer", "reference"] = "peer"
    dtype: str | None = None
    threads: int | None = None
    batch_size: int | None = None
    inputs: Sequence[str] | None = None
    pid: int | None = None
    note: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """The figure a benchmark reports. ``rate``: ``work / seconds`` (higher is better);
    ``time``: ``seconds * scale / work`` (lower is better, e.g. ms per query with scale 1000)."""

    unit: str
    kind: Literal["rate", "time"] = "rate"
    scale: float = 1.0

    def value(self, seconds: float, work: float) -> float:
        if self.kind == "rate":
            return work / seconds if seconds > 0 else float("inf")
        return seconds * self.scale / work if work else float("nan")

    def speedup(self, ours: float, peer: float) -> float:
        """How many times better ours is than the peer (>1: ours is faster)."""
        if self.kind == "rate":
            return ours / peer if peer else float("nan")
        return peer / ours if ours else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and min-max of ``values``."""
    if not values:
        raise ValueError("no values to summarise")
    return {
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def inputs_hash(inputs: Sequence[str] | None) -> str | None:
    """SHA-256 of the inputs (prompts, queries) in order, so two results can be seen to match."""
    if inputs is None:
        return None
    return hashlib.sha256(json.dumps(list(inputs), ensure_ascii=False).encode()).hexdigest()


def versions() -> dict[str, str]:
    """Installed versions of what the figures depend on (read from metadata, nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """CPU model, the kernel-relevant flags it has, cores, platform."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name":
                model = val.strip()
            elif key.strip() == "flags":
                flags = set(val.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "platform": platform.platform(),
    }


class RssPeak:
    """Peak RSS of a process (this one unless ``pid``) over a block, sampled every 20 ms."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True, name="rss-peak")
        self.start = self.peak = 0

    def _rss(self) -> int:
        try:
            return int(self._proc.memory_info().rss)
        except Exception:  # the process ended: keep what was seen
            return 0

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssPeak:
        self.start = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


@dataclass
class SideResult:
    """Everything measured for one side."""

    side: Side
    seconds: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)
    warmup_s: list[float] = field(default_factory=list)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    rss_growth_mb: float = 0.0
    rss_reported: bool = False
    self_timed: bool = False
    texts: list[str] | None = None
    texts_changed: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] | None = None


@dataclass
class Measurement:
    """What :func:`measure` returns: per-side results, the run order, and the ratios."""

    metric: Metric
    sides: list[SideResult]
    order: list[str]
    warmup: int
    repeats: int
    ratios: list[dict[str, Any]]


def _one(
    sr: SideResult, clock: Clock, load: Callable[[], float], memory: bool
) -> tuple[float, Run]:
    before = load()
    sampled: tuple[float, float] | None = None
    if memory:
        with RssPeak(sr.side.pid) as rss:
            started = clock()
            run = sr.side.fn()
            secs = clock() - started
        sampled = (rss.peak / 2**20, (rss.peak - rss.start) / 2**20)
    else:
        started = clock()
        run = sr.side.fn()
        secs = clock() - started
    sr.load_before.append(before)
    sr.load_after.append(load())
    if run.seconds is not None:
        secs, sr.self_timed = run.seconds, True
    if run.peak_rss_mb is not None:  # the side's own process: this one's sampling says nothing
        if not sr.rss_reported:
            sr.peak_rss_mb = sr.rss_growth_mb = 0.0
        sr.rss_reported = True
        sr.peak_rss_mb = max(sr.peak_rss_mb, run.peak_rss_mb)
    elif sampled is not None and not sr.rss_reported:
        sr.peak_rss_mb = max(sr.peak_rss_mb, sampled[0])
        sr.rss_growth_mb = max(sr.rss_growth_mb, sampled[1])
    if sr.side.dtype is None and run.info.get("dtype"):
        sr.side.dtype = str(run.info["dtype"])
    return secs, run


def _load_1m() -> float:
    return os.getloadavg()[0]


def measure(
    sides: Sequence[Side],
    metric: Metric,
    *,
    repeats: int | None = None,
    warmup: int = 1,
    valid: Callable[[str], bool] | None = None,
    reference: str | None = None,
    clock: Clock = time.perf_counter,
    load: Callable[[], float] = _load_1m,
    memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Measurement:
    """Run ``sides`` interleaved and summarise them (see the module docstring).

    Args:
        sides: ours first (``role="ours"``), then the peers.
        metric: the figure each run is turned into.
        repeats: counted rounds; default 5 when every warm-up run took under a minute, else 3.
        warmup: uncounted rounds before them (at least 1).
        valid: where sides generate text, whether one text is valid (e.g. it parses).
        reference: the side whose texts the others are compared with (default: the first).
        clock: seconds, monotonic (a fake one in tests).
        load: the 1-minute load average (a fake one in tests).
        memory: sample peak RSS (off in statistics tests).
        progress: called with a line before each run.

    Raises:
        ValueError: no sides, two with one name, fewer than 3 repeats or no warm-up, or some sides
            generate texts and others do not.
    """
    if not sides:
        raise ValueError("measure needs at least one side")
    names = [s.name for s in sides]
    if len(set(names)) != len(names):
        raise ValueError(f"side names must differ, got {names}")
    if repeats is not None and repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be at least {MIN_REPEATS}, got {repeats}")
    if warmup < 1:
        raise ValueError(f"warmup must be at least 1, got {warmup}")
    results = [SideResult(s) for s in sides]
    order: list[str] = []
    say = progress or (lambda _line: None)
    for w in range(warmup):
        for sr in results:
            say(f"warm-up {w + 1}/{warmup}: {sr.side.name}")
            secs, _ = _one(sr, clock, load, memory)
            sr.warmup_s.append(secs)
    # the warm-up's load and memory are not the counted runs'
    for sr in results:
        sr.load_before.clear()
        sr.load_after.clear()
    if repeats is None:
        longest = max(max(sr.warmup_s) for sr in results)
        repeats = 5 if longest < LONG_RUN_S else MIN_REPEATS
    for r in range(repeats):
        for sr in results:
            say(f"repeat {r + 1}/{repeats}: {sr.side.name}")
            secs, run = _one(sr, clock, load, memory)
            order.append(sr.side.name)
            sr.seconds.append(secs)
            sr.work.append(run.work)
            sr.values.append(metric.value(secs, run.work))
            sr.info = dict(run.info)
            if run.texts is not None:
                if sr.texts is not None and list(run.texts) != sr.texts:
                    sr.texts_changed += 1
                sr.texts = list(run.texts)
    _quality(results, valid, reference)
    return Measurement(
        metric=metric,
        sides=results,
        order=order,
        warmup=warmup,
        repeats=repeats,
        ratios=_ratios(results, metric),
    )


def measure_with(
    args: argparse.Namespace, sides: Sequence[Side], metric: Metric, **kwargs: Any
) -> Measurement:
    """``measure`` with the rounds of the flags every benchmark takes (``add_arguments``:
    ``--repeats``, ``--warmup``), printing a line before each run."""
    return measure(
        sides, metric, repeats=args.repeats, warmup=args.warmup, progress=print, **kwargs
    )


def nonempty(text: str) -> bool:
    """A ``valid`` check for free text: it says something."""
    return bool(text.strip())


def _quality(
    results: list[SideResult], valid: Callable[[str], bool] | None, reference: str | None
) -> None:
    with_texts = [sr for sr in results if sr.texts is not None]
    if not with_texts:  # no text: the side says its own quality (recall, cosine), if any
        for sr in results:
            sr.quality = sr.info.get("quality")
        return
    if len(with_texts) != len(results):
        missing = [sr.side.name for sr in results if sr.texts is None]
        raise ValueError(f"some sides generate texts and {missing} do not: compare like with like")
    ref = next((sr for sr in results if sr.side.name == reference), results[0])
    for sr in results:
        texts = sr.texts or []
        q: dict[str, Any] = {
            "of": len(texts),
            "identical_to": ref.side.name,
            "identical": sum(a == b for a, b in zip(texts, ref.texts or [], strict=False)),
            "repeats_with_other_texts": sr.texts_changed,
        }
        if valid is not None:
            q["valid"] = sum(bool(valid(t)) for t in texts)
        sr.quality = q


def _ratios(results: list[SideResult], metric: Metric) -> list[dict[str, Any]]:
    ours = [sr for sr in results if sr.side.role == "ours"]
    peers = [sr for sr in results if sr.side.role != "ours"]
    out = []
    for o, sr in ((o, p) for o in ours for p in peers):
        paired = [metric.speedup(a, b) for a, b in zip(o.values, sr.values, strict=True)]
        out.append(
            {
                "ours": o.side.name,
                "peer": sr.side.name,
                "peer_role": sr.side.role,
                "speedup": spread(paired),
                "per_round": paired,
                "quality": {o.side.name: o.quality, sr.side.name: sr.quality},
            }
        )
    return out


CHILD_PREFIX = "@@harness-run "


class ChildSide:
    """A side in its own process, for isolation and its own peak RSS, kept for every run.

    The process (``cmd``, a script that ends in :func:`serve_side`) starts on the first call, so
    its load falls in the warm-up; each call then asks it for one run and reads back the
    :class:`Run`. Call :meth:`close` (or use it as a context manager) when done.
    """

    def __init__(self, cmd: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.cmd, self.env = list(cmd), env
        self.proc: Any = None

    def __call__(self) -> Run:
        import subprocess

        if self.proc is None:
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(CHILD_PREFIX):
                doc = json.loads(line[len(CHILD_PREFIX) :])
                return Run(
                    work=doc["work"],
                    texts=doc["texts"],
                    info=doc["info"],
                    peak_rss_mb=doc["peak_rss_mb"],
                    seconds=doc["seconds"],
                )
        code = self.proc.wait()
        raise RuntimeError(f"side process {' '.join(self.cmd[:3])} ... ended with exit {code}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the child's loop ends on end of input
            try:
                self.proc.wait(timeout=60)
            except Exception:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> ChildSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_side(run: Callable[[], Run]) -> int:
    """The child's end of :class:`ChildSide`: one ``run()`` per request line, until input ends.

    Anything the run prints goes to stderr, so stdout carries only the results.
    """
    import resource

    out, sys.stdout = sys.stdout, sys.stderr
    for line in sys.stdin:
        if line.strip() != "run":
            break
        r = run()
        doc = {
            "work": r.work,
            "texts": r.texts,
            "info": r.info,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": r.seconds,
        }
        out.write(CHILD_PREFIX + json.dumps(doc) + "\n")
        out.flush()
    return 0


def side_document(sr: SideResult, metric: Metric, vers: dict[str, str]) -> dict[str, Any]:
    s = sr.side
    return {
        "name": s.name,
        "role": s.role,
        "note": s.note,
        "dtype": s.dtype,
        "threads": s.threads,
        "batch_size": s.batch_size,
        "settings": s.settings,
        "versions": vers,
        "inputs_sha256": inputs_hash(s.inputs),
        "inputs": len(s.inputs) if s.inputs is not None else None,
        "unit": metric.unit,
        "samples": [round(v, 6) for v in sr.values],
        "seconds": [round(v, 6) for v in sr.seconds],
        "work": sr.work,
        "warmup_seconds": [round(v, 6) for v in sr.warmup_s],
        "timed_by": "the side (the part that counts)" if sr.self_timed else "the harness",
        **{k: round(v, 6) for k, v in spread(sr.values).items()},
        "load_1m_before": [round(v, 2) for v in sr.load_before],
        "load_1m_after": [round(v, 2) for v in sr.load_after],
        "peak_rss_mb": round(sr.peak_rss_mb, 1),
        "rss_growth_mb": None if sr.rss_reported else round(sr.rss_growth_mb, 1),
        "rss_method": "ru_maxrss of the side's own process (its load included)"
        if sr.rss_reported
        else "psutil, sampled every 20 ms" + (f", process {s.pid}" if s.pid else ", this process"),
        "quality": sr.quality,
        "info": sr.info,
        "texts": sr.texts,
    }


def result_document(
    name: str,
    m: Measurement,
    *,
    config: dict[str, Any],
    quick: bool,
    what: str,
    argv: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results file's content, in the one schema (``SCHEMA``)."""
    vers = versions()
    # the script that ran (a results name such as bench_generation_gemma is not a script)
    ran = Path(sys.argv[0]).name if argv is None else ""
    script = f"benchmarks/{ran if ran.endswith('.py') else name.split('.')[0] + '.py'}"
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "schema": SCHEMA,
        "name": name,
        "what": what,
        "command": " ".join(["python", script, *args]),
        "quick": quick,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "config": config,
        "metric": {"unit": m.metric.unit, "kind": m.metric.kind},
        "warmup": m.warmup,
        "repeats": m.repeats,
        "order": m.order,
        "sides": [side_document(sr, m.metric, vers) for sr in m.sides],
        "ratios": m.ratios,
        **(extra or {}),
    }


def write_result(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The flags every benchmark takes."""
    ap.add_argument(
        "--quick", action="store_true", help="tiny models and inputs: checks it runs, not speed"
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="counted rounds (default 5, or 3 for runs >1 min)"
    )
    ap.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    ap.add_argument("--out", type=Path, default=None, help="results file (default: by name)")


def out_path(name: str, args: argparse.Namespace) -> Path:
    """Where a run's results go: ``--out``, else ``results/<name>.json`` (``quick/`` if quick)."""
    if args.out is not None:
        return Path(args.out)
    return (QUICK_RESULTS if args.quick else RESULTS) / f"{name}.json"


def report(doc: dict[str, Any]) -> str:
    """A plain-text summary of a results document (what the benchmark prints)."""
    unit = doc["metric"]["unit"]
    lines = [
        f"{doc['name']}: {doc['what']}",
        f"{doc['repeats']} counted repeats after {doc['warmup']} warm-up, interleaved; "
        f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores",
    ]
    for s in doc["sides"]:
        q = s["quality"]
        qual = ""
        if q and "identical_to" in q:
            qual = f"; identical to {q['identical_to']} {q['identical']}/{q['of']}"
            if "valid" in q:
                qual += f", valid {q['valid']}/{q['of']}"
        elif q:
            qual = "; " + ", ".join(f"{k} {v}" for k, v in q.items())
        lines.append(
            f"  {s['name']:<44} {s['median']:>10.4g} {unit} ({s['min']:.4g}-{s['max']:.4g}), "
            f"dtype {s['dtype']}, threads {s['threads']}, peak RSS {s['peak_rss_mb']:.0f} MB" + qual
        )
    for r in doc["ratios"]:
        sp = r["speedup"]
        lines.append(
            f"  {r['ours']} vs {r['peer']}: {sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f}x)"
        )
    return "\n".join(lines)


def finish(
    name: str,
    m: Measurement,
    args: argparse.Namespace,
    *,
    config: dict[str, Any],
    what: str,
    argv: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the results file for a benchmark run and print its summary."""
    doc = result_document(
        name, m, config=config, quick=args.quick, what=what, argv=argv, extra=extra
    )
    path = write_result(out_path(name, args), doc)
    print(report(doc))
    print(f"wrote {path}")
    return path
