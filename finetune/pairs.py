"""Preference pairs for ``llmapps finetune dpo``, from people's ratings or from AI feedback.

Two sources, one file format (``llmapps.evaluate.preferences``):

- ``human_pairs``: a bench run's blinded A/B sheet as rated in the web app (``ratings.jsonl``) or
  filled by hand (``sheet.csv``), unblinded with its ``key.json``: one pair per rated item with a
  majority (``ratings_to_pairs``: ties, conflicts, unknown items and a torn last line counted);
- ``ai_feedback_pairs``: ``k`` replies per training article sampled from an adapter (temperature,
  seeded per article), each scored with the bench's own metrics (the same ``Scorer``) and summed
  into one reward, then the best against the worst reply of each article where their rewards
  differ by at least ``margin`` (``pairing="all"``: every two replies that differ by it).

The reward (``REWARD_WEIGHTS``, overridable per run) is a weighted sum of per-reply metrics, a
missing metric counting 0::

    reward = 1.0 * format_valid       # every field present and the structured reply closed
           + 1.0 * answer_f1          # token F1 of the answer against the reference answer
           - 2.0 * leakage            # share of the answer's and title's content words in the riddle
           - 1.0 * copying            # 1 when the riddle repeats the summary or article nearly verbatim
           + 0.5 * solvability@1      # the riddle retrieves its own article first among the split's

Leakage weighs double: it is the failure the SFT adapter shows most (0.145 on the test split) and
the only term that punishes naming the answer. Solvability carries information a reply-only check
does not (a riddle about nothing in particular leaks nothing but solves nothing). The judge is not
in the default: on this machine there is no judge model worth its cost (``--reward`` adds any
metric column, e.g. a judge's, with a weight).

Only train and validation articles are sampled, or an ``--articles`` file of train-like ones
that need no references (augmented or freshly ingested: leakage, copying and solvability score
them; answer F1 counts 0): asking for the test split, or a file row derived from a test
article, is a ``ConfigError``.
Sampling writes each article's replies and scores to a JSONL file as it goes, so a killed run
continues where it stopped, and a seed gives the same replies whatever the order or resumption
(each article's generator is seeded from the run's seed and the article's id). Pairing recomputes
each reply's reward from its stored metrics, so other ``--reward`` weights re-pair the same
samples without a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llmapps.errors import ConfigError, InputError
from llmapps.evaluate.preferences import PairsReport, PreferencePair

log = logging.getLogger(__name__)

REWARD_WEIGHTS: dict[str, float] = {
    "format_valid": 1.0,
    "answer_f1": 1.0,
    "leakage": -2.0,
    "copying": -1.0,
    "solvability@1": 0.5,
}
ALLOWED_SPLITS = ("train", "validation")
PAIRINGS = ("best-worst", "all")

__all__ = [
    "ALLOWED_SPLITS",
    "PAIRINGS",
    "REWARD_WEIGHTS",
    "ai_feedback_pairs",
    "article_seed",
    "human_pairs",
    "reward",
]


def reward(
    metrics: Mapping[str, Any], weights: Mapping[str, float]
) -> tuple[float, dict[str, float]]:
    """The weighted sum of ``metrics`` and each term (a missing or non-numeric metric counts 0)."""
    terms: dict[str, float] = {}
    for name, w in weights.items():
        v = metrics.get(name)
        value = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0
        terms[name] = round(w * value, 6)
    return round(sum(terms.values()), 6), terms


def _read_articles(path: str | Path, spec: Any) -> list[dict[str, Any]]:
    """The rows of an ``--articles`` file: each has an id and the app's inputs, none is a test one."""
    from llmapps.jsonl import read_jsonl

    def check(row: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in ("id", *spec.input_keys) if not str(row.get(k) or "").strip()]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        return row

    rows = read_jsonl(path, check, what="bad article")
    if not rows:
        raise InputError(f"--articles {path}: no articles in it")
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids):
        raise InputError(f"--articles {path}: article ids must be unique")
    test_ids = {str(r["id"]) for r in spec.samples("test")}
    banned = sorted(
        {i for r in rows for i in (str(r["id"]), str(r.get("source_id") or "")) if i in test_ids}
    )
    if banned:
        raise ConfigError(
            f"--articles {path}: {', '.join(banned[:5])} is a test article or derives from one; "
            "the test split is for reporting"
        )
    return rows


def _side(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"k": r["k"], "reward": r["reward"], "terms": r["terms"], "valid": r["valid"]}


def article_seed(seed: int, sample_id: str) -> int:
    """The sampling seed of one article: the same for a seed and an id, whatever the order."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


# ---------------------------------------------------------------- human ratings


def human_pairs(
    ratings: Sequence[Path], key: Path, run: Path | None = None
) -> tuple[PairsReport, str]:
    """Pairs from rated sheets of a bench run: the report and the app's name.

    ``run`` defaults to the folder above the key's (``RUN/human-eval/key.json``).
    """
    from llmapps.apps import get_app
    from llmapps.evaluate.human import load_run_outputs, read_key
    from llmapps.evaluate.preferences import ratings_to_pairs, read_rating_files

    items, _names = read_key(Path(key))
    run = Path(run) if run else Path(key).resolve().parent.parent
    config_path = run / "config.json"
    if not config_path.is_file():
        raise ConfigError(
            f"{run} is not a bench run (no config.json): pass --run RUN, the bench folder whose "
            "replies the sheet shows"
        )
    config = json.loads(config_path.read_text(encoding="utf-8"))
    app = config.get("bench", {}).get("app")
    spec = get_app(str(app))
    fields = list(config.get("metrics", {}).get("fields") or spec.reference_keys)
    strategies = sorted({v for it in items.values() for v in (it["A"], it["B"])})
    outputs, refs = load_run_outputs(run, strategies)
    producers: dict[str, dict[str, Any]] = {}
    statuses = run / "strategies.json"
    if statuses.is_file():
        for name, st in json.loads(statuses.read_text(encoding="utf-8")).items():
            cfg = st.get("config") or {}
            producers[name] = {
                k: cfg[k]
                for k in ("kind", "adapter", "base_model", "temperature", "top_p", "seed")
                if cfg.get(k) is not None
            }
    read = read_rating_files(ratings)
    report = ratings_to_pairs(
        read.ratings,
        items,
        outputs,
        refs,
        input_fields=list(spec.input_keys),
        output_fields=fields,
        producers=producers,
        read=read,
    )
    for note in report.notes:
        log.info("pairs: %s", note)
    return report, str(app)


# ---------------------------------------------------------------- AI feedback


def ai_feedback_pairs(
    app: str,
    adapter: str | Path,
    samples_out: Path,
    *,
    k: int = 4,
    splits: Sequence[str] = ("train",),
    limit: int | None = None,
    temperature: float = 0.9,
    top_p: float = 0.95,
    seed: int = 0,
    margin: float = 0.5,
    pairing: str = "best-worst",
    weights: Mapping[str, float] | None = None,
    articles: str | Path | None = None,
    base_model: str | None = None,
    max_new_tokens: int | None = None,
    chain_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[list[PreferencePair], dict[str, int]]:
    """Sample ``k`` replies per article of ``splits`` from ``adapter``, score, pair best vs worst.

    Args:
        app: the registered app whose ``lora`` chain samples and whose metrics score.
        adapter: the adapter folder to sample from (its manifest checksum is recorded).
        samples_out: JSONL of every article's replies, scores and rewards, appended per article;
            an existing file is continued (articles already there are not sampled again).
        k: replies per article (2 or more).
        splits: train and/or validation; the test split is refused.
        limit: the first ``limit`` articles of each split.
        temperature, top_p: sampling settings (temperature > 0).
        seed: the run's seed; each article's generator is seeded by ``article_seed``.
        margin: the least reward difference that makes a pair.
        pairing: ``best-worst`` (one pair an article: its best reply against its worst) or
            ``all`` (every two replies of an article whose rewards differ by ``margin``: up to
            k(k-1)/2 pairs, more signal from the same samples).
        weights: metric -> weight (default ``REWARD_WEIGHTS``).
        articles: sample these articles instead of ``splits``: a JSONL file of rows with an
            ``id`` and the app's input fields (e.g. augmented or freshly ingested train-like
            articles); references are optional (``reference_answer`` or ``answer``), and the
            metrics that need one count 0. A row that is, or derives from (``source_id``), a test
            article is refused.
        chain_options: more ``lora`` strategy options for the sampling chain (``--set``), e.g.
            ``{"structured": "off"}`` to sample free text as the bench's free-text rows score it.

    Returns:
        The pairs and counts: ``articles``, ``articles_paired``, ``replies``, ``pairs``,
        ``below_margin`` (candidate pairs under the margin), ``identical_replies``,
        ``failed_replies``.
    """
    import torch

    from llmapps.adapters import read_manifest
    from llmapps.apps import get_app, load_chain
    from llmapps.evaluate.scoring import MetricsConfig, Scorer
    from llmapps.runner import JsonlWriter, read_done

    bad = [s for s in splits if s not in ALLOWED_SPLITS]
    if bad:
        raise ConfigError(
            f"--split {','.join(bad)}: pairs are built from {' and '.join(ALLOWED_SPLITS)} articles "
            "only; the test split is for reporting"
        )
    if k < 2:
        raise ConfigError(f"--sample {k}: a pair needs at least 2 replies per article")
    if pairing not in PAIRINGS:
        raise ConfigError(f"--pairing {pairing}: choose {' or '.join(PAIRINGS)}")
    if temperature <= 0:
        raise ConfigError(
            f"--temperature {temperature}: sampling needs a temperature above 0 (0 is greedy: k copies)"
        )
    weights = dict(weights or REWARD_WEIGHTS)
    manifest = read_manifest(adapter)
    spec = get_app(app)
    if spec.samples is None or spec.training_examples is None:
        raise ConfigError(f"the app {app!r} bundles no articles with references to sample from")
    samples: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []  # every article sampled from: solvability's candidates
    if articles is not None:
        references = _read_articles(articles, spec)
        samples = [{**r, "_split": f"file:{Path(articles).name}"} for r in references[:limit]]
    else:
        for split in splits:
            rows = spec.samples(split)
            references += rows
            samples += [{**r, "_split": split} for r in (rows[:limit] if limit else rows)]
    if not samples:
        raise InputError(f"no {'/'.join(splits)} articles in {app!r}")
    metrics_config = MetricsConfig.for_fields(
        spec.reference_keys, None, spec.metric_fields, semantic=False
    )
    # the candidates do not depend on --limit, so a reply's reward does not either
    scorer = Scorer(references, metrics_config)
    done = read_done(samples_out)
    options: dict[str, Any] = dict(
        adapter=str(adapter), temperature=temperature, top_p=top_p, batch_size=k
    )
    if base_model:
        options["base_model"] = base_model
    if max_new_tokens:
        options["max_new_tokens"] = max_new_tokens
    clash = sorted(set(chain_options or {}) & {"adapter", "temperature", "top_p", "batch_size"})
    if clash:
        raise ConfigError(
            f"--set {', '.join(clash)}: set by the pairs builder itself; use its own flags "
            "(--adapter, --temperature, --top-p; batch size is --sample)"
        )
    options.update(chain_options or {})
    todo = [s for s in samples if str(s["id"]) not in done]
    chain: Any = load_chain(app, "lora", **options) if todo else None
    fields = list(metrics_config.fields)
    with JsonlWriter(samples_out) as writer:
        for n, sample in enumerate(todo, start=1):
            sid = str(sample["id"])
            s_seed = article_seed(seed, sid)
            torch.manual_seed(s_seed)
            inputs = {f: sample[f] for f in spec.input_keys}
            outs = chain.batch([inputs] * k, return_exceptions=True)
            replies = []
            for out in outs:
                if isinstance(out, Exception):
                    replies.append(
                        {"id": sid, "valid": False, "error": f"{type(out).__name__}: {out}"}
                    )
                else:
                    replies.append({"id": sid, **(dict(out) if isinstance(out, dict) else {})})
            scored = scorer.score(replies)
            if spec.score is not None:
                for m, r in zip(scored, replies, strict=True):
                    m.update(spec.score(sample, r))
            row_replies: list[dict[str, Any]] = []
            for i, (r, m) in enumerate(zip(replies, scored, strict=True)):
                value, terms = reward(m, weights)
                row_replies.append(
                    {
                        "k": i,
                        **{f: r.get(f) for f in fields},
                        "valid": r.get("valid"),
                        "error": r.get("error"),
                        "metrics": m,
                        "reward": value,
                        "terms": terms,
                    }
                )
            writer.write(
                {"id": sid, "split": sample["_split"], "seed": s_seed, "replies": row_replies}
            )
            done[sid] = {
                "id": sid,
                "split": sample["_split"],
                "seed": s_seed,
                "replies": row_replies,
            }
            if progress:
                best = max(float(r["reward"]) for r in row_replies)
                worst = min(float(r["reward"]) for r in row_replies)
                print(f"[{n}/{len(todo)}] {sid}: rewards {worst:.2f} .. {best:.2f}", flush=True)

    by_id = {str(s["id"]): s for s in samples}
    counts = dict.fromkeys(
        (
            "articles",
            "articles_paired",
            "replies",
            "pairs",
            "below_margin",
            "identical_replies",
            "failed_replies",
        ),
        0,
    )
    pairs: list[PreferencePair] = []
    for s in samples:
        sid = str(s["id"])
        row = done.get(sid)
        if row is None:
            continue
        counts["articles"] += 1
        # the reward again from each reply's stored metrics with this run's weights: a changed
        # --reward re-pairs what was sampled without sampling again
        kept: list[dict[str, Any]] = []
        for r in row["replies"]:
            if not r.get("error"):
                value, terms = reward(r.get("metrics") or {}, weights)
                kept.append({**r, "reward": value, "terms": terms})
        counts["replies"] += len(row["replies"])
        counts["failed_replies"] += len(row["replies"]) - len(kept)
        if len(kept) < 2:
            counts["below_margin"] += 1
            continue
        ranked = sorted(
            kept, key=lambda r: (-float(r["reward"]), int(r["k"]))
        )  # ties: the earlier first
        if pairing == "best-worst":
            candidates = [(ranked[0], ranked[-1])]
        else:  # every better/worse pair of the article, the widest gaps first
            candidates = sorted(
                ((a, b) for i, a in enumerate(ranked) for b in ranked[i + 1 :]),
                key=lambda ab: (-(ab[0]["reward"] - ab[1]["reward"]), ab[0]["k"], ab[1]["k"]),
            )
        made = 0
        for top, bottom in candidates:
            if top["reward"] - bottom["reward"] < margin:
                counts["below_margin"] += 1
                continue
            chosen = {f: str(top.get(f) or "") for f in fields}
            rejected = {f: str(bottom.get(f) or "") for f in fields}
            if chosen == rejected:
                counts["identical_replies"] += 1
                continue
            pair_id = f"ai-{sid}-{seed}" + (
                "" if pairing == "best-worst" else f"-{top['k']}-{bottom['k']}"
            )
            pairs.append(
                PreferencePair(
                    id=pair_id,
                    sample_id=sid,
                    source="ai",
                    prompt={f: str(by_id[sid][f]) for f in spec.input_keys},
                    chosen=chosen,
                    rejected=rejected,
                    provenance={
                        "split": row["split"],
                        "adapter": str(adapter),
                        "adapter_checksum": manifest.checksum,
                        "seed": row["seed"],
                        "run_seed": seed,
                        "k": k,
                        "temperature": temperature,
                        "top_p": top_p,
                        "reward_weights": weights,
                        "pairing": pairing,
                        "margin": round(top["reward"] - bottom["reward"], 6),
                        "chosen": _side(top),
                        "rejected": _side(bottom),
                    },
                )
            )
            made += 1
        counts["articles_paired"] += made > 0
    counts["pairs"] = len(pairs)
    return pairs, counts
