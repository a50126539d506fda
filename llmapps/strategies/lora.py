"""``lora``: a base model with our own fine-tuned adapter (LoRA or prompt tuning, via PEFT).

The seed's fourth path. Training lives in ``finetune/`` (``llmapps finetune lora``); this module
never imports it. The two meet through the **adapter folder**: PEFT's files (``adapter_config.json``,
``adapter_model.safetensors``) plus ``llmapps-adapter.json``, the manifest defined here by
``AdapterManifest`` (base model and the hash of its weights, task and prompt layout hash, recipe,
metrics, library versions). Training writes it with ``write_manifest``; this strategy reads it.

At inference the prompt is the task's completion layout with **zero** examples
(``task.completion.render(inputs, [])``), exactly what training formatted; the model continues it.

Guarantees:

- a base whose weights do not hash to the manifest's is refused (``ConfigError``);
- an adapter that changes nothing (all-zero LoRA weights, or weights that did not land on any
  module of this base) is refused: the logits of a probe text are compared with the adapter on
  and off;
- several adapters share one loaded base: each is loaded under its own name and switched on
  under a lock for every call, so ``load_chain(..., adapter=A)`` and ``adapter=B`` cost one base;
- ``merge=True`` folds the adapter into a private copy of the base for speed;
- nothing in the folder is trusted: the manifest records the SHA-256 of every file training wrote
  (weights, PEFT config, tokenizer) and of itself, ``read_manifest`` refuses a manifest of another
  format, an edited manifest, any file that changed, went missing or was added where PEFT would
  load it, a method that disagrees with the PEFT config, and pickle files (``.bin``) outright;
  each in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmapps.errors import BackendError, ConfigError
from llmapps.hashing import sha256_file
from llmapps.jsonl import atomic_write, json_checksum
from llmapps.models.local import LocalModel
from llmapps.strategies.base import Strategy, StrategyConfig

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.settings import Settings
    from llmapps.tasks import CompletionLayout, Task

log = logging.getLogger(__name__)

MANIFEST_NAME = "llmapps-adapter.json"
MANIFEST_FORMAT = 2  # 2: SHA-256 of every adapter file and of the manifest itself
DEMO_ADAPTER = "news-riddle-tiny"
# The recipe the demo trains for each base it knows (by the base's name in settings.base_model),
# and the adapter folder it writes under $LLMAPPS_HOME/adapters/: the short Gemma recipe keeps
# the first run within 5 minutes on 2 CPU cores.
DEMO_RECIPES = {
    "tiny-base": ("tiny", DEMO_ADAPTER),
    "gemma-3-270m": ("gemma-3-270m-demo", "news-riddle-gemma-3-270m-demo"),
}
# Training writes its PEFT files and the manifest into a staging folder and renames it into
# place, so a folder holding this manifest is complete.
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class AdapterManifest(BaseModel):
    """``llmapps-adapter.json``: the contract between ``finetune`` and the ``lora`` strategy.

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


# Files PEFT or transformers would read from an adapter folder: none may be there unlisted.
_LOADABLE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt", ".json", ".model")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_PEFT_TYPES = {"lora": "LORA", "prompt-tuning": "PROMPT_TUNING"}


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
    key = (str(folder.resolve()), max(f.stat().st_mtime for f in files), sum(f.stat().st_size for f in files))
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
    retrain = "retrain it with `llmapps finetune lora --recipe RECIPE --out DIR`"
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
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 (byte {err.start}); {retrain}") from err
    except (json.JSONDecodeError, RecursionError) as err:
        raise ConfigError(f"{path} is not valid JSON ({getattr(err, 'msg', err)}); {retrain}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; {retrain}")
    if data.get("format") != MANIFEST_FORMAT:
        raise ConfigError(
            f"{path} is of manifest format {str(data.get('format'))[:20]!r}; this llmapps reads "
            f"format {MANIFEST_FORMAT} only (with file hashes): {retrain}"
        )
    try:
        manifest = AdapterManifest.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in err.errors()[:5])
        raise ConfigError(f"invalid adapter manifest {path} ({problems}); {retrain}") from err
    if json_checksum(data) != manifest.checksum:
        raise ConfigError(f"{path} was changed after training wrote it (its checksum does not match); {retrain}")
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
            raise ConfigError(f"{f} is not one of the files training wrote (not in the manifest); remove it, or {retrain}")
    for name, digest in manifest.files.items():
        f = folder / name
        if "/" in name or "\\" in name or name in ("", ".", "..") or not f.is_file() or f.is_symlink():
            raise ConfigError(f"{folder}: the manifest lists {name[:80]!r}, which is missing or not a plain file there; {retrain}")
        if sha256_file(f) != digest:
            raise ConfigError(f"{f} changed since training wrote it (its SHA-256 does not match the manifest); {retrain}")
    if "adapter_config.json" not in manifest.files:
        raise ConfigError(f"{folder}: the manifest lists no adapter_config.json; {retrain}")
    try:
        peft_type = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("peft_type")
    except (ValueError, AttributeError) as err:
        raise ConfigError(f"{folder / 'adapter_config.json'} is not a JSON object; {retrain}") from err
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
    data = manifest.model_copy(update={"format": MANIFEST_FORMAT, "files": files, "checksum": ""}).model_dump(mode="json")
    data["checksum"] = json_checksum(data)
    return atomic_write(folder / MANIFEST_NAME, json.dumps(data, indent=2))


class LoraStrategyConfig(StrategyConfig):
    """Options of the ``lora`` strategy."""

    kind: Literal["lora"] = "lora"
    adapter: str = Field(description="adapter folder written by `llmapps finetune` (PEFT files + manifest)")
    base_model: str | None = Field(
        None, description="where the base lives, if not where the manifest says; its weights must match"
    )
    merge: bool = Field(False, description="fold the adapter into a private copy of the base (faster)")
    allow_other_task: bool = Field(False, description="use the adapter on a task it was not trained for")
    max_new_tokens: int | None = Field(None, ge=1, description="default: the task's budget")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int | None = Field(None, ge=1)
    device: str | None = None
    dtype: str | None = None


class AdaptedModel(LocalModel):
    """A ``LocalModel`` view of a shared PEFT model with one named adapter switched on per call."""

    def __init__(self, shared: _SharedBase, adapter_name: str, *, name: str, batch_size: int) -> None:
        super().__init__(shared.model, shared.tokenizer, name=name, device=shared.device,
                         batch_size=batch_size)
        self.shared = shared
        self.adapter_name = adapter_name

    def activate(self) -> None:
        """Switch this view's adapter on (callers that use ``.model`` directly hold ``shared.lock``)."""
        self.shared.model.set_adapter(self.adapter_name)

    def generate(self, prompts: Any, params: Any = None) -> Any:  # type: ignore[override]
        with self.shared.lock:
            self.activate()
            return super().generate(prompts, params)


class _SharedBase:
    """One loaded base wrapped in a ``PeftModel``, carrying every adapter loaded onto it."""

    def __init__(self, model: Any, tokenizer: Any, device: str) -> None:
        self.model = model  # a PeftModel once the first adapter is loaded
        self.tokenizer = tokenizer
        self.device = device
        self.lock = threading.RLock()
        self.adapters: dict[str, str] = {}  # resolved adapter folder -> adapter name
        self.logit_changes: dict[str, float] = {}  # adapter folder -> its measured effect


_BASES: dict[tuple[str, str, str], _SharedBase] = {}
_BASES_LOCK = threading.Lock()


def _probe_ids(tokenizer: Any, device: Any) -> Any:
    import torch

    ids = tokenizer("[Article]: The council voted on the new bridge.\n[Summary]:", add_special_tokens=True)["input_ids"]
    return torch.tensor([ids], dtype=torch.long, device=device)


def check_adapter_active(peft_model: Any, adapter_name: str, tokenizer: Any, folder: str | Path) -> float:
    """Prove the adapter changes the model: the largest logit change on a probe text.

    Raises:
        ConfigError: the change is zero (a no-op or mis-targeted adapter).
    """
    import torch

    with torch.inference_mode():
        peft_model.set_adapter(adapter_name)
        ids = _probe_ids(tokenizer, next(peft_model.parameters()).device)
        on = peft_model(input_ids=ids).logits.float()
        with peft_model.disable_adapter():
            off = peft_model(input_ids=ids).logits.float()
    delta = float((on[:, -off.shape[1]:] - off).abs().max())
    if not delta > 1e-6:
        raise ConfigError(
            f"the adapter in {folder} does not change the base model's output (largest logit "
            f"change {delta:.1e}): its weights are all zero or target modules this base does not "
            "have. Retrain it with `llmapps finetune lora` against this base."
        )
    return delta


def _adapter_name(folder: Path) -> str:
    return "a" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]


def _load_peft(base: Any, folder: Path, name: str) -> Any:
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


class LoraStrategy(Strategy):
    """Prompt a base model carrying our own fine-tuned adapter, with no worked examples."""

    name = "lora"
    config_class = LoraStrategyConfig
    summary = "base model + our own LoRA adapter (trained with `llmapps finetune`), no examples"
    requires = "an adapter folder (--adapter DIR) and the base it was trained on"
    config: LoraStrategyConfig

    def __init__(self, config: LoraStrategyConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.manifest = read_manifest(self.config.adapter)
        self._lm: LocalModel | None = None
        self.logit_change: float | None = None

    def _base_path(self, settings: Settings) -> str:
        from llmapps.models.local import resolve_model_path

        name = self.config.base_model or self.manifest.base_model
        path = resolve_model_path(name, settings)
        found = model_fingerprint(path)
        if found != self.manifest.base_model_sha256:
            raise ConfigError(
                f"the adapter in {self.config.adapter} was trained on {self.manifest.base_model!r} "
                f"(weights {self.manifest.base_model_sha256}), but {name!r} at {path} has weights "
                f"{found}: point --base-model to the base it was trained on, or retrain the adapter "
                "on this base with `llmapps finetune lora`"
            )
        return path

    @property
    def local_model(self) -> LocalModel:
        """The adapted model (loaded once; the base is shared with other ``lora`` strategies)."""
        if self._lm is None:
            self._lm = self._load()
        return self._lm

    def _load(self) -> LocalModel:
        from llmapps.models.local import _from_pretrained, pick_device
        from llmapps.settings import get_settings

        settings = get_settings()
        c = self.config
        path = self._base_path(settings)
        folder = Path(c.adapter).expanduser().resolve()
        dev = pick_device(c.device or settings.device)
        dt = c.dtype or settings.dtype
        batch = c.batch_size or settings.generation.batch_size
        name = f"{self.manifest.base_model}+{folder.name}"
        if c.merge:  # a private base: merging rewrites its weights
            model, tok = _from_pretrained(path, dev, dt, settings)
            peft_model = _load_peft(model, folder, "default")
            self.logit_change = check_adapter_active(peft_model, "default", tok, folder)
            merged = peft_model.merge_and_unload()
            merged.eval()
            return LocalModel(merged, tok, name=name + "(merged)", device=dev, batch_size=batch)
        key = (path, dev, dt)
        with _BASES_LOCK:
            shared = _BASES.get(key)
            if shared is None:
                model, tok = _from_pretrained(path, dev, dt, settings)
                shared = _BASES[key] = _SharedBase(model, tok, dev)
        with shared.lock:
            adapter_name = shared.adapters.get(str(folder))
            if adapter_name is None:
                adapter_name = _adapter_name(folder)
                shared.model = _load_peft(shared.model, folder, adapter_name)
                shared.model.eval()
                try:
                    self.logit_change = check_adapter_active(shared.model, adapter_name, shared.tokenizer, folder)
                except ConfigError:
                    shared.model.delete_adapter(adapter_name)
                    raise
                shared.adapters[str(folder)] = adapter_name
                if self.logit_change is not None:
                    shared.logit_changes[str(folder)] = self.logit_change
            else:  # loaded by an earlier strategy in this process: its check stands
                self.logit_change = shared.logit_changes.get(str(folder))
        return AdaptedModel(shared, adapter_name, name=name, batch_size=batch)

    def scoring_model(self) -> LocalModel:
        lm = self.local_model
        if isinstance(lm, AdaptedModel):
            lm.activate()
        return lm

    def check_task(self, task: Task) -> None:
        """Refuse a task the adapter was not trained for; warn when its prompt layout changed."""
        if task.name != self.manifest.task and not self.config.allow_other_task:
            raise ConfigError(
                f"the adapter in {self.config.adapter} was trained for the task "
                f"{self.manifest.task!r}, not {task.name!r} (the two-step variant needs adapters of "
                "its own); pass allow_other_task=true to use it anyway"
            )
        if layout_hash(task.completion) != self.manifest.prompt_sha256:
            log.warning(
                "the prompt layout of %r changed since the adapter in %s was trained; its outputs "
                "may suffer: retrain it with `llmapps finetune lora`", task.name, self.config.adapter,
            )

    @staticmethod
    def prompt_for(task: Task, inputs: dict[str, Any]) -> str:
        """The prompt for ``inputs``: the completion layout with zero examples (as in training)."""
        return task.completion.render({k: inputs[k] for k in task.input_variables}, [])

    def build(self, task: Task) -> Runnable[dict[str, Any], str]:
        from langchain_core.runnables import RunnableLambda

        from llmapps.models.langchain_local import LocalLLM
        from llmapps.strategies.few_shot import fit_inputs

        self.check_task(task)
        lm = self.local_model
        c = self.config
        max_new = c.max_new_tokens or task.max_new_tokens

        def render(inputs: dict[str, Any]) -> str:
            return self.prompt_for(task, inputs)

        llm = LocalLLM.from_local(lm, max_new_tokens=max_new, temperature=c.temperature, top_p=c.top_p)
        fit = fit_inputs(task, lm, max_new, render)
        chain = RunnableLambda(fit, name="fit_context") | RunnableLambda(render, name="render") | llm.bind(
            stop=list(task.stop)
        )
        return chain.with_config(run_name=f"lora:{task.name}")

    @classmethod
    @contextlib.contextmanager
    def demo_options(cls, settings: Settings) -> Iterator[dict[str, Any] | None]:
        """The demo adapter of ``settings.base_model`` (``DEMO_RECIPES``) in
        ``$LLMAPPS_HOME/adapters/``, trained on first use; None for a base with no demo recipe.

        It is retrained when the base changed (its weights hash differs from the manifest's).
        Training runs through the ``finetune`` CLI plugin (entry point), never an import of it.
        """
        ok = _finetune_installed() and settings.base_model in DEMO_RECIPES
        yield {"adapter": str(ensure_demo_adapter(settings))} if ok else None


def _finetune_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "finetune" for ep in entry_points(group="llmapps.cli"))


_DEMO_LOCK = threading.Lock()


def ensure_demo_adapter(settings: Settings, base_model: str | None = None) -> Path:
    """Train the demo recipe of ``base_model`` (default ``settings.base_model``; see
    ``DEMO_RECIPES``) into ``$LLMAPPS_HOME/adapters/<name>`` unless it is current.

    Raises:
        ConfigError: no demo recipe for that base.
        BackendError: training failed.
    """
    from llmapps.models.local import resolve_model_path

    name = base_model or settings.base_model
    if name not in DEMO_RECIPES:
        raise ConfigError(
            f"no demo adapter for the base {name!r} (known: {', '.join(DEMO_RECIPES)}); train one with "
            "`llmapps finetune lora --recipe RECIPE --out DIR` and pass adapter=DIR"
        )
    recipe, adapter = DEMO_RECIPES[name]
    folder = settings.home / "adapters" / adapter
    with _DEMO_LOCK:
        base = resolve_model_path(name, settings)
        try:
            if read_manifest(folder).base_model_sha256 == model_fingerprint(base):
                return folder
            log.info("%s changed since %s was trained: retraining it", name, folder)
        except ConfigError:
            log.info("no demo adapter in %s yet: training the %s recipe", folder, recipe)
        from llmapps.cli import main

        argv = ["finetune", "lora", "--recipe", recipe, "--out", str(folder), "--overwrite", "--quiet"]
        code = main(argv)
        if code != 0:
            raise BackendError(
                f"training the demo adapter failed (exit {code}); run `llmapps finetune lora "
                f"--recipe {recipe} --out {folder}` to see why"
            )
    return folder
