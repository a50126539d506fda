"""Fault injection on FAISS index folders (issue 17, items 6 and 11).

Every corruption below is applied to a copy of a real saved index (real FAISS files, real
docstore) and loaded: the only acceptable outcomes are a clean load of a consistent index or one
``RetrievalError`` line; any other exception (a traceback) counts as an error. Manifest edits are
re-checksummed, as a careful attacker would, so the strict manifest model itself is exercised;
an edit that is not re-checksummed must be caught by the checksum alone. Paths in the manifest
must stay inside the folder. Two writers: the second is refused (CLI lock), and a library save
over a generation someone else wrote since loading is refused too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmapps.errors import RetrievalError
from llmapps.hashing import sha256_file
from llmapps.jsonl import json_checksum
from llmapps.retrieval.store import VectorIndex

D = 8


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    index = VectorIndex(D, "test-model")
    index.add(
        [f"d{i}" for i in range(5)],
        [f"text {i}" for i in range(5)],
        _vectors(5),
        [{"n": i} for i in range(5)],
    )
    return index.save(tmp_path_factory.mktemp("idx") / "index")


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def _write_manifest(folder: Path, m: dict[str, Any], *, resign: bool = True) -> None:
    if resign and isinstance(m, dict) and "checksum" in m:
        m["checksum"] = json_checksum(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _set(key: str, value: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        m = _manifest(folder)
        m[key] = value
        _write_manifest(folder, m)

    return edit


def _set_index(key: str, value: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        m = _manifest(folder)
        m["index"][key] = value
        _write_manifest(folder, m)

    return edit


def _replace_file(suffix: str, data: bytes, *, resign: bool = True) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        f = next(folder.glob(f"*{suffix}"))
        f.write_bytes(data)
        if resign:
            m = _manifest(folder)
            m["files"][f.name] = sha256_file(f)
            _write_manifest(folder, m)

    return edit


def _docstore_edit(
    change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        f = next(folder.glob("docstore-*.jsonl"))
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        data = "".join(json.dumps(r) + "\n" for r in change(rows)).encode()
        _replace_file(".jsonl", data)(folder)

    return edit


def _outside_file(folder: Path, name: str) -> None:
    """The manifest names a file outside the folder (a copy of the real index, right checksum)."""
    src = next(folder.glob("index-*.faiss"))
    outside = folder.parent / "outside.faiss"
    shutil.copy(src, outside)
    m = _manifest(folder)
    m["files"] = {n: d for n, d in m["files"].items() if not n.endswith(".faiss")}
    m["files"][name] = sha256_file(outside)
    _write_manifest(folder, m)


def _symlinked(folder: Path) -> None:
    src = next(folder.glob("index-*.faiss"))
    outside = folder.parent / "outside-link-target.faiss"
    shutil.move(src, outside)
    os.symlink(outside, src)


def _other_faiss(kind: str) -> bytes:
    import faiss

    idx = {
        "plain": faiss.IndexFlatIP(D),
        "dim": faiss.IndexIDMap2(faiss.IndexFlatIP(D * 2)),
        "hnsw": faiss.IndexIDMap2(faiss.IndexHNSWFlat(D, 8)),
    }[kind]
    return bytes(faiss.serialize_index(idx))


BAD_VALUES = [None, "x", [], {}, -1, 2**70, 1.5, True]
FIELDS = [
    "format_version",
    "embedding_model",
    "dimension",
    "normalized",
    "metric",
    "count",
    "next_label",
    "index",
    "generation",
    "files",
    "updated",
    "config",
]
CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    f"{k}={v!r}": _set(k, v) for k in FIELDS for v in BAD_VALUES
}
CORRUPTIONS.update(
    {
        f"index.{k}={v!r}": _set_index(k, v)
        for k, v in [
            ("kind", "nope"),
            ("kind", 3),
            ("hnsw_m", "32"),
            ("hnsw_m", -4),
            ("ivf_nlist", 0),
            ("hnsw_ef_search", 10**9),
            ("bogus", 1),
        ]
    }
)
CORRUPTIONS.update(
    {
        "extra-manifest-key": _set("surprise", 1),
        "format-99": _set("format_version", 99),
        "checksum-bad-form": _set("checksum", "abc"),
        "edited-not-resigned": lambda f: _write_manifest(
            f, {**_manifest(f), "count": 4}, resign=False
        ),
        "manifest-not-utf8": lambda f: (f / "manifest.json").write_bytes(b'{"a": "\xff"}'),
        "manifest-array": lambda f: (f / "manifest.json").write_text("[1, 2]"),
        "manifest-deep": lambda f: (f / "manifest.json").write_text("[" * 100_000),
        "manifest-empty": lambda f: (f / "manifest.json").write_text(""),
        "manifest-missing": lambda f: (f / "manifest.json").unlink(),
        "manifest-is-folder": lambda f: (
            (f / "manifest.json").unlink(),
            (f / "manifest.json").mkdir(),
        ),
        "path-parent": lambda f: _outside_file(f, "../outside.faiss"),
        "path-absolute": lambda f: _outside_file(f, str(f.parent / "outside.faiss")),
        "path-nested": lambda f: _outside_file(f, "index-1.faiss/../../outside.faiss"),
        "path-symlink": _symlinked,
        "files-two-indexes": lambda f: _set(
            "files", {**_manifest(f)["files"], "index-9.faiss": "0" * 64}
        )(f),
        "files-none": _set("files", {}),
        "faiss-garbage": _replace_file(".faiss", b"not a faiss index at all"),
        "faiss-truncated": lambda f: _replace_file(
            ".faiss", next(f.glob("*.faiss")).read_bytes()[:40]
        )(f),
        "faiss-empty": _replace_file(".faiss", b""),
        "faiss-not-idmap": _replace_file(".faiss", _other_faiss("plain")),
        "faiss-other-dimension": _replace_file(".faiss", _other_faiss("dim")),
        "faiss-other-kind": _replace_file(".faiss", _other_faiss("hnsw")),
        "faiss-flipped-byte": lambda f: _replace_file(
            ".faiss",
            bytes(b ^ (i == 60) * 0xFF for i, b in enumerate(next(f.glob("*.faiss")).read_bytes())),
            resign=False,
        )(f),
        "docstore-not-utf8": _replace_file(".jsonl", b'{"label": 0, "id": "d0", "text": "\xff"}\n'),
        "docstore-not-json": _replace_file(".jsonl", b"{oops\n"),
        "docstore-array-rows": _replace_file(".jsonl", b"[1]\n[2]\n"),
        "docstore-missing-label": _docstore_edit(
            lambda rows: [{k: v for k, v in r.items() if k != "label"} for r in rows]
        ),
        "docstore-label-string": _docstore_edit(
            lambda rows: [{**r, "label": str(r["label"])} for r in rows]
        ),
        "docstore-metadata-list": _docstore_edit(
            lambda rows: [{**r, "metadata": [1]} for r in rows]
        ),
        "docstore-duplicate-id": _docstore_edit(lambda rows: [{**r, "id": "same"} for r in rows]),
        "docstore-labels-shifted": _docstore_edit(
            lambda rows: [{**r, "label": r["label"] + 100} for r in rows]
        ),
        "docstore-row-dropped": _docstore_edit(lambda rows: rows[:-1]),
        "docstore-row-added": _docstore_edit(
            lambda rows: [*rows, {**rows[0], "id": "new", "label": 99}]
        ),
        "docstore-empty": _replace_file(".jsonl", b""),
        "docstore-missing": lambda f: next(f.glob("docstore-*.jsonl")).unlink(),
        "next-label-below": _set("next_label", 1),
    }
)


def test_every_corruption_of_an_index_folder_is_one_line_or_a_consistent_load(
    saved: Path, tmp_path: Path
) -> None:
    outcomes: dict[str, str] = {}
    errors: list[str] = []
    for n, (name, corrupt) in enumerate(CORRUPTIONS.items()):
        folder = tmp_path / f"c{n}" / "index"
        shutil.copytree(saved, folder)
        corrupt(folder)
        try:
            loaded = VectorIndex.load(folder)
        except RetrievalError as err:
            outcomes[name] = "refused"
            if "\n" in str(err):
                errors.append(f"{name}: a multi-line message: {err}")
            continue
        except Exception as err:  # a traceback: what this test exists to prevent
            errors.append(f"{name}: {type(err).__name__}: {err}")
            continue
        outcomes[name] = "loaded"
        assert len(loaded) == 5 and loaded.search(_vectors(1), 1)[0], name  # loaded means usable
    print(
        f"index corruptions: {len(CORRUPTIONS)} tried, {list(outcomes.values()).count('refused')} "
        f"refused in one line, {list(outcomes.values()).count('loaded')} harmless, {len(errors)} errors"
    )
    assert not errors, errors
    for must_refuse in (
        "path-parent",
        "path-absolute",
        "path-nested",
        "path-symlink",
        "format-99",
        "edited-not-resigned",
        "faiss-garbage",
        "faiss-not-idmap",
        "docstore-not-utf8",
        "docstore-labels-shifted",
        "next-label-below",
        "dimension=-1",
        "count='x'",
    ):
        assert outcomes[must_refuse] == "refused", must_refuse
    assert len(CORRUPTIONS) >= 130


def test_a_format_1_manifest_without_checksum_still_loads(saved: Path, tmp_path: Path) -> None:
    folder = tmp_path / "old"
    shutil.copytree(saved, folder)
    m = _manifest(folder)
    m.pop("checksum")
    m["format_version"] = 1
    _write_manifest(folder, m)
    assert len(VectorIndex.load(folder)) == 5


def test_index_info_reports_a_corrupt_index_in_one_line(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    folder = tmp_path / "cli"
    shutil.copytree(saved, folder)
    _outside_file(folder, "../outside.faiss")
    assert main(["index", "info", "--index", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "files" in err and "Traceback" not in err


HOLDER = textwrap.dedent(
    """
    import sys, time
    from llmapps.locks import exclusive_lock
    with exclusive_lock(sys.argv[1], "test"):
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_two_writers_the_second_is_refused_and_nothing_is_lost(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmapps.cli import main

    folder = tmp_path / "busy"
    shutil.copytree(saved, folder)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for cmd in (
            ["index", "add", "--index", str(folder), "--input", str(tmp_path)],
            ["index", "delete", "d0", "--index", str(folder)],
            ["index", "build", "--input", str(tmp_path / "docs"), "--out", str(folder), "--force"],
        ):
            assert main(cmd) == 2
            err = capsys.readouterr().err
            assert f"being written by another process (PID {holder.pid}" in err, err
    finally:
        holder.kill()
        holder.wait()
    # in the library: two loads, two saves; the second would drop the first one's documents
    a, b = VectorIndex.load(folder), VectorIndex.load(folder)
    a.add(["from-a"], ["A"], _vectors(1, seed=1))
    a.save()
    b.add(["from-b"], ["B"], _vectors(1, seed=2))
    with pytest.raises(RetrievalError, match=r"saved by another writer \(generation 2\)"):
        b.save()
    assert "from-a" in VectorIndex.load(folder).records  # nothing lost
