"""Run an app, or a bench, on a Ray cluster: ``llmapps run|bench ... --engine ray``.

The same command scales from one machine to many: the inputs become a Ray Dataset and
``map_batches`` sends them through a fixed pool of actors, each of which builds the app on its
strategy once (so each loads its model once) and answers batches with ``run_batches``, the very
function the local engine uses. The driver writes every row as its batch comes back through
``llmapps.runner.open_results``, the writer ``--engine local`` uses: the same JSONL layout, fsynced
per row, resumable (a rerun skips ids already written).

``llmapps bench --engine ray`` does the same per strategy through ``RayEngine``, a bench engine
(``llmapps.bench.engine.Engine``): each actor rebuilds the strategy from its ``StrategyJob`` (plain
data: ``StrategyRun.open`` on model, app, scoring model, judge) and scores batches with
``StrategyRun.answer``, as the local engine does; the bench appends the rows to
``samples/<strategy>.jsonl``.

Faults: Ray Data restarts a killed actor and retries its batch (``max_restarts=-1``,
``max_task_retries=-1``, its defaults for actor pools); the driver writes an id at most once, so a
batch that ran twice still yields one row per id. A killed driver loses only rows not yet written;
the rerun does them.

Batches are cut in the driver (one dataset item is one batch of inputs), so each batch holds the
same inputs as with ``--engine local``: padding, and so greedy output, is the same row for row.

Cluster: ``address`` (``auto``, ``ray://head:10001`` or ``head:6379``) joins an existing cluster;
without it a local cluster of ``workers`` CPUs starts on loopback for this run and stops after.
Each actor reserves ``cpus_per_worker`` CPUs and runs torch with that many threads (no actor grabs
every core); it reserves one GPU when the cluster has GPUs (``gpus_per_worker`` overrides).

Ray is imported only here, only when asked: ``pip install 'llmapps[ray]'``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from llmapps.bench.engine import StrategyWork
from llmapps.errors import BackendError, ConfigError
from llmapps.runner import RunSummary, batched, open_results

log = logging.getLogger(__name__)

RAY_MISSING = "--engine ray needs Ray, an optional extra: pip install 'llmapps[ray]'"

# Environment a worker needs to resolve the same settings as the driver (model home, models,
# offline switches). Names that look like secrets are never sent through Ray (they would sit in
# its control store and dashboard): a remote cluster gets those from its own environment.
_FORWARDED = ("LLMAPPS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


class RayEngineConfig(BaseModel):
    """Where and how wide a Ray run is.

    Attributes:
        address: an existing cluster (``auto``, ``ray://host:10001``, ``host:6379``); None starts
            a local cluster on loopback for the run.
        workers: actors in the pool (and CPUs of a local cluster).
        cpus_per_worker: CPUs each actor reserves; torch in it runs this many threads.
        gpus_per_worker: GPUs each actor reserves; None: 1 when the cluster has GPUs, else 0.
        object_store_mb: object store of a local cluster (batches are small text).
    """

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0)
    object_store_mb: int = Field(256, ge=64)


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a ``ConfigError`` saying how to install it."""
    try:
        import ray
        import ray.data  # the extra installs ray[data]; a bare ray lacks pyarrow
    except ImportError as err:
        raise ConfigError(f"{RAY_MISSING} ({err})") from err
    return ray


@contextlib.contextmanager
def ray_cluster(config: RayEngineConfig) -> Iterator[Any]:
    """Connect to ``config.address`` or start a local cluster; yield ``ray``; disconnect after.

    A Ray session the caller already opened (``ray.init`` before) is used as it is and left open.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
    ray = import_ray()
    if config.address:
        _probe(config.address)
    if ray.is_initialized():
        yield ray
        return
    common: dict[str, Any] = {
        "log_to_driver": False,
        "configure_logging": False,
        "include_dashboard": False,
    }
    try:
        if config.address:
            ray.init(address=config.address, **common)
        else:
            ray.init(
                num_cpus=max(1, round(config.workers * config.cpus_per_worker)),
                object_store_memory=config.object_store_mb * 2**20,
                _node_ip_address="127.0.0.1",
                **common,
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = (
            f"the Ray cluster at {config.address!r}" if config.address else "a local Ray cluster"
        )
        raise BackendError(
            f"cannot start or reach {where}: {err} (check --address, or run without it for a local one)"
        ) from err
    try:
        yield ray
    finally:
        ray.shutdown()


# An HTTP/2 client preface and an empty SETTINGS frame: every gRPC server (Ray's GCS at
# HOST:6379, its client server at ray://HOST:10001) answers with a SETTINGS frame at once.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_PROBE_TIMEOUT_S = 3.0


def _auto_address() -> str | None:
    """The cluster ``auto`` stands for, as Ray finds it: ``RAY_ADDRESS``, else the address file
    the last ``ray start`` on this machine wrote; None where there is neither."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    temp = os.environ.get("RAY_TMPDIR") or "/tmp"  # where Ray itself looks
    try:
        return (Path(temp) / "ray" / "ray_current_cluster").read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _probe(address: str) -> None:
    """Fail in seconds unless a gRPC server (what Ray speaks) answers at ``address``.

    ``ray.init`` retries for minutes on an address nothing listens on, and hangs on one where
    something else (an HTTP server, any plain listener) does; every form is probed: ``auto``
    through the address it stands for, ``localhost:PORT`` and ``127.0.0.1:PORT`` like any host.
    """
    import socket
    from urllib.parse import urlsplit

    if address == "local":
        return  # Ray starts a new local cluster for it
    given = address
    if address == "auto":
        found = _auto_address()
        if found is None:
            return  # Ray says at once that it finds no cluster on this machine
        address = found
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    expected = "expected auto, ray://HOST:PORT or HOST:PORT"
    try:
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"--address {given!r}: {expected}") from err
    if not parts.hostname or port is None:
        raise ConfigError(f"--address {given!r}: {expected}")
    where = f"the Ray cluster at {given!r}" + (f" ({address})" if given != address else "")
    try:
        with socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT_S) as sock:
            sock.settimeout(_PROBE_TIMEOUT_S)
            sock.sendall(_H2_PREFACE)
            reply = b""
            while len(reply) < 9 and (chunk := sock.recv(9 - len(reply))):
                reply += chunk
    except TimeoutError:
        reply = b""
    except OSError as err:
        raise BackendError(
            f"cannot reach {where}: {err} (is `ray start --head` running there? run without "
            "--address for a local cluster)"
        ) from err
    if len(reply) < 4 or reply[3] != 0x04:  # the fourth byte of a frame header is its type
        raise BackendError(
            f"{where} is not a Ray cluster: something listens there but does not answer as Ray's "
            f"gRPC server does within {_PROBE_TIMEOUT_S:.0f}s (check the port: `ray start --head` "
            "prints it; or run without --address for a local cluster)"
        )


def worker_env() -> dict[str, str]:
    """The driver's settings environment a worker applies before it builds anything."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_FORWARDED) and not any(w in k.upper() for w in _SECRET_WORDS)
    }


def _prepare_worker(env: dict[str, str], threads: int) -> None:
    os.environ.update(env)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


class RunWorker:
    """A Ray Data actor: builds the app on its strategy once, then answers batches.

    Each dataset item is one batch (``inputs``: the JSON list of its inputs); the result carries
    the rows as JSON (rows of different apps have different keys, which Arrow would not take) and
    the actor's pid and timings, so the driver can tell the work from the overhead.
    """

    def __init__(
        self,
        app: str,
        strategy: str,
        strategy_options: dict[str, Any],
        app_options: dict[str, Any],
        env: dict[str, str],
        threads: int,
    ) -> None:
        started = time.perf_counter()
        _prepare_worker(env, threads)
        from llmapps.bench.strategy_run import build_chain
        from llmapps.strategies.base import make_strategy

        self.chain = build_chain(app, make_strategy(strategy, **strategy_options), app_options)
        self.load_s = round(time.perf_counter() - started, 3)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from llmapps.runner import run_batches

        out: dict[str, list[Any]] = {"n": [], "rows": [], "pid": [], "load_s": [], "work_s": []}
        for n, text in zip(batch["n"], batch["inputs"], strict=True):
            inputs = json.loads(str(text))
            started = time.perf_counter()
            rows = run_batches(self.chain, inputs, batch_size=len(inputs), progress=False)
            out["n"].append(int(n))
            out["rows"].append(json.dumps(rows, ensure_ascii=False))
            out["pid"].append(os.getpid())
            out["load_s"].append(self.load_s)
            out["work_s"].append(round(time.perf_counter() - started, 4))
        return out


def map_batches(
    ray: Any,
    worker: type,
    worker_kwargs: dict[str, Any],
    chunks: Sequence[Sequence[dict[str, Any]]],
    config: RayEngineConfig,
) -> Iterator[dict[str, Any]]:
    """Send ``chunks`` through a pool of ``worker`` actors; yield each result as it is done."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    if not log.isEnabledFor(logging.INFO):  # Ray Data logs each run's plan at INFO
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    gpus = config.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    items = [
        {"n": i, "inputs": json.dumps(list(c), ensure_ascii=False)} for i, c in enumerate(chunks)
    ]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        worker,
        fn_constructor_kwargs={**worker_kwargs, "threads": max(1, int(config.cpus_per_worker))},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(config.workers, len(items))),
        num_cpus=config.cpus_per_worker,
        num_gpus=gpus,
    )
    yield from ds.iter_rows()


def run_file_ray(
    app: str,
    strategy: str,
    inputs: Sequence[dict[str, Any]],
    out: Path,
    *,
    config: RayEngineConfig | None = None,
    strategy_options: dict[str, Any] | None = None,
    app_options: dict[str, Any] | None = None,
    batch_size: int = 16,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    retry_failed: bool = True,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Like ``llmapps.runner.run_file``, with the batches answered by a pool of Ray actors.

    Args:
        app: a registered app; each actor builds it on ``strategy`` with ``strategy_options``.
        config: the cluster and pool (default: a local cluster of 2 workers).
        on_batch: called with each batch's ``n``, ``size``, ``pid``, ``load_s``, ``work_s`` and
            ``wall_s`` (since the run began), after its rows are written.
    """
    from tqdm.auto import tqdm

    from llmapps.strategies.base import make_strategy

    config = config or RayEngineConfig()
    options = dict(strategy_options or {})
    make_strategy(strategy, **options)  # a bad name or option fails here (cheap), not in N actors
    with open_results(inputs, out, extra=extra, retry_failed=retry_failed) as results:
        if not results.todo:
            return results.summary()
        chunks = list(batched(results.todo, batch_size))
        kwargs = {
            "app": app,
            "strategy": strategy,
            "strategy_options": options,
            "app_options": dict(app_options or {}),
            "env": worker_env(),
        }
        written: set[str] = set()
        bar = tqdm(total=len(results.todo), desc=f"{strategy} on ray", disable=not progress)
        started = time.perf_counter()
        with ray_cluster(config) as ray:
            try:
                for res in map_batches(ray, RunWorker, kwargs, chunks, config):
                    chunk = chunks[int(res["n"])]
                    for inp, row in zip(chunk, json.loads(str(res["rows"])), strict=True):
                        if str(inp["id"]) not in written:  # a retried batch: one row per id
                            written.add(str(inp["id"]))
                            results.write(inp, row)
                    bar.update(len(chunk))
                    if on_batch:
                        on_batch(
                            {
                                "n": int(res["n"]),
                                "size": len(chunk),
                                "pid": int(res["pid"]),
                                "load_s": float(res["load_s"]),
                                "work_s": float(res["work_s"]),
                                "wall_s": round(time.perf_counter() - started, 4),
                            }
                        )
            except Exception as err:
                if isinstance(err, (ConfigError, BackendError)):
                    raise
                first = str(err).strip().splitlines()
                raise BackendError(
                    f"the Ray run stopped after {len(written)} of {len(results.todo)} rows "
                    f"(written to {out}; run again to resume): {type(err).__name__}: "
                    f"{first[-1] if first else ''}"
                ) from err
            finally:
                bar.close()
    return results.summary()


class BenchWorker:
    """A Ray Data actor of ``RayEngine``: rebuilds one strategy of a bench from its
    ``StrategyJob`` once (``StrategyJob.open_run``: app, samples, metrics, judge, strategy,
    scoring model) and answers batches of samples with ``StrategyRun.answer``, the code the
    local engine runs, so the rows are the same."""

    def __init__(self, job: dict[str, Any], env: dict[str, str], threads: int) -> None:
        started = time.perf_counter()
        _prepare_worker(env, threads)
        from llmapps.bench.strategy_run import StrategyJob

        self.srun, self.status = StrategyJob.model_validate(job).open_run()
        self.load_s = round(time.perf_counter() - started, 3)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import resource

        if self.status["status"] == "failed":
            raise BackendError(f"strategy {self.srun.name} cannot run: {self.status['error']}")
        out: dict[str, list[Any]] = {
            "n": [], "rows": [], "pid": [], "load_s": [], "work_s": [], "rss_mb": [], "status": []
        }  # fmt: skip
        for n, text in zip(batch["n"], batch["inputs"], strict=True):
            started = time.perf_counter()
            rows = self.srun.answer(json.loads(str(text)))
            out["n"].append(int(n))
            out["rows"].append(json.dumps(rows, ensure_ascii=False, default=str))
            out["pid"].append(os.getpid())
            out["load_s"].append(self.load_s)
            out["work_s"].append(round(time.perf_counter() - started, 4))
            out["rss_mb"].append(
                round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
            )
            out["status"].append(json.dumps(self.status, default=str))
        return out


class RayEngine:
    """A bench engine (``llmapps.bench.engine.Engine``): each strategy's batches answered by a
    pool of Ray actors, each of which opens the strategy once from the ``StrategyJob``.

    The status gets the slowest actor's load time and the largest actor's peak RSS (each actor
    holds its own model), plus ``engine`` and ``workers``. A failure is recorded in the status
    (the rows yielded before it are kept). The cluster is joined or started per strategy unless
    the caller holds one open (``with ray_cluster(engine.config):`` around the bench).
    """

    name = "ray"

    def __init__(self, config: RayEngineConfig | None = None) -> None:
        self.config = config or RayEngineConfig()

    def run(
        self, work: StrategyWork, todo: Sequence[dict[str, Any]]
    ) -> Iterator[list[dict[str, Any]]]:
        from llmapps.strategies.base import make_strategy

        status, job, config = work.status, work.job, self.config
        try:  # bad options fail here, before a pool starts
            status["config"] = make_strategy(
                job.name, settings=work.context.settings, **job.options
            ).describe()
        except Exception as err:
            status.update(status="failed", error=f"{type(err).__name__}: {err}")
            return
        chunks = list(batched(todo, work.batch_size))
        kwargs = {"job": job.model_dump(mode="json"), "env": worker_env()}
        loads: list[float] = []
        rss: list[float] = []
        seen: set[str] = set()
        with ray_cluster(config) as ray:
            try:
                for res in map_batches(ray, BenchWorker, kwargs, chunks, config):
                    loads.append(float(res["load_s"]))
                    rss.append(float(res["rss_mb"]))
                    status["scores_perplexity"] = json.loads(str(res["status"])).get(
                        "scores_perplexity"
                    )
                    rows = json.loads(str(res["rows"]))
                    seen.update(str(r["id"]) for r in rows)
                    yield rows
            except Exception as err:
                lines = str(err).strip().splitlines()
                log.warning("strategy %s stopped on ray: %s", job.name, lines[-1] if lines else err)
                status.update(
                    status="failed",
                    error=f"{type(err).__name__}: {lines[-1] if lines else ''} "
                    f"({len(seen)} of {len(todo)} rows written; run again to resume)",
                )
        status.update(
            engine="ray",
            workers=config.workers,
            load_s=max(loads, default=None),
            peak_rss_mb=max(rss, default=None),
        )
