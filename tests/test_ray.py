"""``llmapps run --engine ray`` on a real local Ray cluster (2 worker CPUs) and the tiny models.

One cluster serves the module (Ray takes seconds to start): each test's run gets its own pool of
2 actors, each of which loads the model once. What is shown: the rows equal the local engine's row
for row (greedy), a rerun resumes from a half-written file, a SIGKILLed actor costs no row and
duplicates none, a SIGKILLed driver keeps what it wrote (slow), and without Ray the error is one
line. Timing fields differ between runs and are left out of the comparisons.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from testkit import bench_args, cli_command, run_args

from llmapps.cli import main
from llmapps.errors import BackendError, ConfigError
from llmapps.runner import run_file

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'llmapps[ray]'")

TIMING = ("latency_s",)
OPTIONS = {"max_new_tokens": 8}


def _inputs(articles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: a[k] for k in ("id", "title", "text")} for a in articles]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_id(path: Path) -> dict[str, dict[str, Any]]:
    rows = _rows(path)
    by_id = {r["id"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}
    assert len(by_id) == len(rows), "an id was written twice"
    return by_id


@pytest.fixture(scope="module")
def cluster(tiny_models: Path) -> Any:
    """A local Ray cluster on loopback with 2 CPUs, shared by the module's tests."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        object_store_memory=256 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    yield ray
    ray.shutdown()


def _local(inputs: list[dict[str, Any]], out: Path, batch_size: int) -> dict[str, dict[str, Any]]:
    from llmapps.apps import load_chain

    chain = load_chain("news-riddle", "few-shot", **OPTIONS)
    run_file(
        chain, inputs, out, batch_size=batch_size, extra={"strategy": "few-shot"}, progress=False
    )
    return _by_id(out)


def test_ray_rows_equal_local_and_resume(
    cluster: Any,
    test_articles: list[dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inputs = _inputs(test_articles[:6])
    inp, out, local = tmp_path / "in.jsonl", tmp_path / "ray.jsonl", tmp_path / "local.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in inputs))
    args = [
        "run",
        "news-riddle",
        "-i",
        str(inp),
        "-q",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
    ]
    assert main([*args, "-o", str(local)]) == 0  # --engine local, the default
    capsys.readouterr()
    # a ray run killed after 2 rows, mid-way through the third
    lines = local.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])
    args += ["-o", str(out), "--engine", "ray", "--workers", "2"]
    assert main(args) == 0
    assert "4 done, 2 already in" in capsys.readouterr().err
    assert _by_id(out) == _by_id(local)  # row for row, every key but the timing
    assert main(args) == 0  # nothing left: no actor is started
    assert "0 done, 6 already in" in capsys.readouterr().err
    assert len(_rows(out)) == 6


def test_killed_worker_loses_and_repeats_no_row(
    cluster: Any, test_articles: list[dict[str, Any]], tmp_path: Path
) -> None:
    from llmapps.ray_engine import RayEngineConfig, run_file_ray

    inputs = _inputs(test_articles[:8])
    local = _local(inputs, tmp_path / "local.jsonl", batch_size=1)
    out = tmp_path / "ray.jsonl"
    batches: list[dict[str, Any]] = []
    killed: list[int] = []

    def on_batch(info: dict[str, Any]) -> None:
        batches.append(info)
        if not killed:  # the actor that answered first dies, with its queued batches in flight
            os.kill(info["pid"], signal.SIGKILL)
            killed.append(info["pid"])
            assert len(_rows(out)) == 1  # mid-run: one row on disk, seven to go

    summary = run_file_ray(
        "news-riddle",
        "few-shot",
        inputs,
        out,
        config=RayEngineConfig(workers=2),
        strategy_options=OPTIONS,
        batch_size=1,
        extra={"strategy": "few-shot"},
        progress=False,
        on_batch=on_batch,
    )
    assert (summary.done, summary.failed) == (8, 0)
    assert _by_id(out) == local  # every row once, the same rows
    assert len(_rows(out)) == 8
    assert killed and len(batches) == 8


def test_bench_on_ray_writes_the_local_rows(
    cluster: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = bench_args(4, 2, 8, "-q")
    assert main([*args, "--out", str(tmp_path / "local")]) == 0
    assert main([*args, "--out", str(tmp_path / "ray"), "--engine", "ray", "--workers", "2"]) == 0
    assert "few-shot" in capsys.readouterr().out  # the same tables are printed
    timing = ("latency_s", "sample_s")

    def rows(folder: str) -> dict[str, dict[str, Any]]:
        path = tmp_path / folder / "samples" / "few-shot.jsonl"
        return {r["id"]: {k: v for k, v in r.items() if k not in timing} for r in _rows(path)}

    ray_rows = rows("ray")
    assert len(ray_rows) == 4 and ray_rows == rows("local")  # outputs, tokens and metrics
    status = json.loads((tmp_path / "ray" / "strategies.json").read_text())["few-shot"]
    assert (status["status"], status["engine"], status["workers"]) == ("ran", "ray", 2)
    assert status["load_s"] > 0 and status["peak_rss_mb"] > 0


def test_bad_options_fail_before_any_actor(cluster: Any, tmp_path: Path) -> None:
    from llmapps.ray_engine import run_file_ray

    with pytest.raises(ConfigError, match="max_new_tokenz"):
        run_file_ray(
            "news-riddle",
            "few-shot",
            [{"id": "a", "title": "T", "text": "B."}],
            tmp_path / "o.jsonl",
            strategy_options={"max_new_tokenz": 3},
            progress=False,
        )


def test_ray_flags_need_the_ray_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "x", "title": "T", "text": "Body."}) + "\n")
    code = main(
        ["run", "news-riddle", "-i", str(inp), "-o", str(tmp_path / "o.jsonl"), "--workers", "3"]
    )
    assert code == 2
    assert "--workers apply to --engine ray only" in capsys.readouterr().err


def test_missing_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmapps.ray_engine import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(
        ConfigError, match=r"needs Ray, an optional extra: pip install 'llmapps\[ray\]'"
    ):
        import_ray()


def test_an_address_nothing_listens_on_fails_in_seconds() -> None:
    import socket

    from llmapps.ray_engine import RayEngineConfig, ray_cluster

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        pytest.raises(
            BackendError, match=rf"cannot reach the Ray cluster at 'ray://127.0.0.1:{port}'"
        ),
        ray_cluster(RayEngineConfig(address=f"ray://127.0.0.1:{port}")),
    ):
        pass
    with (
        pytest.raises(ConfigError, match="expected auto, ray://HOST:PORT or HOST:PORT"),
        ray_cluster(RayEngineConfig(address="ray://nohost")),
    ):
        pass


def test_a_real_ray_cluster_passes_the_address_probe(cluster: Any) -> None:
    """The probe that refuses a non-Ray listener (tests/test_hostile_ray.py) lets Ray's GCS by."""
    from llmapps.bench.ray_engine import _probe

    port = cluster.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    _probe(f"127.0.0.1:{port}")  # the GCS listens on every interface; tests reach loopback only
    _probe(f"localhost:{port}")


def test_local_engine_imports_no_ray() -> None:
    code = (
        "import sys\n"
        "from llmapps.cli import build_parser\n"
        "from llmapps.cli.flags import engine_config\n"
        "args = build_parser().parse_args(['run', 'news-riddle', '-i', 'x', '-o', 'y'])\n"
        "assert engine_config(args) is None\n"
        "import llmapps.runner, llmapps.ray_engine\n"
        "print('ray' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.slow
def test_killed_driver_keeps_its_rows_and_the_rerun_finishes(
    tiny_models: Path, test_articles: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The driver (with the local cluster it started) is SIGKILLed after its first row."""
    inputs = _inputs(test_articles[:8])
    inp, out = tmp_path / "in.jsonl", tmp_path / "ray.jsonl"
    inp.write_text("".join(json.dumps(x) + "\n" for x in inputs))
    cmd = cli_command(
        *run_args(str(inp), str(out)),
        "-q",
        "--max-new-tokens",
        "8",
        "--batch-size",
        "1",
        "--engine",
        "ray",
        "--workers",
        "1",
    )
    # its own process group: the kill takes the driver and the local cluster it started, at once
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 1:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    before = len(_rows(out)) if out.exists() else 0
    assert 1 <= before < 8, f"the kill came too late to test anything ({before} rows)"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{8 - before} done, {before} already in" in done.stderr
    assert sorted(_by_id(out)) == sorted(x["id"] for x in inputs)
