"""A probe that runs llama.cpp in a child process before the first use in this one.

llama-cpp-python compiles llama.cpp on install. Built with ``GGML_NATIVE`` (its default) on an
Intel Xeon with AMX, version 0.3.36 dies with SIGSEGV on the first decode of every model (a
general-protection fault at ``ldtilecfg`` in ``libggml-cpu.so``; llama.cpp PR 26954): the whole
process goes, with no message. A build for another CPU's features dies with SIGILL the same way.
Native code must never take the process down unannounced, so before llama.cpp first runs in a
process, ``check_llamacpp()`` loads a tiny GGUF we make (``build_probe_gguf``: one llama block
whose matrices are Q4_0/Q8_0, the quantized kernels AMX and AVX-512 paths run) and decodes a
batch and then one token in a child process. A child killed by a signal (or hung) becomes a
one-line ``BackendError`` that names the signal, the build and the fix (a portable rebuild); the
verdict is kept in ``$LLMAPPS_HOME/native/`` per build (llama-cpp-python's version and its native
libraries' names, sizes and times) and CPU flags, so the probe costs ~1 s once per machine and
build, not per process.

``python -m llmapps.models.native_probe`` runs the probe and prints its verdict.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llmapps.errors import BackendError, ConfigError

# The flags the README's install and .ci/run build llama.cpp with: x86-64-v3 (AVX2, FMA, F16C),
# which every machine of this project has, and no AMX/AVX-512 kernels chosen by the build host.
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
REBUILD_HINT = (
    f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --no-cache-dir --force-reinstall --no-deps '
    "llama-cpp-python=={version}"
)
PROBE_TIMEOUT_S = 120.0
_PROBE_VERSION = 1  # bump when the probe model or its decode changes

_lock = threading.Lock()
_verdict: dict[str, Any] | None = None  # this process's, once known


def build_probe_gguf(path: Path) -> Path:
    """Write the probe model: a 1-block llama (256-dim, 256-token byte vocabulary) with Q4_0 and
    Q8_0 matrices, ~0.5 MB; written atomically."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    n_embd, n_ff, n_vocab, n_head = 256, 512, 256, 4
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = GGUFWriter(str(tmp), "llama")
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(253)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [6] * (n_vocab - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)
    q4, q8 = GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0

    def tensor(name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType | None) -> None:
        data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if qtype is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)

    tensor("token_embd.weight", (n_vocab, n_embd), q8)
    tensor("output_norm.weight", (n_embd,), None)
    tensor("output.weight", (n_vocab, n_embd), q8)
    tensor("blk.0.attn_norm.weight", (n_embd,), None)
    for part in ("q", "k", "v", "output"):
        tensor(f"blk.0.attn_{part}.weight", (n_embd, n_embd), q4)
    tensor("blk.0.ffn_norm.weight", (n_embd,), None)
    tensor("blk.0.ffn_gate.weight", (n_ff, n_embd), q4)
    tensor("blk.0.ffn_up.weight", (n_ff, n_embd), q4)
    tensor("blk.0.ffn_down.weight", (n_embd, n_ff), q4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def cpu_flags() -> list[str]:
    """The CPU's feature flags (Linux: /proc/cpuinfo), sorted; [] where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return sorted(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


def _build_identity() -> dict[str, Any]:
    """llama-cpp-python's version and its native libraries (name, size, mtime): a rebuild or a
    reinstall changes it."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    libs: list[list[Any]] = []
    if spec and spec.origin:
        lib_dir = Path(spec.origin).parent / "lib"
        for p in sorted(lib_dir.glob("*")) if lib_dir.is_dir() else []:
            if p.is_file():
                st = p.stat()
                libs.append([p.name, st.st_size, st.st_mtime_ns])
    return {"version": version, "libs": libs, "location": spec.origin if spec else None}


def probe_key(identity: dict[str, Any], flags: list[str]) -> str:
    blob = json.dumps([_PROBE_VERSION, identity, flags], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _verdict_dir() -> Path:
    from llmapps.settings import get_settings

    return Path(get_settings().home) / "native"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def run_probe(
    command: list[str] | None = None, *, timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """Run the probe child (``command``: default this module's ``--child`` on the probe model) and
    return its verdict: ``ok``, ``detail``, ``cacheable`` (False for a time-out: the machine may
    only have been busy)."""
    if command is None:
        model = _verdict_dir() / f"probe-v{_PROBE_VERSION}.gguf"
        if not model.is_file():
            build_probe_gguf(model)
        command = [sys.executable, "-m", "llmapps.models.native_probe", "--child", str(model)]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return {
            "ok": False,
            "cacheable": False,
            "detail": f"the probe decode did not finish in {timeout:.0f} s",
        }
    seconds = round(time.monotonic() - start, 2)
    if proc.returncode == 0 and "probe ok" in proc.stdout:
        return {"ok": True, "cacheable": True, "detail": "decoded", "seconds": seconds}
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    last = tail[-1][:300] if tail else ""
    # killed by a signal: the build crashes on this CPU; an error exit is reported as it is
    return {
        "ok": False,
        "cacheable": proc.returncode < 0,
        "signal": proc.returncode < 0,
        "detail": f"{_describe_exit(proc.returncode)}" + (f" ({last})" if last else ""),
        "seconds": seconds,
    }


def check_llamacpp(*, command: list[str] | None = None, use_cache: bool = True) -> dict[str, Any]:
    """Make sure llama.cpp can decode on this CPU before this process runs it; raise a one-line
    ``BackendError`` naming the fix where the probe crashed. The verdict is cached per build and
    CPU flags (see the module docstring); ``command`` replaces the probe child (tests inject a
    crashing one)."""
    global _verdict
    with _lock:
        if _verdict is not None and use_cache and command is None:
            return _raise_if_bad(_verdict)
        identity = _build_identity()
        flags = cpu_flags()
        key = probe_key(identity, flags)
        cache = _verdict_dir() / f"llamacpp-{key}.json"
        verdict: dict[str, Any] | None = None
        if use_cache and command is None and cache.is_file():
            try:
                verdict = json.loads(cache.read_text())
                if not isinstance(verdict, dict) or "ok" not in verdict:
                    verdict = None
            except (OSError, ValueError):
                verdict = None  # unreadable: probe again and rewrite it
        if verdict is None:
            verdict = run_probe(command)
            verdict.update(
                version=identity["version"],
                amx=[f for f in flags if f.startswith("amx")],
            )
            if verdict.get("cacheable") and command is None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(verdict, indent=1))
                os.replace(tmp, cache)
        if command is None:
            _verdict = verdict
        return _raise_if_bad(verdict)


def _raise_if_bad(verdict: dict[str, Any]) -> dict[str, Any]:
    if verdict.get("ok"):
        return verdict
    version = verdict.get("version", "unknown")
    amx = ", ".join(verdict.get("amx") or []) or "none"
    raise BackendError(
        f"llama.cpp failed a probe decode in a child process on this CPU ({verdict['detail']}; "
        f"llama-cpp-python {version}, CPU AMX flags: {amx}), so it was not run in this one: its "
        "build uses instructions this machine cannot run (a GGML_NATIVE build on an AMX Xeon "
        "crashes so). Rebuild it portably: "
        + REBUILD_HINT.format(version=version)
        + " — or use backend=transformers"
    )


def _child(model: str) -> None:
    """The probe itself: load ``model``, decode a 16-token batch, then one more token."""
    import llama_cpp

    llama = llama_cpp.Llama(model_path=model, n_ctx=256, n_batch=32, n_threads=2, verbose=False)
    llama.eval([1, *range(5, 20)])
    llama.eval([int(llama.sample(temp=0.0))])
    print("probe ok", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--child"] and len(args) == 2:
        _child(args[1])
        return 0
    try:
        verdict = check_llamacpp(use_cache="--fresh" not in args)
    except (BackendError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"llama.cpp decodes on this CPU ({verdict.get('detail')}, {verdict.get('version')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
