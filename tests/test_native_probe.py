"""The llama.cpp probe: a build that crashes on this CPU is a one-line error, never a dead process.

The crash itself (SIGSEGV at ``ldtilecfg`` on AMX Xeons with a GGML_NATIVE build) cannot be
counted on in CI, so the faults are injected: a probe child that kills itself with SIGSEGV or
SIGILL, one that hangs, and a cached verdict of a crashed build. The real probe runs on the
installed build too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import cli_command

from llmapps.errors import BackendError
from llmapps.models import native_probe

pytest.importorskip("llama_cpp", reason="the llama.cpp backend is not installed")

CRASH = "import os, signal; os.kill(os.getpid(), signal.{})"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMAPPS_HOME", str(tmp_path))  # settings are read afresh each time
    monkeypatch.setattr(native_probe, "_verdict", None)
    return tmp_path


def test_the_installed_build_decodes_and_the_verdict_is_kept(home: Path) -> None:
    verdict = native_probe.check_llamacpp()
    assert verdict["ok"] is True
    (kept,) = (home / "native").glob("llamacpp-*.json")
    assert json.loads(kept.read_text())["ok"] is True
    # the key names this build and CPU: another CPU's flags give another verdict file
    ident = native_probe._build_identity()
    assert kept.name == f"llamacpp-{native_probe.probe_key(ident, native_probe.cpu_flags())}.json"
    assert native_probe.probe_key(ident, ["avx2"]) != native_probe.probe_key(ident, ["amx_tile"])


@pytest.mark.parametrize("sig", ["SIGSEGV", "SIGILL"])
def test_a_crashing_probe_is_one_line_naming_the_signal_and_the_fix(home: Path, sig: str) -> None:
    with pytest.raises(BackendError) as info:
        native_probe.check_llamacpp(command=[sys.executable, "-c", CRASH.format(sig)])
    message = str(info.value)
    assert "\n" not in message
    assert sig in message
    assert "GGML_NATIVE=OFF" in message and "--no-cache-dir" in message
    assert "backend=transformers" in message


def test_a_hanging_probe_times_out_and_is_not_kept(home: Path) -> None:
    verdict = native_probe.run_probe(
        [sys.executable, "-c", "import time; time.sleep(30)"], timeout=1.0
    )
    assert verdict["ok"] is False and verdict["cacheable"] is False
    assert "did not finish" in verdict["detail"]


def _poison(home: Path) -> None:
    """A kept verdict saying this build crashed on this CPU (as the probe writes it)."""
    key = native_probe.probe_key(native_probe._build_identity(), native_probe.cpu_flags())
    (home / "native").mkdir(parents=True, exist_ok=True)
    (home / "native" / f"llamacpp-{key}.json").write_text(
        json.dumps(
            {
                "ok": False,
                "signal": True,
                "cacheable": True,
                "detail": "SIGSEGV",
                "amx": ["amx_tile"],
            }
        )
    )


def test_loading_a_gguf_after_a_crashed_probe_refuses_in_this_process(
    home: Path, smollm2_gguf: Path
) -> None:
    from llmapps.models.llamacpp import load_gguf_model
    from llmapps.models.pool import ModelPool

    _poison(home)
    with pytest.raises(BackendError, match="SIGSEGV"):
        load_gguf_model(str(smollm2_gguf), pool=ModelPool())


def test_the_cli_reports_a_crashed_build_in_one_line(home: Path, smollm2_gguf: Path) -> None:
    _poison(home)
    env = {**os.environ, "LLMAPPS_HOME": str(home)}
    articles = home / "in.jsonl"
    articles.write_text(json.dumps({"title": "Rain", "text": "It rained all day in town."}) + "\n")
    proc = subprocess.run(
        cli_command(
            "run",
            "news-riddle",
            "-s",
            "zero-shot",
            "--instruct-model",
            str(smollm2_gguf),
            "-i",
            str(articles),
            "-o",
            str(home / "out.jsonl"),
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0 and proc.returncode > 0  # an exit status, not a signal
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "llama.cpp failed a probe" in line]
    assert len(errors) == 1, proc.stderr[-2000:]
