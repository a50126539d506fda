"""The one place that joins apps, strategies and models: which strategies a surface offers and
with which options, built one way for ``llmapps bench``, ``llmapps demo`` and ``llmapps ui``.

A strategy's options come, in this order (later wins), from:

1. its offline defaults (``Strategy.demo_options``, entered by ``demo_options`` here, which
   hands each the local server it may need): ``lora`` finds, or trains on first use, the
   demo adapter under ``$LLMAPPS_HOME/adapters/`` (its steps shown as it trains: ``StepPrinter``
   on stderr, or the caller's ``progress``); ``service`` takes the configured endpoint, or
   serves the instruct model with ``llmapps serve`` (``local_server``) on loopback for as long
   as the set is open. Options given that
   already do the defaults' job (``lora``'s ``adapter``, ``service``'s ``base_url``) skip them;
   a ``base_model``/``instruct_model`` given is the one whose defaults are looked up;
2. a bench run's recorded options (``--run RUN``: ``RUN/config.json``'s ``strategy_options`` and
   the swept values of each row, so ``few-shot[structured=on]`` comes back as it ran);
3. options given here (the command's flags).

A strategy that cannot run (no demo adapter for this base, a bad option, a backend that failed to
start) is kept in the set, ``reason`` saying why in one line with what to do, so a page can list it
disabled instead of offering it and failing; a surface that runs one strategy (``llmapps chat``,
``serve``, ``daily``) takes ``runnable_options``, which raises that reason as a one-line
``ConfigError``. Nothing here names an app.

It is also where settings meet explicit options: ``make_strategy`` and ``load_chain`` take a
``Settings`` (default: the environment's, read here) and hand it to the strategy, whose config
fills only its unset fields from it (``llmapps.api.strategies.resolve_config``), and whose
budgets for a task are built from both (``Strategy.budget``); ``--tiny`` is a ``Settings`` with
the tiny models (``tiny_settings``), not a change to the environment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmapps.errors import ConfigError, LlmappsError, one_line

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

    from llmapps.api.backends import LocalServer
    from llmapps.options import AppOptions
    from llmapps.settings import Settings
    from llmapps.strategies.base import Strategy

log = logging.getLogger(__name__)

# The option that does a strategy's defaults' job: given, the defaults are not prepared (no
# adapter trained, no server started only to be replaced).
_GIVEN_BY = {"lora": "adapter", "service": "base_url"}
# Settings a strategy's defaults depend on, taken from the options when given there.
_PINNED = ("base_model", "instruct_model")
Progress = Callable[[int, int], None]  # (steps done, total steps) of a training run


class StepPrinter:
    """A training run's progress on ``stream`` (default stderr): ``lora: training its adapter
    (first use): step 12/64, 40 s``, rewritten in place on a terminal; elsewhere (a log, a pipe)
    one line at the start, at each further tenth and at the end."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream
        self.started: float | None = None
        self.tenth = -1

    def __call__(self, done: int, total: int) -> None:
        stream = self.stream or sys.stderr
        now = time.monotonic()
        self.started = self.started if self.started is not None else now
        line = (
            f"{self.label}: training its adapter (first use): step {done}/{total or '?'}, "
            f"{now - self.started:.0f} s"
        )
        last = bool(total) and done >= total
        if getattr(stream, "isatty", lambda: False)():
            print(f"\r{line}", end="\n" if last else "", file=stream, flush=True)
            return
        tenth = 10 * done // total if total else 0
        if tenth > self.tenth or last:
            self.tenth = 10 if last else tenth
            print(line, file=stream, flush=True)


@dataclass
class ComposedStrategy:
    """One row of a strategy set: its label (``few-shot`` or ``few-shot[structured=on]``), the
    registered strategy, the options it is built with, and why it cannot run (None: it can)."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    @property
    def runnable(self) -> bool:
        return self.reason is None


def read_run(run: Path) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """A bench run's rows (``(strategy, label, swept options)`` in run order) and the recorded
    user options per strategy, from ``RUN/config.json``.

    Raises:
        ConfigError: ``run`` is not a bench folder (no or unreadable ``config.json``).
    """
    from llmapps.bench.run import BenchConfig

    path = Path(run) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        bench = BenchConfig.model_validate(data["bench"])
    except FileNotFoundError as err:
        raise ConfigError(
            f"{run} is not a bench run (no config.json): give the --out folder of `llmapps bench`"
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{path} is not a bench config this version reads ({one_line(err)[:200]}); "
            "rerun `llmapps bench` into a new folder"
        ) from err
    return bench.runs(), {k: dict(v) for k, v in bench.strategy_options.items()}


def local_server() -> LocalServer | None:
    """The local OpenAI-compatible server compose hands to strategies' offline defaults:
    ``llmapps serve`` (``llmapps.servers`` entry point ``llmapps``; else the first registered),
    None where none is installed."""
    from llmapps.api.backends import SERVERS

    names = SERVERS.names()
    if not names:
        return None
    return SERVERS.get("llmapps" if "llmapps" in names else names[0])


@contextlib.contextmanager
def demo_options(name: str, settings: Settings | None = None) -> Iterator[dict[str, Any] | None]:
    """Strategy ``name``'s offline defaults under ``settings`` (default: the environment's), held
    for the block: its ``demo_options`` handed what only compose joins (the local server,
    ``local_server``); None where it has none here."""
    from llmapps.settings import get_settings
    from llmapps.strategies.base import STRATEGIES

    cls = STRATEGIES.get(name)
    with cls.demo_options(settings or get_settings(), serve=local_server()) as options:
        yield options


@contextlib.contextmanager
def strategy_options(
    name: str,
    settings: Any = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    progress: Progress | None = None,
) -> Iterator[tuple[dict[str, Any] | None, str | None]]:
    """``(options, reason)`` for strategy ``name``: its offline defaults under ``overrides``, held
    for the block (a local server a default started stops at its end). Without defaults the
    options are the overrides alone (None when there are none) and ``reason`` says why there are
    no defaults (what to do), for the caller to show if those options do not build.

    ``progress(done, total)`` hears the steps of an adapter the defaults train (default: a
    ``StepPrinter`` on stderr)."""
    from llmapps.settings import get_settings
    from llmapps.strategies.base import STRATEGIES
    from llmapps.training import reporting_progress

    settings = settings or get_settings()
    STRATEGIES.get(name)  # an unknown name fails here, with suggestions
    overrides = {**settings_options(name, settings), **dict(overrides or {})}
    if overrides.get(_GIVEN_BY.get(name, "")):  # e.g. --adapter DIR: nothing to find or train
        yield overrides, None
        return
    pinned = {k: overrides[k] for k in _PINNED if overrides.get(k)}
    if pinned:  # --base-model X: X's demo adapter, not the configured base's
        settings = settings.model_copy(update=pinned)
    reason: str | None
    with contextlib.ExitStack() as stack:
        try:
            with reporting_progress(progress or StepPrinter(name)):
                demo = stack.enter_context(demo_options(name, settings))
        except LlmappsError as err:
            demo, reason = None, one_line(err)
        except Exception as err:  # a backend that would not start: say so, offer the rest
            log.debug("defaults of %s failed", name, exc_info=True)
            demo, reason = None, f"its defaults could not be prepared: {one_line(err)}"
        else:
            reason = None if demo is not None else _no_defaults(name, settings)
        if demo is None:  # explicit options may still make it runnable
            yield (overrides or None), reason
            return
        yield {**demo, **overrides}, None


@contextlib.contextmanager
def runnable_options(
    name: str,
    settings: Any = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    flag: str = "--strategy",
    progress: Progress | None = None,
) -> Iterator[dict[str, Any]]:
    """The options strategy ``name`` runs with on a one-strategy surface (``llmapps chat``,
    ``serve``, ``daily``), its defaults held for the block as in ``strategy_options``.

    Raises:
        ConfigError: it cannot run: one line, ``--strategy NAME cannot run: <reason and fix>``.
    """
    from llmapps.settings import get_settings
    from llmapps.strategies.base import make_strategy

    settings = settings or get_settings()
    with strategy_options(name, settings, overrides, progress=progress) as (options, reason):
        try:
            make_strategy(name, settings=settings, **(options or {}))  # validates; loads no model
        except LlmappsError as err:
            raise ConfigError(f"{flag} {name} cannot run: {reason or one_line(err)}") from err
        yield options or {}


def settings_options(name: str, settings: Any) -> dict[str, Any]:
    """The models ``settings`` give strategy ``name`` (its ``base_model`` or ``instruct_model``
    default) where they differ from the environment's (``--tiny``), as options: a strategy later
    built from options alone (by the bench, a Ray actor, the web app) runs on the models the
    settings handed down name. Empty for settings that agree with the environment."""
    from llmapps.settings import get_settings
    from llmapps.strategies.base import STRATEGIES

    ambient = get_settings()
    config_class = STRATEGIES.get(name).config_class
    defaults = config_class.model_construct(kind=name).settings_defaults(settings)
    return {
        k: defaults[k]
        for k in _PINNED
        if k in defaults and defaults[k] != getattr(ambient, k, None)
    }


def _no_defaults(name: str, settings: Any) -> str:
    if name == "lora":  # the one strategy whose defaults depend on a trained artefact
        return (
            f"no demo adapter for the base {settings.base_model!r} on this machine: train one "
            "with `llmapps finetune lora --recipe RECIPE --out DIR` and pass --set adapter=DIR"
        )
    return f"{name} has no offline defaults here: give its options (llmapps strategies {name})"


@contextlib.contextmanager
def compose_strategies(
    names: Sequence[str] | None = None,
    *,
    run: Path | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    settings: Any = None,
    progress: Progress | None = None,
) -> Iterator[list[ComposedStrategy]]:
    """The strategy set of a surface, held open for the block (servers it started stop after).

    Args:
        names: the strategies, by registered name (default: the run's rows with ``run``, else
            every registered strategy). With ``run`` too, only the run's rows of these names.
        run: a bench run folder: its rows (swept ones included) and its recorded options.
        options: per strategy name, options over the defaults and the run's (the command's flags).
        settings: the settings whose defaults apply (default: ``get_settings()``).
        progress: hears an adapter's training steps (default: ``StepPrinter`` on stderr).

    Each strategy's options are checked against its config now (``make_strategy``), so a missing
    or bad option is a ``reason``, not a failure on first use.
    """
    from llmapps.settings import get_settings
    from llmapps.strategies.base import STRATEGIES, make_strategy

    settings = settings or get_settings()
    given = {k: dict(v) for k, v in (options or {}).items()}
    if run is not None:
        rows, recorded = read_run(Path(run))
        if names:
            wanted = set(names)
            rows = [r for r in rows if r[0] in wanted or r[1] in wanted]
    else:
        rows, recorded = [(n, n, {}) for n in (names or STRATEGIES.names())], {}
    for name, _, _ in rows:
        STRATEGIES.get(name)  # an unknown name fails here, with suggestions
    out: list[ComposedStrategy] = []
    with contextlib.ExitStack() as stack:
        held: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
        for name, label, swept in rows:
            if name not in held:  # one local server / adapter per strategy, shared by its rows
                user = {**recorded.get(name, {}), **given.get(name, {})}
                held[name] = stack.enter_context(
                    strategy_options(name, settings, user, progress=progress)
                )
            opts, reason = held[name]
            if opts is None:
                out.append(ComposedStrategy(label, name, {}, reason))
                continue
            built = {**opts, **swept}
            try:
                make_strategy(name, settings=settings, **built)
                reason = None
            except LlmappsError as err:
                reason = reason or one_line(err)
            out.append(ComposedStrategy(label, name, built, reason))
        for c in out:
            if c.reason:
                log.info("%s cannot run: %s", c.label, c.reason)
        yield out


def run_bench(config: Any, out: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """``llmapps.bench.run.run_bench`` with the defaults every surface shares (``strategy_options``:
    lora's demo adapter, service's local server), as ``llmapps bench`` runs it."""
    from llmapps.bench.run import run_bench as bench_run

    return bench_run(config, out, options=strategy_options, **kwargs)


def make_strategy(name: str, settings: Settings | None = None, **options: Any) -> Strategy:
    """The registered strategy ``name`` built with ``options`` (validated) under ``settings``
    (default: the environment's, read now): options given win, settings fill the rest."""
    from llmapps.settings import get_settings
    from llmapps.strategies.base import make_strategy as build

    return build(name, settings=settings or get_settings(), **options)


def load_chain(
    app: str,
    strategy: str | Strategy = "few-shot",
    *,
    app_options: Mapping[str, Any] | AppOptions | None = None,
    settings: Settings | None = None,
    **strategy_options: Any,
) -> Runnable[Any, Any]:
    """Build the app ``app`` on ``strategy`` and return it as a LangChain ``Runnable``.

    Example:
        >>> chain = load_chain("news-riddle", strategy="few-shot")  # doctest: +SKIP
        >>> chain.invoke({"title": "...", "text": "..."})           # doctest: +SKIP

    Args:
        app: a registered app name (``llmapps apps`` lists them).
        strategy: a registered strategy name or a ``Strategy`` instance.
        app_options: options for the app itself, validated by its ``AppSpec.options`` model
            (unknown names and bad values are a ``ConfigError`` naming the valid ones).
        settings: what a strategy named here runs under (default: the environment's).
        **strategy_options: fields of the strategy's config (e.g. ``base_model=...``).
    """
    from llmapps.apps import get_app
    from llmapps.options import as_kwargs

    spec = get_app(app)
    options = spec.parse_options(app_options)  # before any model is loaded
    strat = (
        strategy
        if not isinstance(strategy, str)
        else make_strategy(strategy, settings, **strategy_options)
    )
    return spec.build(strat, **as_kwargs(options))


def tiny_settings(settings: Settings | None = None) -> Settings:
    """``settings`` (default: the environment's) with the built-in tiny models as the base and
    instruct models: what ``--tiny`` runs under."""
    from llmapps.settings import get_settings

    return (settings or get_settings()).model_copy(
        update={"base_model": "tiny-base", "instruct_model": "tiny-instruct"}
    )
