"""The adapter folder contract, shared by the training side and the ``lora`` strategy.

An adapter folder holds PEFT's files (``adapter_config.json``, ``adapter_model.safetensors``), the
tokenizer, and ``llmapps-adapter.json``: the manifest defined here by ``AdapterManifest`` (base
model and the hash of its weights, task and prompt layout hash, recipe, metrics, library
versions, the SHA-256 of every other file and of itself). Whoever trains adapters writes the
folder with ``write_adapter_folder``; whoever loads one reads it with ``read_manifest``, checks
its base with ``check_base`` and proves it active with ``check_adapter_active``. Neither side
imports the other: they share this module and the folder.

Training is reached through the ``trainers`` registry (entry-point group ``llmapps.trainers``):
an ``AdapterTrainer`` takes a recipe name or path and an output folder and returns the folder it
wrote, raising the library's typed errors (``ConfigError``, ``InputError``, ...). The project's
own trainer (``finetune``) registers as ``peft``. To add one, declare an entry point::

    [project.entry-points."llmapps.trainers"]
    my-trainer = "my_package.train:train_recipe"

Guarantees of ``read_manifest``: nothing in the folder is trusted. It refuses a manifest of
another format, an edited manifest, any file that changed, went missing or was added where PEFT
would load it, a method that disagrees with the PEFT config, and pickle files (``.bin``)
outright; each in one line. Format 2 (SHA-256 of every file) is the only one ever written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from llmapps.errors import ConfigError
from llmapps.folders import atomic_folder
from llmapps.hashing import sha256_file
from llmapps.jsonl import atomic_write, json_checksum, read_manifest_json
from llmapps.registry import Registry

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from llmapps.settings import Settings
    from llmapps.tasks import CompletionLayout

MANIFEST_NAME = "llmapps-adapter.json"
MANIFEST_FORMAT = 2  # 2: SHA-256 of every adapter file and of the manifest itself
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Files PEFT or transformers would read from an adapter folder: none may be there unlisted.
_LOADABLE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt", ".json", ".model")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_PEFT_TYPES = {"lora": "LORA", "prompt-tuning": "PROMPT_TUNING"}
_RETRAIN = "retrain it with `llmapps finetune lora --recipe RECIPE --out DIR`"
# A neutral probe text (no app's labels): any text shows whether an adapter changes the logits.
PROBE_TEXT = "The council voted on Tuesday to rebuild the old bridge before winter."


class AdapterManifest(BaseModel):
    """``llmapps-adapter.json``: the contract between a trainer and the ``lora`` strategy.

    Attributes:
        format: manifest format version.
        method: the PEFT method (``lora`` or ``prompt-tuning``).
        base_model: the base as the recipe named it (hub id, directory or ``tiny-base``).
        base_model_sha256: hash of the base's weight files (see ``model_fingerprint``).
        task: the task name the adapter was trained on (``Task.name``).
        prompt: the prompt file the training data was formatted with.
        prompt_sha256: hash of the completion layout (see ``layout_hash``).
        recipe: the resolved training recipe.
        metrics: training and validation figures.
        versions: library versions used for training.
        created: ISO timestamp.
        files: SHA-256 of every file of the folder but the manifest (set by ``write_manifest``).
        checksum: SHA-256 of the manifest's other fields (set by ``write_manifest``).
    """

    model_config = ConfigDict(extra="forbid")

    format: int = MANIFEST_FORMAT
    method: Literal["lora", "prompt-tuning"]
    base_model: str
    base_model_sha256: str
    task: str
    prompt: str
    prompt_sha256: str
    recipe: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    created: str = ""
    files: dict[str, str] = Field(default_factory=dict)
    checksum: str = ""


class TrainOptions(TypedDict, total=False):
    """How an ``AdapterTrainer`` runs, all optional: ``overwrite`` (start afresh over an earlier
    run's checkpoints; default False), ``resume`` (continue an interrupted run of the same recipe;
    False), ``progress`` (a progress bar; True), ``settings`` (device, home; default: the
    environment's)."""

    overwrite: bool
    resume: bool
    progress: bool
    settings: Settings | None


class AdapterTrainer(Protocol):
    """Trains the adapter a recipe describes into ``out`` and returns ``out``; knows which of its
    recipes is the short demo of a base (``llmapps demo``, the ``lora`` strategy's default).

    Raises the library's typed errors (``ConfigError``, ``InputError``, ``ModelNotFoundError``,
    ``BackendError``); never prints or exits.
    """

    def __call__(self, recipe: str, out: Path, **options: Unpack[TrainOptions]) -> Path: ...

    def demo_recipe(self, base_model: str) -> DemoRecipe | None:
        """The demo recipe of ``base_model`` (None: it has none)."""
        ...

    def demo_bases(self) -> list[str]:
        """The bases that have a demo recipe."""
        ...


class DemoRecipe(BaseModel):
    """A trainer's demo recipe for one base: what to train, and the adapter folder's name
    (under ``$LLMAPPS_HOME/adapters/``)."""

    model_config = ConfigDict(frozen=True)

    recipe: str
    adapter: str
    # The adapter folder of the base's full recipe (same place): used instead of the demo's
    # once someone has trained it there and it matches the base.
    full_adapter: str | None = None


trainers: Registry[AdapterTrainer] = Registry("adapter trainer", "llmapps.trainers")


def get_trainer(name: str = "peft") -> AdapterTrainer:
    """The registered trainer ``name`` (``UnknownComponentError`` lists the installed ones)."""
    return trainers.get(name)


def layout_hash(layout: CompletionLayout) -> str:
    """A short hash of a completion layout, so a prompt edited after training is noticed."""
    h = hashlib.sha256()
    for part in (layout.prefix, layout.example_template, layout.suffix, layout.separator):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


_FP_CACHE: dict[tuple[str, float, int], str] = {}


def _weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def model_fingerprint(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) over a model folder's weight files, cached per process.

    A hub id is looked up in the local Hugging Face cache (never downloaded here).
    """
    folder = Path(path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(path), local_files_only=True))
        except Exception as err:
            raise ConfigError(
                f"cannot find the weights of {path!r} on this machine to check them against the "
                "adapter's manifest; pass base_model=DIR (--base-model) pointing to them"
            ) from err
    files = _weight_files(folder)
    if not files:
        raise ConfigError(f"{folder} holds no weight files (*.safetensors or *.bin)")
    key = (
        str(folder.resolve()),
        max(f.stat().st_mtime for f in files),
        sum(f.stat().st_size for f in files),
    )
    cached = _FP_CACHE.get(key)
    if cached:
        return cached
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    _FP_CACHE[key] = h.hexdigest()[:16]
    return _FP_CACHE[key]


def read_manifest(adapter: str | Path, *, verify_files: bool = True) -> AdapterManifest:
    """Read, validate and (by default) verify an adapter folder; one line says what is wrong.

    Raises:
        ConfigError: no folder or manifest; a manifest that is not UTF-8 JSON, of another format,
            fails ``AdapterManifest`` or its own checksum; with ``verify_files``, a listed file that
            is missing, a link or changed, an unlisted file PEFT would load, a pickle file, or a
            method that disagrees with ``adapter_config.json``.
    """
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"adapter folder {folder} does not exist; train one with "
            "`llmapps finetune lora --recipe finetune/recipes/tiny.yaml --out DIR`"
        )
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ConfigError(
            f"{folder} has no {MANIFEST_NAME}: only adapters written by `llmapps finetune` are "
            "loaded (the manifest names the base model and prompt they were trained with)"
        )

    def known_format(data: dict[str, Any]) -> None:
        if data.get("format") != MANIFEST_FORMAT:
            raise ConfigError(
                f"{path} is of manifest format {str(data.get('format'))[:20]!r}; this llmapps reads "
                f"format {MANIFEST_FORMAT} only (with file hashes): {_RETRAIN}"
            )

    manifest = read_manifest_json(
        path, AdapterManifest, error=ConfigError, hint=_RETRAIN, check=known_format
    )
    if verify_files:
        verify_adapter_files(folder, manifest)
    return manifest


def verify_adapter_files(folder: Path, manifest: AdapterManifest) -> None:
    """Check the folder against the manifest's file hashes (see ``read_manifest``)."""
    retrain = "retrain it with `llmapps finetune lora`"
    for f in sorted(folder.iterdir()):
        if f.name == MANIFEST_NAME:
            continue
        if f.suffix in _PICKLE_SUFFIXES:
            raise ConfigError(
                f"{f} is a pickle file, which can run code when loaded; adapters are loaded from "
                f"safetensors only: delete it, or {retrain}"
            )
        if f.name not in manifest.files and (f.is_dir() or f.suffix in _LOADABLE_SUFFIXES):
            raise ConfigError(
                f"{f} is not one of the files training wrote (not in the manifest); remove it, or {retrain}"
            )
    for name, digest in manifest.files.items():
        f = folder / name
        if (
            "/" in name
            or "\\" in name
            or name in ("", ".", "..")
            or not f.is_file()
            or f.is_symlink()
        ):
            raise ConfigError(
                f"{folder}: the manifest lists {name[:80]!r}, which is missing or not a plain file there; {retrain}"
            )
        if sha256_file(f) != digest:
            raise ConfigError(
                f"{f} changed since training wrote it (its SHA-256 does not match the manifest); {retrain}"
            )
    if "adapter_config.json" not in manifest.files:
        raise ConfigError(f"{folder}: the manifest lists no adapter_config.json; {retrain}")
    try:
        peft_type = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get(
            "peft_type"
        )
    except (ValueError, AttributeError) as err:
        raise ConfigError(
            f"{folder / 'adapter_config.json'} is not a JSON object; {retrain}"
        ) from err
    if peft_type != _PEFT_TYPES[manifest.method]:
        raise ConfigError(
            f"{folder}: the manifest says method {manifest.method!r}, but adapter_config.json holds a "
            f"{peft_type!r} adapter; {retrain}"
        )


def write_manifest(folder: str | Path, manifest: AdapterManifest) -> Path:
    """Write ``manifest`` into ``folder`` with the SHA-256 of every other file there and its own.

    Call it last, in a staging folder, once every file of the adapter is written.
    """
    folder = Path(folder)
    files = {
        f.name: sha256_file(f)
        for f in sorted(folder.iterdir())
        if f.is_file() and not f.is_symlink() and f.name != MANIFEST_NAME
    }
    data = manifest.model_copy(
        update={"format": MANIFEST_FORMAT, "files": files, "checksum": ""}
    ).model_dump(mode="json")
    data["checksum"] = json_checksum(data)
    return atomic_write(folder / MANIFEST_NAME, json.dumps(data, indent=2))


def write_adapter_folder(model: Any, tokenizer: Any, out: Path, manifest: AdapterManifest) -> Path:
    """Save a PEFT model's adapter, its tokenizer and the manifest into ``out``, atomically.

    The files go into a staging folder, the manifest last, and the folder is renamed to ``out``:
    a folder that holds a manifest is complete.
    """
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, manifest)
    return out


def check_base(
    manifest: AdapterManifest, path: str, *, adapter: str | Path, name: str | None = None
) -> None:
    """Refuse a base whose weights do not hash to the manifest's ``base_model_sha256``.

    Raises:
        ConfigError: the weights differ (names both hashes and how to fix it).
    """
    found = model_fingerprint(path)
    if found != manifest.base_model_sha256:
        raise ConfigError(
            f"the adapter in {adapter} was trained on {manifest.base_model!r} "
            f"(weights {manifest.base_model_sha256}), but {name or manifest.base_model!r} at {path} "
            f"has weights {found}: point --base-model to the base it was trained on, or retrain "
            "the adapter on this base with `llmapps finetune lora`"
        )


def load_peft(base: Any, folder: Path, name: str) -> Any:
    """Load the adapter in ``folder`` onto ``base`` under ``name`` (a ``PeftModel`` comes back)."""
    from peft import PeftModel

    try:
        if hasattr(base, "peft_config"):
            base.load_adapter(str(folder), adapter_name=name)
            return base
        return PeftModel.from_pretrained(base, str(folder), adapter_name=name)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ConfigError(
            f"cannot load the adapter in {folder} onto its base: {err}. Is it trained for this "
            "architecture? Retrain it with `llmapps finetune lora`."
        ) from err


def check_adapter_active(
    peft_model: Any, adapter_name: str, tokenizer: Any, folder: str | Path
) -> float:
    """Prove the adapter changes the model: the largest logit change on a probe text.

    Raises:
        ConfigError: the change is zero (a no-op or mis-targeted adapter).
    """
    import torch

    with torch.inference_mode():
        peft_model.set_adapter(adapter_name)
        ids = tokenizer(PROBE_TEXT, add_special_tokens=True)["input_ids"]
        ids_t = torch.tensor([ids], dtype=torch.long, device=next(peft_model.parameters()).device)
        on = peft_model(input_ids=ids_t).logits.float()
        with peft_model.disable_adapter():
            off = peft_model(input_ids=ids_t).logits.float()
    delta = float((on[:, -off.shape[1] :] - off).abs().max())
    if not delta > 1e-6:
        raise ConfigError(
            f"the adapter in {folder} does not change the base model's output (largest logit "
            f"change {delta:.1e}): its weights are all zero or target modules this base does not "
            "have. Retrain it with `llmapps finetune lora` against this base."
        )
    return delta
