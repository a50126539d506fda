"""``llmapps models build|list``: the packaged pretrained models and the tiny ones."""

from __future__ import annotations

import argparse
from typing import Any

from llmapps.errors import ConfigError


def cmd_models_build(args: argparse.Namespace) -> int:
    import shutil

    from llmapps.apps import default_corpus
    from llmapps.models.packaged import ensure_packaged_model, is_packaged, packaged_models
    from llmapps.models.tiny import TEST_SPEC, TinySpec, ensure_tiny_models
    from llmapps.settings import get_settings

    settings = get_settings()
    names = args.names or [settings.base_model, settings.instruct_model]
    tiny = [n for n in names if n in ("tiny-base", "tiny-instruct")]
    unknown = [n for n in names if n not in tiny and not is_packaged(n)]
    if unknown:
        known = ["tiny-base", "tiny-instruct", *packaged_models()]
        raise ConfigError(
            f"cannot build {', '.join(unknown)}: llmapps builds {', '.join(known)} "
            "(hub ids, folders and .gguf files are used as they are)"
        )
    for name in dict.fromkeys(names):
        if args.force:
            shutil.rmtree(settings.models_dir / name, ignore_errors=True)
        if is_packaged(name):
            print(f"{name}: {ensure_packaged_model(name, settings)}")
    if tiny:
        spec = TEST_SPEC if args.spec == "test" else TinySpec()
        ensure_tiny_models(settings.models_dir, spec, corpus=default_corpus)
        print(f"tiny-base and tiny-instruct are in {settings.models_dir}")
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    import json

    from llmapps.models.packaged import folder_size, packaged_models, read_model_manifest
    from llmapps.settings import get_settings

    settings = get_settings()
    print(f"{'name':23} {'kind':9} {'state':10} {'size':>8}  source")
    for name, entry in packaged_models().items():
        folder = settings.models_dir / name
        manifest = read_model_manifest(folder)
        state = "built" if manifest else "not built"
        size = f"{folder_size(folder) / 2**20:,.0f} MB" if manifest else "-"
        print(
            f"{name:23} {entry.kind:9} {state:10} {size:>8}  pip: {entry.package} ({entry.gguf_file})"
        )
    for name in ("tiny-base", "tiny-instruct"):
        folder = settings.models_dir / name
        manifest_path = folder / "llmapps-tiny.json"
        built = manifest_path.exists()
        size = f"{folder_size(folder) / 2**20:,.0f} MB" if built else "-"
        detail = ""
        if built:
            data = json.loads(manifest_path.read_text())
            detail = f", final loss {data.get('final_loss', float('nan')):.3f}"
        kind = "base" if name == "tiny-base" else "instruct"
        print(
            f"{name:23} {kind:9} {'built' if built else 'not built':10} {size:>8}  "
            f"trained here on the bundled articles{detail}"
        )
    print(f"models folder: {settings.models_dir}")
    print(f"base model in use:     {settings.base_model}")
    print(f"instruct model in use: {settings.instruct_model}")
    return 0


def register(subparsers: Any, flags: Any) -> None:
    """Add ``models`` (``build``, ``list``)."""
    msub = flags.add_group(subparsers, "models", "the packaged pretrained models and the tiny ones")
    p = msub.add_parser("build", help="convert packaged models / train the tiny ones, once")
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="gemma-3-270m, smollm2-135m-instruct, tiny-base, tiny-instruct "
        "(default: the base and instruct models in use)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if built")
    p.add_argument(
        "--spec", choices=["default", "test"], default="default", help="tiny models' size"
    )
    p.set_defaults(func=cmd_models_build)
    p = msub.add_parser("list", help="show the models and where they are")
    p.set_defaults(func=cmd_models_list)
