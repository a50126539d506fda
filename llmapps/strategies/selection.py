"""Rank a task's worked examples per input, by similarity or MMR, for the ``few-shot`` strategy.

``make_ranker(kind, task)`` returns ``rank(inputs, examples) -> [example indices, best first]``;
``TokenBudgetExampleSelector`` then packs examples in that order while they fit the model's
context. The example bank is embedded once (and cached on disk by content hash, so later
processes do not re-embed it) with the retrieval embeddings (``settings.retrieval``). An example
identical to the input (same ``id`` or same text) is never offered: it would hand the model the
answer. The ranking, with scores, is logged at DEBUG (``llmapps --debug``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from llmapps.errors import ConfigError

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from llmapps.tasks import Task

log = logging.getLogger(__name__)

KINDS = ("similarity", "mmr")


def _text(values: dict[str, Any], keys: Sequence[str]) -> str:
    return "\n".join(str(values.get(k, "")) for k in keys).strip()


def mmr_order(query: np.ndarray, vectors: np.ndarray, lambda_mult: float = 0.5) -> list[int]:
    """Every row of ``vectors`` ordered by maximal marginal relevance to ``query`` (unit vectors)."""
    sims = vectors @ query
    chosen: list[int] = []
    left = list(range(len(vectors)))
    max_red = np.full(len(vectors), -np.inf)
    while left:
        if chosen:
            # redundancy: similarity to the closest already chosen example
            max_red = np.maximum(max_red, vectors @ vectors[chosen[-1]])
            scores = lambda_mult * sims[left] - (1 - lambda_mult) * max_red[left]
        else:
            scores = sims[left]
        best = left[int(np.argmax(scores))]
        chosen.append(best)
        left.remove(best)
    return chosen


def make_ranker(
    kind: str, task: Task, *, embeddings: Embeddings | None = None, lambda_mult: float = 0.5
) -> Callable[[dict[str, Any], Sequence[dict[str, Any]]], list[int]]:
    """A ranker of ``task``'s examples for one input, by ``similarity`` or ``mmr``.

    Args:
        kind: ``similarity`` (cosine to the input) or ``mmr`` (relevant yet mutually diverse).
        task: the task whose ``input_variables`` make the text that is compared.
        embeddings: default ``make_embeddings()`` (offline all-MiniLM-L6-v2, cached).
        lambda_mult: MMR trade-off, 1 = pure similarity, 0 = pure diversity.

    Raises:
        ConfigError: an unknown ``kind``.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown example selection {kind!r}; use order, {' or '.join(KINDS)}")
    keys = list(task.input_variables)
    state: dict[str, Any] = {"key": None, "vectors": None, "emb": embeddings}

    def bank_vectors(examples: Sequence[dict[str, Any]]) -> np.ndarray:
        key = (id(examples), len(examples))
        if state["key"] != key:
            if state["emb"] is None:
                state["emb"] = shared_embeddings()
            texts = [_text(ex, keys) for ex in examples]
            state["vectors"] = _embed(state["emb"], texts)
            state["texts"] = texts
            state["key"] = key
            log.debug(
                "embedded %d worked examples of %s for %s selection", len(texts), task.name, kind
            )
        return state["vectors"]

    def rank(inputs: dict[str, Any], examples: Sequence[dict[str, Any]]) -> list[int]:
        if not examples:
            return []
        vecs = bank_vectors(examples)
        text = _text(inputs, keys)
        q = _embed(state["emb"], [text])[0]
        ident = inputs.get("id")
        allowed = [
            i
            for i, ex in enumerate(examples)
            if not ((ident is not None and ex.get("id") == ident) or state["texts"][i] == text)
        ]
        if kind == "similarity":
            sims = vecs[allowed] @ q
            order = [allowed[i] for i in np.argsort(-sims, kind="stable")]
        else:
            order = [allowed[i] for i in mmr_order(q, vecs[allowed], lambda_mult)]
        if log.isEnabledFor(logging.DEBUG):
            sims_all = vecs @ q
            top = ", ".join(f"{examples[i].get('id', i)} ({sims_all[i]:.2f})" for i in order[:8])
            log.debug(
                "few-shot %s ranking for %s %r: %s",
                kind,
                task.name,
                ident or str(inputs.get(keys[0], ""))[:40],
                top,
            )
        return order

    return rank


def shared_embeddings() -> Embeddings:
    """The settings' embeddings, shared by the process (``llmapps.retrieval.embeddings.shared_embeddings``):
    every few-shot build reuses the loaded model."""
    from llmapps.retrieval.embeddings import shared_embeddings as shared

    return shared()


def _embed(emb: Embeddings, texts: list[str]) -> np.ndarray:
    from llmapps.retrieval.embeddings import normalize

    if hasattr(emb, "embed_array"):
        return normalize(emb.embed_array(texts))
    return normalize(np.asarray(emb.embed_documents(texts), dtype=np.float32))
