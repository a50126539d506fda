"""Run every benchmark that is on the harness, one after another, then regenerate the README table.

Each runs in its own process (its imports, threads and memory are its own) and writes its results
file; a failing one is reported and the rest still run. ::

    python benchmarks/run_all.py               # the real runs (quiet machine: an hour or more)
    python benchmarks/run_all.py --quick       # every benchmark on tiny inputs (minutes)
    python benchmarks/run_all.py --only bench_retrieval bench_embeddings

Not yet on the harness (run by hand): ``bench_lora_settings.py``, ``bench_ray.py`` (neither is
in the README's speed table).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_HOME = Path(os.environ.get("LLMAPPS_HOME") or Path.home() / ".cache" / "llmapps")

# Each benchmark's real runs: the arguments that regenerate the results files the README cites.
RUNS: dict[str, list[list[str]]] = {
    "bench_generation": [[], ["--real", "-n", "16", "--max-new-tokens", "64"]],
    "bench_service_client": [[]],
    "bench_server_batching": [[]],
    "bench_retrieval": [[]],
    "bench_embeddings": [[]],
    "bench_local_backends": [
        [],
        ["--selection", "similarity"],
        ["--strategy", "lora"],
    ],
    "bench_lora_training": [[]],
    # the demo SFT adapter and the AI-feedback pairs `llmapps finetune pairs --sample 4` built
    "bench_dpo_training": [
        [
            "--adapter",
            str(_HOME / "adapters" / "news-riddle-gemma-3-270m-demo"),
            "--pairs",
            str(_HOME / "pairs" / "gemma-demo-ai-k4.jsonl"),
        ]
    ],
}


def commands(quick: bool, only: list[str] | None) -> list[list[str]]:
    """The command lines to run, in order."""
    unknown = sorted(set(only or []) - set(RUNS))
    if unknown:
        raise SystemExit(f"unknown benchmarks {unknown}; known: {', '.join(RUNS)}")
    out = []
    for name, runs in RUNS.items():
        if only and name not in only:
            continue
        for extra in [[]] if quick else runs:
            out.append(
                [sys.executable, str(HERE / f"{name}.py"), *extra, *(["--quick"] if quick else [])]
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny inputs: checks they run")
    ap.add_argument("--only", nargs="+", help="these benchmarks only")
    args = ap.parse_args(argv)
    failed = []
    for cmd in commands(args.quick, args.only):
        shown = " ".join(["python", *(Path(c).name if c.endswith(".py") else c for c in cmd[1:])])
        print(f"== {shown}", flush=True)
        started = time.monotonic()
        code = subprocess.call(cmd, cwd=HERE.parent)
        print(f"== exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(shown)
    if not args.quick:
        subprocess.call([sys.executable, str(HERE / "readme_table.py")], cwd=HERE.parent)
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
