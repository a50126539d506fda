"""``llmapps data augment APP --out FILE``: augmented training rows from an app's train split.

Only the train split is read (``AppSpec.training_examples("train")``): validation and test rows
never reach a transform. The fields come from the app (``input_keys`` + ``reference_keys``); the
body is ``--body`` or the app's long input (its ``UiSpec.long_inputs``) or its longest input.
``--teacher-url`` adds distilled rows from an OpenAI-compatible endpoint (the ``service``
strategy), kept only when the bench's checks pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from llmapps.data.rows import SPLIT, fields_of, train_rows
from llmapps.errors import ConfigError


def _teacher(args: argparse.Namespace, spec: Any, rows: list[dict[str, Any]], fields: Any) -> Any:
    from llmapps.apps import load_chain
    from llmapps.data.augment import teacher_rows
    from llmapps.runner import run_batches

    options: dict[str, Any] = {"base_url": args.teacher_url}
    if args.teacher_model:
        options["model"] = args.teacher_model
    chain = load_chain(spec.name, "service", **options)
    inputs = [{k: r[k] for k in (*spec.input_keys, "id") if k in r} for r in rows]
    outs = run_batches(chain, inputs, batch_size=args.batch_size, progress=False)
    mf = spec.metric_fields
    return teacher_rows(
        rows,
        outs,
        fields,
        target=mf.target,
        answer=mf.answer,
        leak=mf.leak,
        copy=mf.copy,
        max_leakage=args.max_leakage,
    )


def cmd_augment(args: argparse.Namespace) -> int:
    from llmapps.apps import get_app
    from llmapps.data.augment import TRANSFORMS, augment_rows
    from llmapps.files import writing
    from llmapps.jsonl import atomic_write, write_jsonl

    spec = get_app(args.app)
    fields = fields_of(spec, args.body)
    transforms = [t.strip() for t in args.transforms.split(",") if t.strip()]
    unknown = [t for t in transforms if t not in (*TRANSFORMS, "teacher")]
    if unknown:
        raise ConfigError(
            f"--transforms: unknown {', '.join(unknown)}; use {', '.join(TRANSFORMS)} or teacher"
        )
    if "teacher" in transforms and not args.teacher_url:
        raise ConfigError(
            "--transforms teacher needs --teacher-url URL (an OpenAI-compatible endpoint, "
            "e.g. `llmapps serve`); leave teacher out to augment without a model"
        )
    if args.teacher_url and "teacher" not in transforms:
        transforms.append("teacher")
    with writing(args.out) as out:
        rows = train_rows(spec)[: args.limit] if args.limit else train_rows(spec)
        made = augment_rows(
            rows,
            fields,
            transforms=[t for t in transforms if t != "teacher"],
            copies=args.copies,
            seed=args.seed,
            drop_share=args.drop_share,
        )
        dropped: dict[str, int] = {}
        if "teacher" in transforms:
            taught, dropped = _teacher(args, spec, rows, fields)
            made += taught
        write_jsonl(out, made)
    counts = Counter(r["transform"] for r in made)
    manifest = {
        "app": spec.name,
        "split": SPLIT,
        "source_rows": len(rows),
        "rows": len(made),
        "by_transform": dict(counts),
        "seed": args.seed,
        "copies": args.copies,
        "drop_share": args.drop_share,
        "teacher_dropped": dropped,
    }
    atomic_write(Path(str(out) + ".json"), json.dumps(manifest, indent=2) + "\n")
    by = ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "none"
    print(f"{len(made)} rows from {len(rows)} {SPLIT} rows of {spec.name} ({by}) -> {out}")
    if dropped:
        print(f"teacher rows dropped by the checks: {dropped}", file=sys.stderr)
    return 0


def register(subparsers: Any, flags: Any) -> None:
    """Add ``data augment`` to the ``llmapps`` command line."""
    sub = flags.add_group(subparsers, "data", "grow an app's training data (augment)", metavar=None)
    a = sub.add_parser(
        "augment",
        help="new training rows from the train split (entity swaps, sentence order/drop, teacher)",
    )
    flags.add(
        a,
        app="the app whose train split is augmented (`llmapps apps` lists them)",
        out={"required": True, "help": "JSONL to write (a .json summary beside it)"},
        seed="the same seed gives the same rows",
        limit="only the first N train rows",
        batch_size={"default": 4, "help": "teacher requests per batch"},
    )
    a.add_argument(
        "--transforms",
        default="entity-swap,sentence-order,sentence-drop",
        help="comma-separated: entity-swap, sentence-order, sentence-drop, teacher",
    )
    a.add_argument("--copies", type=int, default=1, help="variants per row and transform")
    a.add_argument(
        "--drop-share", type=float, default=0.25, help="sentence-drop: at most this share"
    )
    a.add_argument("--body", help="the input field sentence transforms rewrite (default: auto)")
    a.add_argument("--teacher-url", help="OpenAI-compatible endpoint whose outputs are distilled")
    a.add_argument("--teacher-model", help="the model name the endpoint serves")
    a.add_argument(
        "--max-leakage",
        type=float,
        default=0.5,
        help="teacher rows leaking more of the answer/title content words are dropped",
    )
    a.set_defaults(func=cmd_augment)
