"""DPO training throughput: reply-only logits (finetune/dpo.py) against full-vocabulary logits.

Both sides run the same preference loss (``finetune.dpo.preference_loss``, DPO with the parent
adapter's log-probabilities as the frozen reference, computed once up front) on the same pairs,
from the same starting weights (the parent adapter, reloaded before every run), with the same
AdamW settings and the same number of optimizer steps, one pair (two rows: chosen, rejected) per
step. They differ only in the log-probability path:

- **ours** (``finetune.dpo.pair_logps``): only the positions whose next token is a reply token
  are projected onto the vocabulary (``logits_to_keep`` with a boolean mask);
- **full-logits**: every position is projected and the reply positions selected afterwards. This
  is what TRL's ``DPOTrainer`` computes on CPU (its concatenated forward produces logits for the
  whole prompt + reply); it is *our loop with full logits*, not TRL itself.

TRL's own ``DPOTrainer`` is a third side when ``trl`` is importable (the dev extra installs it):
``benchmarks/dpo_trl.py`` says how it is called and why its settings match our loop's.

On ``benchmarks/harness.py``: in-process sides, interleaved over the repeats; the figure is pairs
per second of the optimizer steps alone (``Run.seconds``), quality the final batch loss, which must
match between the sides (same numbers, different work). Writes
``results/bench_dpo_training.json``::

    OMP_NUM_THREADS=2 python benchmarks/bench_dpo_training.py --adapter ~/.cache/llmapps/adapters/news-riddle-gemma-3-270m-demo --pairs PAIRS.jsonl
    python benchmarks/bench_dpo_training.py --quick      # tiny-base, a 4-step tiny adapter, 2 steps
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import harness


def _quick_inputs(tmp: Path) -> tuple[Path, Path]:
    """A tiny SFT adapter (4 steps) and 4 pairs from the train split (reference vs leaky riddle)."""
    import os

    os.environ.setdefault("LLMAPPS_BASE_MODEL", "tiny-base")
    from finetune.recipe import load_recipe
    from finetune.train import train
    from llmapps.evaluate.preferences import write_pairs

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from testkit import leaky_pairs  # the same pairs tests/test_dpo.py trains on, a shorter leak

    sft = tmp / "sft"
    fast = {"training.max_steps": 4, "training.batch_size": 4, "training.max_length": 320}
    train(load_recipe("tiny", **fast), sft, progress=False, overwrite=True)
    pairs = leaky_pairs(4, "It is {answer}.")
    write_pairs(tmp / "pairs.jsonl", pairs)
    return sft, tmp / "pairs.jsonl"


class DpoSide:
    """One side: a loaded base + parent adapter, reset to the parent's weights before each run."""

    def __init__(
        self, adapter: Path, pairs: Path, *, full_logits: bool, steps: int, max_length: int
    ):
        import torch
        from peft import PeftModel

        from finetune.dpo import PairCollator, _reference_logps, _tokenize_pairs
        from llmapps.adapters import read_manifest
        from llmapps.evaluate.preferences import read_pairs
        from llmapps.models.local import load_pretrained, resolve_model_path
        from llmapps.settings import get_settings
        from prompts import load_task

        m = read_manifest(adapter)
        settings = get_settings()
        base, tok = load_pretrained(
            resolve_model_path(m.base_model, settings), "cpu", "float32", settings
        )
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
        self.start = {k: v.clone() for k, v in self.model.state_dict().items() if "lora_" in k}
        rows = _tokenize_pairs(load_task(m.prompt), read_pairs(pairs), tok, max_length)
        ref = _reference_logps(self.model, rows, tok.pad_token_id, 1)
        collate = PairCollator(tok.pad_token_id, ref)
        self.batches = [collate([rows[i % len(rows)]]) for i in range(steps)]
        self.full_logits, self.steps = full_logits, steps
        self.tokens = sum(int(b["input_ids"].numel()) for b in self.batches)
        self.torch = torch

    def __call__(self) -> harness.Run:
        from finetune.dpo import DpoTraining, pair_logps, preference_loss

        torch = self.torch
        with torch.no_grad():  # back to the parent's weights: every run does the same work
            for k, p in self.model.named_parameters():
                if k in self.start:
                    p.copy_(self.start[k])
        torch.manual_seed(0)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
        training = DpoTraining()
        loss_value = float("nan")
        started = time.perf_counter()
        for b in self.batches:
            sums, counts = pair_logps(
                self.model, b["input_ids"], b["labels"], full_logits=self.full_logits
            )
            ref = b["ref_logps"].to(torch.float32)
            loss, _ = preference_loss(
                training, sums[:1], sums[1:], counts[:1], counts[1:], ref[:1], ref[1:]
            )
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())
        secs = time.perf_counter() - started
        return harness.Run(
            work=float(self.steps),
            seconds=secs,
            info={"quality": {"final_loss": round(loss_value, 5)}, "tokens": self.tokens},
        )


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", type=Path, help="the parent SFT adapter")
    ap.add_argument("--pairs", type=Path, help="a pairs file (llmapps finetune pairs)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run (1 pair each)")
    ap.add_argument("--max-length", type=int, default=640)
    harness.add_arguments(ap)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    if args.quick:
        args.adapter, args.pairs = _quick_inputs(tmp)
        args.steps, args.max_length = 2, 320
    if not args.adapter or not args.pairs:
        ap.error("--adapter and --pairs are needed (or --quick)")
    import torch

    sides = [
        harness.Side(
            name,
            DpoSide(
                args.adapter,
                args.pairs,
                full_logits=full_logits,
                steps=args.steps,
                max_length=args.max_length,
            ),
            role="peer" if full_logits else "ours",
            dtype="float32",
            threads=torch.get_num_threads(),
            batch_size=1,
        )
        for name, full_logits in (
            ("dpo reply-only logits (finetune)", False),
            ("dpo full-vocabulary logits (TRL's CPU path, our loop)", True),
        )
    ]
    trl = importlib.util.find_spec("trl") is not None
    if trl:
        from dpo_trl import TrlSide

        from finetune.dpo import DpoTraining

        trl_side = TrlSide(
            args.adapter,
            args.pairs,
            steps=args.steps,
            max_length=args.max_length,
            beta=DpoTraining().beta,
        )
        sides.append(
            harness.Side(
                "TRL DPOTrainer (PEFT, precomputed reference)",
                trl_side,
                role="peer",
                dtype="float32",
                threads=torch.get_num_threads(),
                batch_size=1,
            )
        )
    m = harness.measure_with(args, sides, harness.Metric("pairs/s"))
    harness.finish(
        "bench_dpo_training",
        m,
        args,
        config={
            "adapter": str(args.adapter),
            "pairs": str(args.pairs),
            "steps": args.steps,
            "max_length": args.max_length,
            "trl_side": "benchmarks/dpo_trl.py" if trl else "not run: trl is not installed",
        },
        what="DPO optimizer steps per second of pairs, reply-only vs full-vocabulary logits",
        argv=argv,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
