"""Import layering: the core (llmapps) never imports the apps, prompts or the training side, and
the generic top-level names resolve inside this project, not to a shadowing package."""

from __future__ import annotations

import ast
import importlib
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
