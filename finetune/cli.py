"""``llmapps finetune ...``: train, resume, merge and check adapters (a CLI plugin of llmapps).

Registered through the ``llmapps.cli`` entry point ``finetune = "finetune.cli:register"``::

    llmapps finetune lora --recipe finetune/recipes/tiny.yaml --out adapters/news-riddle-tiny
    llmapps finetune lora --recipe tiny --out adapters/news-riddle-tiny --resume
    llmapps finetune merge adapters/news-riddle-tiny --out merged/news-riddle-tiny
    llmapps finetune recipes            # the shipped recipes, validated
"""

from __future__ import annotations

import argparse
from typing import Any


def _overrides(items: list[str]) -> dict[str, Any]:
    """``--set training.max_steps=20`` items as dotted recipe overrides (the core's one parser)."""
    from llmapps.options import parse_assignments

    return parse_assignments(items, "--set", dotted=True)


def cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from finetune.recipe import load_recipe
    from finetune.train import train
    from llmapps.errors import ConfigError
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
    from finetune.recipe import list_recipes, load_recipe
    from llmapps.errors import ConfigError

    bad = 0
    for path in list_recipes():
        try:
            r = load_recipe(path)
            print(f"{path.stem:12} {r.method:14} base={r.base_model}  {r.description}")
        except ConfigError as err:
            bad += 1
            print(f"{path.stem:12} INVALID: {err}")
    return 2 if bad else 0


def register(subparsers: Any) -> None:
    """Add ``finetune`` and its actions to the ``llmapps`` CLI."""
    ft = subparsers.add_parser(
        "finetune", help="train LoRA / prompt-tuning adapters and merge them"
    )
    sub = ft.add_subparsers(dest="finetune_command", metavar="ACTION", required=True)
    for method, helptext in (
        ("lora", "train a LoRA adapter from a recipe"),
        ("prompt-tuning", "train a prompt-tuning adapter from a recipe"),
    ):
        p = sub.add_parser(method, help=helptext)
        p.add_argument(
            "--recipe",
            "-r",
            required=True,
            help="recipe YAML path or shipped name (tiny, qwen2.5-0.5b)",
        )
        p.add_argument("--out", "-o", help="adapter folder (default: adapters/<recipe name>)")
        p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        p.add_argument(
            "--overwrite", action="store_true", help="discard an earlier run's checkpoints"
        )
        p.add_argument(
            "--base-model", help="override the recipe's base model (hub id or directory)"
        )
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help="override a recipe field, e.g. --set training.max_steps=20 (repeatable)",
        )
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        p.set_defaults(func=cmd_train, method=method)
    p = sub.add_parser("merge", help="fold an adapter into its base; write a standalone model")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("--out", "-o", required=True, help="folder for the merged model")
    p.add_argument("--base-model", help="where the base lives, if not where the manifest says")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("recipes", help="list and validate the shipped recipes")
    p.set_defaults(func=cmd_recipes)
