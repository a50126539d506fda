"""Import layering: the core (llmapps) never imports the apps, prompts or the training side, and
the generic top-level names resolve inside this project, not to a shadowing package."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("chains", "prompts", "finetune")
CORE_FILES = sorted((ROOT / "llmapps").rglob("*.py"))


def _import_statements(tree: ast.AST, skip: set[int]) -> list[tuple[int, str, list[str]]]:
    """(line, module, names taken from it) for every absolute import in ``tree`` (``import a.b``,
    ``from a import x, y``, ``importlib.import_module("a")`` with a literal name), but those
    inside the nodes whose ids are in ``skip``."""
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif (  # importlib.import_module("chains...") with a literal name
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value, []))
    return found


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, lazy re-exports (``__getattr__``) included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(line, module) for line, module, _ in _import_statements(tree, set())]


def test_core_files_found() -> None:
    assert len(CORE_FILES) > 10


@pytest.mark.parametrize("path", CORE_FILES, ids=[str(p.relative_to(ROOT)) for p in CORE_FILES])
def test_core_never_imports_apps_prompts_or_finetune(path: Path) -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {mod}"
        for line, mod in _imported_modules(path)
        if mod.split(".")[0] in FORBIDDEN
    ]
    assert not bad, "llmapps/ must find apps through entry points, not imports:\n" + "\n".join(bad)


def test_core_has_no_relative_imports() -> None:
    bad = []
    for path in CORE_FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, f"relative imports: {bad}"


@pytest.mark.parametrize("name", ["llmapps", *FORBIDDEN])
def test_generic_package_names_resolve_inside_this_project(name: str) -> None:
    module = importlib.import_module(name)
    origin = Path(module.__file__ or "").resolve()
    assert origin.is_relative_to(ROOT / name), (
        f"import {name!r} resolved to {origin}, not {ROOT / name}: a package of the same name "
        "shadows this project's; uninstall it or rename"
    )


# ---------------------------------------------------------------- the core names no app

# Words the core uses for schemas of its own, which apps happen to share: the article of
# llmapps.ingest (id, title, text, summary, url, source, date; llmapps/ingest/models.py), the
# corpus contract of AppSpec.corpus (title, text) and retrieval's index and k. Any other field of
# a registered app (riddle, answer, variant, question, ...) must not be a literal in llmapps/.
CORE_VOCABULARY = frozenset(
    {"id", "title", "text", "summary", "url", "source", "date", "index", "k"}
)
# Known exceptions, each with why (none now: `llmapps ask` moved to chains/news_qa_cli.py).
KNOWN_APP_WORDS: set[tuple[str, str]] = set()


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
        ):
            found.add(id(body[0].value))
    return found


def _app_words() -> tuple[list[str], set[str]]:
    from llmapps.apps import APPS

    words: set[str] = set()
    for name in APPS.names():
        spec = APPS.get(name)
        f = spec.metric_fields
        words |= {*spec.input_keys, *spec.reference_keys, *spec.demo_columns, *f.leak, *f.copy}
        words |= {*f.source, *spec.options.model_fields}
        words |= {x for x in (f.primary, f.riddle, f.answer) if x}
    return APPS.names(), words - CORE_VOCABULARY


def test_the_core_holds_no_app_name_or_field() -> None:
    """No registered app's name (anywhere in a string) or field (as a whole string) is a literal
    of llmapps/ outside docstrings: apps tell the core their names and fields through AppSpec."""
    names, words = _app_words()
    assert "news-riddle" in names and "riddle" in words  # the check checks something
    named = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    bad = []
    for path in CORE_FILES:
        rel = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstring_nodes(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            if id(node) in docs:
                continue
            value = node.value
            word = value.removeprefix("reference_")
            if named.search(value):
                bad.append(f"{rel}:{node.lineno}: names the app in {value[:60]!r}")
            elif word in words and (rel, word) not in KNOWN_APP_WORDS:
                bad.append(f"{rel}:{node.lineno}: the app field {value!r}")
    assert not bad, "move these into the app's AppSpec:\n" + "\n".join(bad)


# ---------------------------------------------------------------- no private cross-package imports

# Known and owned by other work in progress (none now: the bench's StrategyRun and batched, which
# the Ray engine drives, are public).
KNOWN_PRIVATE: set[tuple[str, str]] = set()
OUR_ROOTS = ("llmapps", *FORBIDDEN)


def _our_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this project."""
    path = ROOT.joinpath(*dotted.split("."))
    return dotted.split(".")[0] in OUR_ROOTS and (
        path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()
    )


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attribute reads on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _private_uses(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, module, private name) for every private name taken from a module of ours: by
    ``from mod import _name``, or as an attribute of a module it imported (``import a.b as m``
    then ``m._name``; ``from a import b`` then ``b._name``; ``import a.b`` then ``a.b._name``)."""
    found: list[tuple[int, str, str]] = []
    aliases: dict[str, str] = {}  # a local name -> the module of ours it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    aliases[a.asname] = a.name
                else:  # ``import a.b.c`` binds ``a``; ``a.b.c._x`` is resolved below
                    aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append((node.lineno, node.module, a.name))
                elif _our_module(f"{node.module}.{a.name}"):
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__"):
            continue
        base = _dotted(node.value)
        if base is None:
            continue
        head, _, rest = base.partition(".")
        module = ".".join(filter(None, [aliases.get(head), rest])) if head in aliases else None
        if module and _our_module(module):
            found.append((node.lineno, module, node.attr))
    return found


def test_private_use_finder_sees_each_form() -> None:
    """The finder behind the next test catches the four ways one module reaches another's
    private name, and not a private attribute of an object or a name of the same module."""
    code = (
        "from llmapps.bench.run import _a, public\n"
        "import llmapps.models.local as local\n"
        "from llmapps.models import pool\n"
        "import llmapps.settings\n"
        "local._b; pool._c; llmapps.settings._d\n"
        "self._e; public._f; local.x._g\n"
    )
    found = {(m, n) for _, m, n in _private_uses(ast.parse(code))}
    assert found == {
        ("llmapps.bench.run", "_a"),
        ("llmapps.models.local", "_b"),
        ("llmapps.models.pool", "_c"),
        ("llmapps.settings", "_d"),
    }


def test_no_private_names_imported_across_packages() -> None:
    """A private name of a module of ours (``from pkg.mod import _name``, ``mod._name``) is used
    only within ``pkg``: a private name is free to change, so another package must not lean on
    it (make it public, or use a public API)."""
    bad = []
    for root in OUR_ROOTS:
        for path in sorted((ROOT / root).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            package = ".".join(path.relative_to(ROOT).parent.parts)
            for line, module, name in _private_uses(ast.parse(path.read_text(encoding="utf-8"))):
                source = module.rpartition(".")[0] or module
                if (ROOT.joinpath(*module.split(".")) / "__init__.py").is_file():
                    source = module  # a package's own name, from its __init__
                target = f"{module}.{name}"
                if source != package and (rel, target) not in KNOWN_PRIVATE:
                    bad.append(f"{rel}:{line}: uses {target}")
    assert not bad, "private names used across packages:\n" + "\n".join(bad)


# ---------------------------------------------------------------- module size

MAX_MODULE_LINES = 600  # STYLE.md's ~600-line rule (issue 15); split a module by concern past it


def test_no_module_is_over_the_line_limit() -> None:
    """Every Python module of llmapps/, chains/ and finetune/ is at most 600 physical lines."""
    files = [p for root in ("llmapps", "chains", "finetune") for p in (ROOT / root).rglob("*.py")]
    assert len(files) > 20
    sizes = {p: len(p.read_bytes().splitlines()) for p in files}
    bad = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p, n in sorted(sizes.items(), key=lambda kv: -kv[1])
        if n > MAX_MODULE_LINES
    ]
    assert not bad, f"modules over {MAX_MODULE_LINES} lines (split each by concern):\n" + "\n".join(
        bad
    )


# ---------------------------------------------------------------- the whole import graph
#
# Every import of a module of llmapps/ counts: top-level, inside functions and under
# ``if TYPE_CHECKING:`` alike (a cycle through a function-level import is still a cycle of the
# design). Importing ``a.b.c`` also runs ``a.b``'s ``__init__``, so that is an edge too. Only a
# module-level ``__getattr__`` (PEP 562) is skipped: it is how an old import path lazily
# re-exports a name that moved, and runs only when a user asks for the old name.


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for root in OUR_ROOTS for p in (ROOT / root).rglob("*.py")}


def _lazy_reexport_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside a module-level ``def __getattr__``."""
    return {
        id(inner)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
        for inner in ast.walk(node)
    }


def import_edges(tree: ast.Module, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, module of ours) for every import in ``tree``, parents' ``__init__`` included (the
    root ``llmapps`` facade only where it is imported by name, not as every module's parent)."""
    found: list[tuple[int, str]] = []
    for line, module, names in _import_statements(tree, _lazy_reexport_nodes(tree)):
        subs = [f"{module}.{n}" for n in names]
        targets = [m for m in subs if m in modules]
        if len(targets) < len(subs) or not names:  # names of the module itself, or the module
            targets.append(module)
        for target in targets:
            parts = target.split(".")
            prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
            found += [
                (line, p) for p in prefixes if p in modules and (p != "llmapps" or p == target)
            ]
    return found


def _graph() -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: first line}, for llmapps/, chains/ and finetune/."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges = graph.setdefault(name, {})
        for line, target in import_edges(ast.parse(path.read_text(encoding="utf-8")), MODULES):
            if target != name:
                edges.setdefault(target, line)
    return graph


def _strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _package(module: str) -> str:
    """The unit a module belongs to: ``llmapps.X`` (a top-level module or package of the core),
    or the top-level package for ``chains`` and ``finetune``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "llmapps" else parts[0]


def test_import_graph_finder_sees_every_kind_of_import() -> None:
    """Function-level and TYPE_CHECKING imports count, a parent package's ``__init__`` counts
    (a top-level one such as ``prompts`` too), a name imported from a module is an edge to that
    module, and a module-level ``__getattr__`` (a lazy re-export for an old path) does not."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from llmapps.models.local import LocalModel\n"
        "def f():\n"
        "    import llmapps.bench.run\n"
        "    from llmapps import settings\n"
        "    from prompts import load_task\n"
        "def __getattr__(name):\n"
        "    from llmapps.compose import load_chain\n"
        "    return load_chain\n"
    )
    edges = {m for _, m in import_edges(ast.parse(code), MODULES)}
    assert edges == {
        "llmapps.models",
        "llmapps.models.local",
        "llmapps.bench",
        "llmapps.bench.run",
        "llmapps.settings",
        "prompts",  # a top-level package of ours counts; the root llmapps facade does not
    }
    ring = {"a.x": {"b.y": 1}, "b.y": {"a.x": 2, "c.z": 3}, "c.z": {}}
    assert _strongly_connected(ring) == [{"a.x", "b.y"}]


def test_no_import_cycle_between_packages() -> None:
    """No two modules of different packages import each other, directly or round a circle, at
    any level (functions included): each layer imports only the layers below it."""
    graph = _graph()
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # the finder finds imports
    bad = []
    for component in _strongly_connected(graph):
        if len({_package(m) for m in component}) < 2:
            continue  # a package's own modules may lean on each other
        edges = [
            f"  {a} -> {b} ({MODULES[a].relative_to(ROOT)}:{line})"
            for a in sorted(component)
            for b, line in sorted(graph[a].items())
            if b in component and _package(a) != _package(b)
        ]
        bad.append(f"a circle of {len(component)} modules; its edges across packages:")
        bad += edges
    assert not bad, "import cycles between packages:\n" + "\n".join(bad)


def test_nothing_outside_the_cli_imports_it() -> None:
    """The command line is the top: ``llmapps.cli`` is imported by no module of llmapps/,
    chains/ or finetune/ outside it (an app's commands get what they need through the hook)."""
    graph = _graph()
    bad = [
        f"{MODULES[a].relative_to(ROOT)}:{line}: imports {b}"
        for a, edges in sorted(graph.items())
        if not (a == "llmapps.cli" or a.startswith("llmapps.cli."))
        for b, line in sorted(edges.items())
        if b == "llmapps.cli" or b.startswith("llmapps.cli.")
    ]
    assert not bad, "the CLI is used as a library:\n" + "\n".join(bad)


# Words the apps use that are also the core's own generic vocabulary as identifiers, each with
# why: the check below is about the core knowing an app, not about common English.
GENERIC_IDENTIFIERS = {
    "answer": "a short answer scored by token F1 and exact match: a generic QA metric",
    "question": "retrieval QA over any corpus (llmapps.retrieval)",
    "history": "a trainer's log history, a rating sheet's history",
    "variant": "the A or B side of a blinded comparison (llmapps.evaluate.human, ui)",
}
# Known exceptions (file, identifier): each with why.
KNOWN_APP_IDENTIFIERS: dict[tuple[str, str], str] = {
    ("llmapps/api/apps.py", "riddle"): "read-only alias of MetricFields.target for old callers",
    (
        "llmapps/evaluate/scoring.py",
        "riddle_field",
    ): "read-only alias of MetricsConfig.target_field "
    "for old callers (and settings files: BenchSettings reads it as a validation alias)",
    ("llmapps/audit/fairness.py", "riddle"): "OutputFields(riddle=...), the audit's old keyword",
    ("llmapps/data/augment.py", "riddle"): "teacher_rows(riddle=...), the augmenter's old keyword",
}


def _identifiers(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            found.append((node.lineno, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.append((node.lineno, node.name))
        elif isinstance(node, ast.arg) or (isinstance(node, ast.keyword) and node.arg):
            found.append((node.lineno, node.arg))
        elif isinstance(node, ast.alias):
            found += [(0, part) for part in (node.asname or node.name).split(".")]
    return found


def _words_of(identifier: str) -> set[str]:
    """``riddleField``, ``riddle_field``, ``RiddleField`` -> {"riddle", "field"}."""
    return set(re.findall(r"[a-z]+", re.sub(r"([A-Z])", r"_\1", identifier).lower()))


def test_the_core_holds_no_app_identifier() -> None:
    """No identifier of llmapps/ (a name, attribute, function, class, argument, keyword or
    module) is made of an app's name or one of its fields: ``riddle_field``,
    ``evaluate.riddle`` and ``MetricFields.riddle`` name the app as surely as a string does."""
    names, words = _app_words()
    words = {w for w in words if "_" not in w} - set(GENERIC_IDENTIFIERS)
    words |= {f"{w}s" for w in words}
    app_names = {n.replace("-", "_") for n in names}
    assert "riddle" in words and "news_riddle" in app_names  # the check checks something
    bad = []
    for path in CORE_FILES:
        rel = str(path.relative_to(ROOT))
        for line, ident in _identifiers(ast.parse(path.read_text(encoding="utf-8"))):
            low = ident.lower()
            hits = (_words_of(ident) & words) or {n for n in app_names if n in low}
            if hits and (rel, ident) not in KNOWN_APP_IDENTIFIERS:
                bad.append(f"{rel}:{line}: {ident} names {sorted(hits)}")
    assert not bad, "the core names an app; move it into the app:\n" + "\n".join(sorted(set(bad)))
