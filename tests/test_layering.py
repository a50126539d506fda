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


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif (  # importlib.import_module("chains...") with a literal name
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


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
