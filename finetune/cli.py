"""``llmapps finetune ...``: train, resume, merge and check adapters (a CLI plugin of llmapps).

Registered through the command line's entry point ``finetune = "finetune.cli:register"``, which
hands ``register`` the shared flags module::

    llmapps finetune lora --recipe finetune/recipes/tiny.yaml --out adapters/news-riddle-tiny
    llmapps finetune lora --recipe tiny --out adapters/news-riddle-tiny --resume
    llmapps finetune merge adapters/news-riddle-tiny --out merged/news-riddle-tiny
    llmapps finetune recipes            # the shipped recipes, validated

Preference tuning (rate -> pairs -> dpo -> bench)::

    llmapps finetune pairs --ratings RUN/human-eval/ratings.jsonl --key RUN/human-eval/key.json --out pairs.jsonl
    llmapps finetune pairs --sample 4 --adapter SFT_DIR --limit 12 --out pairs.jsonl
    llmapps finetune dpo --adapter SFT_DIR --pairs pairs.jsonl --out DPO_DIR [--loss simpo]
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from llmapps.errors import ConfigError


def _overrides(items: list[str]) -> dict[str, Any]:
    """``--set training.max_steps=20`` items as dotted recipe overrides (the core's one parser)."""
    from llmapps.options import parse_assignments

    return parse_assignments(items, "--set", dotted=True)


def _reward_weights(items: list[str]) -> dict[str, float]:
    """``--reward solvability@1=0.5`` items: a metric column as the bench names it (verbatim,
    ``@`` and all) and a number."""
    out: dict[str, float] = {}
    for item in items:
        metric, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not metric.strip() or not math.isfinite(weight):
            raise ConfigError(
                f"--reward {item!r}: expected METRIC=WEIGHT with a number, e.g. --reward leakage=-4 "
                "or --reward solvability@1=0"
            )
        out[metric.strip()] = weight
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from finetune.recipe import load_recipe
    from finetune.train import train
    from llmapps.files import writing

    overrides = _overrides(args.set)
    if args.base_model:
        overrides["base_model"] = args.base_model
    recipe = load_recipe(args.recipe, **overrides)
    if recipe.method != args.method:  # the recipe's method: key picks the method, never the action
        raise ConfigError(
            f"the recipe {args.recipe!r} trains {recipe.method!r} (its method: key), not {args.method!r}: "
            f"run `llmapps finetune {recipe.method} --recipe {args.recipe}`, or --set method={args.method}"
        )
    out = Path(args.out) if args.out else Path("adapters") / recipe.name
    with writing(out, [recipe.base_model], kind="folder"):  # one trainer per folder
        result = train(
            recipe, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet
        )
    m = result.metrics
    print(f"adapter: {result.adapter}")
    print(
        f"validation loss {m['eval_loss']:.4f}, perplexity {m['eval_perplexity']:.2f}, "
        f"{m['steps']} steps, {m['tokens_per_s']} tokens/s"
    )
    for e in m["epochs"]:
        print(
            f"  epoch {e['epoch']:.2f}: validation loss {e['eval_loss']:.4f}, perplexity {e['eval_perplexity']:.2f}"
        )
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from finetune.merge import merge_adapter
    from llmapps.files import writing

    # the merged folder replaces --out whole: it must not be (or hold) the adapter or the base
    with writing(args.out, [args.adapter, args.base_model], kind="folder"):
        out = merge_adapter(args.adapter, args.out, base_model=args.base_model)
    print(f"merged model: {out} (load it with AutoModelForCausalLM.from_pretrained)")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from finetune.dpo import list_dpo_recipes, load_dpo_recipe
    from finetune.recipe import list_recipes, load_recipe

    shelves: list[tuple[Any, Any, Any]] = [
        (
            list_recipes,
            load_recipe,
            lambda r: f"{r.method:14} base={r.base_model}  {r.description}",
        ),
        (
            list_dpo_recipes,
            load_dpo_recipe,
            lambda d: f"{d.training.loss:14} on an SFT adapter  {d.description}",
        ),
    ]
    bad = 0
    for listing, load, describe in shelves:
        for path in listing():
            try:
                print(f"{path.stem:12} {describe(load(path))}")
            except ConfigError as err:
                bad += 1
                print(f"{path.stem:12} INVALID: {err}")
    return 2 if bad else 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmapps.evaluate.preferences import write_pairs
    from llmapps.files import writing

    out = Path(args.out)
    if bool(args.ratings) == bool(args.sample):
        raise ConfigError(
            "finetune pairs: give --ratings FILE --key KEY (people's A/B ratings) or "
            "--sample K --adapter DIR (AI feedback), one of the two"
        )
    if args.ratings:
        from finetune.pairs import human_pairs

        if not args.key:
            raise ConfigError("--ratings needs --key: the key.json exported with the sheet")
        with writing(out, [*args.ratings, args.key], kind="file"):
            report, _app = human_pairs(
                [Path(r) for r in args.ratings],
                Path(args.key),
                Path(args.run) if args.run else None,
            )
            digest = write_pairs(out, report.pairs)
        print(report.summary())
        print(f"pairs: {out} (sha256 {digest[:16]})")
        return 0 if report.pairs else 1
    from finetune.pairs import REWARD_WEIGHTS, ai_feedback_pairs
    from llmapps.options import parse_assignments

    if not args.adapter:
        raise ConfigError("--sample needs --adapter: the adapter folder to sample replies from")
    weights = dict(REWARD_WEIGHTS)
    weights.update(_reward_weights(args.reward))
    samples_out = Path(args.samples) if args.samples else out.with_suffix(".samples.jsonl")
    # the sampling flags go by their own names
    knobs = (
        "limit",
        "temperature",
        "top_p",
        "seed",
        "margin",
        "pairing",
        "articles",
        "base_model",
        "max_new_tokens",
    )
    with writing(out, [args.adapter], kind="file"):
        pairs, counts = ai_feedback_pairs(
            args.app,
            args.adapter,
            samples_out,
            k=args.sample,
            splits=[s.strip() for s in args.split.split(",") if s.strip()],
            weights=weights,
            chain_options=parse_assignments(args.set, "--set"),
            progress=not args.quiet,
            **{k: getattr(args, k) for k in knobs},
        )
        digest = write_pairs(out, pairs)
    print(", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    print(f"pairs: {out} (sha256 {digest[:16]}); every reply and its reward: {samples_out}")
    return 0 if pairs else 1


def cmd_dpo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from finetune.dpo import load_dpo_recipe, train_dpo
    from llmapps.files import writing

    overrides = _overrides(args.set)
    if args.loss:
        overrides["training.loss"] = args.loss
    recipe = load_dpo_recipe(args.recipe, **overrides)
    out = Path(args.out)
    sources = [s for s in (args.adapter or recipe.adapter, args.pairs or recipe.pairs) if s]
    with writing(out, sources, kind="folder"):
        given = {k: getattr(args, k) for k in ("adapter", "pairs", "resume", "overwrite")}
        result = train_dpo(recipe, out, progress=not args.quiet, **given)
    m = result.metrics
    first, last = m["first_logged"], m["last_logged"]
    print(f"adapter: {result.adapter}")
    print(
        f"{m['loss_type']} loss {first.get('loss')} -> {last.get('loss')}, reward margin "
        f"{first.get('reward_margin')} -> {last.get('reward_margin')}, {m['steps']} steps, "
        f"{m['pairs_per_s']} pairs/s"
    )
    return 0


def register(subparsers: Any, flags: Any) -> None:
    """Add ``finetune`` and its actions to the ``llmapps`` CLI."""
    sub = flags.add_group(
        subparsers, "finetune", "train LoRA / prompt-tuning adapters and merge them"
    )
    for method, helptext in (
        ("lora", "train a LoRA adapter from a recipe"),
        ("prompt-tuning", "train a prompt-tuning adapter from a recipe"),
    ):
        p = sub.add_parser(method, help=helptext)
        flags.add(
            p,
            "resume",
            "overwrite",
            recipe={
                "required": True,
                "help": "recipe YAML path or shipped name (tiny, qwen2.5-0.5b)",
            },
            out="adapter folder (default: adapters/<recipe name>)",
            base_model="override the recipe's base model (hub id or directory)",
            set="override a recipe field, e.g. --set training.max_steps=20 (repeatable)",
        )
        flags.add(p, "quiet")
        p.set_defaults(func=cmd_train, method=method)
    p = sub.add_parser("merge", help="fold an adapter into its base; write a standalone model")
    p.add_argument("adapter", help="adapter folder")
    flags.add(
        p,
        out={"required": True, "help": "folder for the merged model"},
        base_model="where the base lives, if not where the manifest says",
    )
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser(
        "pairs",
        help="build preference pairs from A/B ratings (--ratings) or sampled replies (--sample)",
    )
    flags.add(p, out={"required": True, "help": "the pairs file to write (JSONL)"})
    p.add_argument(
        "--ratings",
        action="append",
        default=[],
        help="ratings.jsonl or filled sheet.csv (repeatable)",
    )
    p.add_argument("--key", help="the sheet's key.json (with --ratings)")
    p.add_argument(
        "--run", help="the bench run the sheet shows (default: the key's folder's parent)"
    )
    p.add_argument("--sample", type=int, metavar="K", help="AI feedback: replies per article")
    flags.add(
        p,
        "seed",
        adapter="AI feedback: the adapter folder to sample from",
        split={"default": "train", "help": "train, validation or both comma-separated"},
        limit="the first N articles of each split",
    )
    p.add_argument("--app", default="news-riddle", help="the app (default news-riddle)")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--margin", type=float, default=0.5, help="least reward gap that makes a pair")
    from finetune.pairs import PAIRINGS  # light: the model code loads when pairs are sampled

    p.add_argument(
        "--pairing",
        choices=PAIRINGS,
        default="best-worst",
        help="one pair an article (best vs worst reply, default) or every two replies whose "
        "rewards differ by --margin",
    )
    p.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="METRIC=WEIGHT",
        help="change or add a reward weight, e.g. --reward leakage=-3 (repeatable)",
    )
    p.add_argument(
        "--articles",
        metavar="FILE",
        help="sample these articles instead of --split: JSONL with id, title and text "
        "(references optional), e.g. `llmapps data augment` output; test-derived rows are refused",
    )
    p.add_argument(
        "--samples", help="where every reply and its reward go (default OUT.samples.jsonl)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a lora strategy option of the sampling chain, e.g. --set structured=off (repeatable)",
    )
    flags.add(
        p,
        base_model="where the base lives, if not where the adapter says",
        max_new_tokens={"help": None},
        quiet={"help": None},
    )
    p.set_defaults(func=cmd_pairs)
    p = sub.add_parser("dpo", help="preference-tune a LoRA adapter on pairs (DPO or SimPO)")
    p.add_argument("--pairs", help="the pairs file (llmapps finetune pairs)")
    p.add_argument("--loss", choices=["dpo", "simpo"], help="override the recipe's training.loss")
    flags.add(
        p,
        "resume",
        "overwrite",
        "set",
        "quiet",
        adapter="the parent (SFT) adapter folder",
        out={"required": True, "help": "the adapter folder to write"},
        recipe={"default": "dpo-gemma-3-270m", "help": "DPO recipe path or shipped name"},
    )
    p.set_defaults(func=cmd_dpo)
    p = sub.add_parser("recipes", help="list and validate the shipped recipes")
    p.set_defaults(func=cmd_recipes)
