"""``lora``: a base model with our own fine-tuned adapter (LoRA or prompt tuning, via PEFT).

The seed's fourth path. Training lives in ``finetune/`` (``llmapps finetune lora``); this module
never imports it. The two meet through the **adapter folder**, whose contract (PEFT's files plus
the ``llmapps-adapter.json`` manifest: base model and the hash of its weights, task and prompt
layout hash, recipe, metrics, library versions, file hashes) is ``llmapps.adapters``: training
writes it with ``write_adapter_folder``, this strategy reads it with ``read_manifest``. The demo
adapter is trained through the registered trainer (``llmapps.adapters.trainers``, entry point).

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
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import Field

# The adapter contract lives in llmapps.adapters; its names stay importable from here.
from llmapps.adapters import MANIFEST_FORMAT as MANIFEST_FORMAT
from llmapps.adapters import MANIFEST_NAME as MANIFEST_NAME
from llmapps.adapters import AdapterManifest as AdapterManifest
from llmapps.adapters import check_adapter_active as check_adapter_active
from llmapps.adapters import check_base, get_trainer, load_peft, trainers
from llmapps.adapters import layout_hash as layout_hash
from llmapps.adapters import model_fingerprint as model_fingerprint
from llmapps.adapters import read_manifest as read_manifest
from llmapps.adapters import write_manifest as write_manifest
from llmapps.api.strategies import resolve_config
from llmapps.errors import ConfigError
from llmapps.models.local import LocalModel
from llmapps.strategies.local import LocalModelConfig, LocalModelStrategy
from llmapps.strategies.structured import CompletionReply, completion_model

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.api.backends import LocalServer
    from llmapps.settings import Settings
    from llmapps.tasks import Task

log = logging.getLogger(__name__)


class LoraStrategyConfig(LocalModelConfig):
    """Options of the ``lora`` strategy."""

    kind: Literal["lora"] = "lora"
    adapter: str = Field(
        description="adapter folder written by `llmapps finetune` (PEFT files + manifest)"
    )
    base_model: str | None = Field(
        None,
        description="where the base lives, if not where the manifest says; its weights must match",
    )
    merge: bool = Field(
        False, description="fold the adapter into a private copy of the base (faster)"
    )
    backend: Literal["transformers", "llama.cpp"] | None = Field(
        None,
        description="transformers (PEFT), or llama.cpp (the base's GGUF with the adapter converted "
        "to a llama.cpp LoRA file on first use); default settings.generation.backend",
    )
    allow_other_task: bool = Field(
        False, description="use the adapter on a task it was not trained for"
    )

    def settings_defaults(self, settings: Settings) -> dict[str, Any]:
        return {
            "backend": settings.generation.backend,
            "device": settings.device,
            "dtype": settings.dtype,
            "batch_size": settings.generation.batch_size,
        }


class AdaptedModel(LocalModel):
    """A ``LocalModel`` view of a shared PEFT model with one named adapter switched on per call."""

    def __init__(
        self, shared: _SharedBase, adapter_name: str, *, name: str, batch_size: int
    ) -> None:
        super().__init__(
            shared.model, shared.tokenizer, name=name, device=shared.device, batch_size=batch_size
        )
        self.shared = shared
        self.adapter_name = adapter_name

    def activate(self) -> None:
        """Switch this view's adapter on (callers that use ``.model`` directly hold ``shared.lock``)."""
        self.shared.model.set_adapter(self.adapter_name)

    def generate(self, prompts: Any, params: Any = None, *, batch_size: int | None = None) -> Any:  # type: ignore[override]
        with self.shared.lock:
            self.activate()
            return super().generate(prompts, params, batch_size=batch_size)


class _SharedBase:
    """One loaded base wrapped in a ``PeftModel``, carrying every adapter loaded onto it."""

    def __init__(self, model: Any, tokenizer: Any, device: str) -> None:
        self.model = model  # a PeftModel once the first adapter is loaded
        self.tokenizer = tokenizer
        self.device = device
        self.lock = threading.RLock()
        self.adapters: dict[str, str] = {}  # resolved adapter folder -> adapter name
        self.logit_changes: dict[str, float] = {}  # adapter folder -> its measured effect


def _adapter_name(folder: Path) -> str:
    return "a" + hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]


class LoraStrategy(LocalModelStrategy):
    """Prompt a base model carrying our own fine-tuned adapter, with no worked examples."""

    name = "lora"
    config_class = LoraStrategyConfig
    summary = "base model + our own LoRA adapter (trained with `llmapps finetune`), no examples"
    requires = "an adapter folder (--adapter DIR) and the base it was trained on"
    config: LoraStrategyConfig

    def __init__(self, config: LoraStrategyConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.manifest = read_manifest(self.config.adapter)
        self.logit_change: float | None = None

    def _base_path(self, settings: Settings) -> str:
        from llmapps.models.local import resolve_model_path

        name = self.config.base_model or self.manifest.base_model
        path = resolve_model_path(name, settings)
        check_base(self.manifest, path, adapter=self.config.adapter, name=name)
        return path

    def load(self) -> LocalModel:
        """The adapted model (the base is shared with other ``lora`` strategies)."""
        from llmapps.models.device import pick_device
        from llmapps.models.local import load_pretrained

        settings = self.settings
        c = self.resolved
        path = self._base_path(settings)
        folder = Path(c.adapter).expanduser().resolve()
        if c.backend not in ("transformers", "llama.cpp"):  # a plugin backend as the default
            raise ConfigError(
                f"the lora strategy runs on transformers (PEFT) or llama.cpp, not the backend "
                f"{c.backend!r} the settings name; pass backend=transformers"
            )
        if c.backend == "llama.cpp":
            return self._load_gguf(settings, path, folder)
        dev = pick_device(c.device or "auto")
        dt, batch = c.dtype or "auto", c.batch_size or 1
        name = f"{self.manifest.base_model}+{folder.name}"
        if c.merge:  # a private base: merging rewrites its weights
            model, tok = load_pretrained(path, dev, dt, settings)
            peft_model = load_peft(model, folder, "default")
            self.logit_change = check_adapter_active(peft_model, "default", tok, folder)
            merged = peft_model.merge_and_unload()
            merged.eval()
            return LocalModel(merged, tok, name=name + "(merged)", device=dev, batch_size=batch)

        def load_base() -> _SharedBase:
            model, tok = load_pretrained(path, dev, dt, settings)
            return _SharedBase(model, tok, dev)

        # a base of its own (not the plain "transformers" one): adapters are loaded into it
        shared = self.pool.get(("lora-base", path, dev, dt), load_base)
        with shared.lock:
            adapter_name = shared.adapters.get(str(folder))
            if adapter_name is None:
                adapter_name = _adapter_name(folder)
                shared.model = load_peft(shared.model, folder, adapter_name)
                shared.model.eval()
                try:
                    self.logit_change = check_adapter_active(
                        shared.model, adapter_name, shared.tokenizer, folder
                    )
                except ConfigError:
                    shared.model.delete_adapter(adapter_name)
                    raise
                shared.adapters[str(folder)] = adapter_name
                if self.logit_change is not None:
                    shared.logit_changes[str(folder)] = self.logit_change
            else:  # loaded by an earlier strategy in this process: its check stands
                self.logit_change = shared.logit_changes.get(str(folder))
        return AdaptedModel(shared, adapter_name, name=name, batch_size=batch)

    def backend(self, settings: Settings) -> str:
        """The backend this strategy runs on (its option, else ``settings.generation.backend``)."""
        return str(resolve_config(self.config, settings).backend)

    def _load_gguf(self, settings: Settings, path: str, folder: Path) -> LocalModel:
        """The base's GGUF in llama.cpp with the adapter as a llama.cpp LoRA file.

        The HF base the adapter was trained on (its fingerprint checked by ``_base_path``) must
        have been converted from that GGUF: its ``llmapps-model.json`` names the file's SHA-256.
        """
        from llmapps.models.gguf_lora import WEIGHTS, lora_gguf_for
        from llmapps.models.llamacpp import gguf_file_for, load_gguf_model
        from llmapps.models.packaged import read_model_manifest, verified_sha256

        c = self.config
        if c.merge or self.manifest.method != "lora":
            what = "merge=true" if c.merge else f"a {self.manifest.method} adapter"
            raise ConfigError(f"{what} runs on backend=transformers only, not llama.cpp")
        name = c.base_model or self.manifest.base_model
        source = read_model_manifest(Path(path)) or {}
        if not source.get("source_sha256"):
            raise ConfigError(
                f"the base {name!r} of {c.adapter} was not converted from a GGUF file, so llama.cpp "
                "has no base to apply the adapter to; use backend=transformers"
            )
        gguf = gguf_file_for(name, settings)
        if verified_sha256(gguf) != source["source_sha256"]:  # hashed once, then stamped
            raise ConfigError(
                f"{gguf} is not the GGUF the base {name!r} was converted from (SHA-256 differs); "
                "reinstall the model package, or use backend=transformers"
            )
        lora = lora_gguf_for(
            folder,
            gguf,
            settings,
            adapter_sha256=self.manifest.files.get(WEIGHTS),  # checked by read_manifest
            base_sha256=source["source_sha256"],
        )
        lm = load_gguf_model(
            str(gguf),
            settings=settings,
            pool=self.pool,
            lora_path=lora,
            name=f"{self.manifest.base_model}+{folder.name}(llama.cpp)",
        )
        return cast(LocalModel, lm)

    def generation_model(self) -> LocalModel:
        lm = self.local_model
        if isinstance(lm, AdaptedModel):
            lm.activate()  # what streams through its PEFT model (generate activates per call)
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
                "may suffer: retrain it with `llmapps finetune lora`",
                task.name,
                self.config.adapter,
            )

    @staticmethod
    def prompt_for(task: Task, inputs: dict[str, Any]) -> str:
        """The prompt for ``inputs``: the completion layout with zero examples (as in training)."""
        return task.completion.render({k: inputs[k] for k in task.input_variables}, [])

    def build(self, task: Task) -> Runnable[dict[str, Any], Any]:
        from langchain_core.runnables import RunnableLambda

        from llmapps.strategies.few_shot import fit_inputs

        self.check_task(task)
        lm = self.local_model
        budget = self.budget(task)
        max_new = budget.max_new_tokens

        def render(inputs: dict[str, Any]) -> str:
            return self.prompt_for(task, inputs)

        llm = completion_model(self.config, task, lm, max_new_tokens=max_new, strategy=self.name)
        fit = fit_inputs(task, lm, budget, render)
        chain = (
            RunnableLambda(fit, name="fit_context")
            | RunnableLambda(render, name="render")
            | CompletionReply(llm=llm, stop=list(task.stop))
        )
        return chain.with_config(run_name=f"lora:{task.name}")

    @classmethod
    @contextlib.contextmanager
    def demo_options(
        cls, settings: Settings, *, serve: LocalServer | None = None
    ) -> Iterator[dict[str, Any] | None]:
        """The demo adapter of ``settings.base_model`` (the trainer's ``demo_recipe``) in
        ``$LLMAPPS_HOME/adapters/``, trained on first use; None for a base with no demo recipe.

        It is retrained when the base changed (its weights hash differs from the manifest's).
        Training runs through the registered adapter trainer (``llmapps.adapters.trainers``,
        entry point), never an import of the training package; which recipe is a base's demo
        (and so which app it serves) is the trainer's knowledge, not the core's.
        """
        ok = "peft" in trainers and get_trainer("peft").demo_recipe(settings.base_model) is not None
        yield {"adapter": str(ensure_demo_adapter(settings))} if ok else None


_DEMO_LOCK = threading.Lock()


def ensure_demo_adapter(settings: Settings, base_model: str | None = None) -> Path:
    """Train the demo recipe of ``base_model`` (default ``settings.base_model``; the trainer's
    ``demo_recipe``) into ``$LLMAPPS_HOME/adapters/<name>`` unless it is current. Where the
    base's full recipe has been trained into ``$LLMAPPS_HOME/adapters/<its name>`` (and matches
    the base), that adapter is returned instead: the better one, already there.

    Raises:
        ConfigError: no demo recipe for that base, or training refused the recipe.
        UnknownComponentError: no adapter trainer is installed.
        BackendError: training failed.
    """
    from llmapps.models.local import resolve_model_path

    name = base_model or settings.base_model
    trainer = get_trainer("peft")
    demo = trainer.demo_recipe(name)
    if demo is None:
        raise ConfigError(
            f"no demo adapter for the base {name!r} (known: {', '.join(trainer.demo_bases())}); train "
            "one with `llmapps finetune lora --recipe RECIPE --out DIR` and pass adapter=DIR"
        )
    folder = settings.home / "adapters" / demo.adapter
    with _DEMO_LOCK:
        base = resolve_model_path(name, settings)

        def current(adapter: Path) -> bool | None:
            """Trained on this base (None: no valid adapter there; the fingerprint is cached)."""
            try:
                return read_manifest(adapter).base_model_sha256 == model_fingerprint(base)
            except ConfigError:
                return None

        if demo.full_adapter:
            full = settings.home / "adapters" / demo.full_adapter
            if current(full):  # not there or damaged: the demo's is the default
                log.info("using the full-recipe adapter %s", full)
                return full
        state = current(folder)
        if state:
            return folder
        if state is None:
            log.info("no demo adapter in %s yet: training the %s recipe", folder, demo.recipe)
        else:
            log.info("%s changed since %s was trained: retraining it", name, folder)
        # A typed error of the trainer (bad recipe, missing base, bad data) reaches the caller as is.
        trainer(demo.recipe, folder, overwrite=True, progress=False, settings=settings)
    return folder
