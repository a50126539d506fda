"""Which words a bench run's riddles leak, by the field they come from.

The ``leakage`` metric is one share per riddle over the content words of all its leak fields
(news-riddle: the reply's own answer and the article's title), so 0.1 says nothing about *what*
leaked. This reads a ``llmapps bench`` folder (its ``config.json`` names the target and leak
fields) and counts, per strategy, the riddles that share a content word with each combination of
leak fields (title only, answer only, both), and the words most often leaked. Made for the DPO
comparison (``dpo_round2.md``: "which words still leak").

    python benchmarks/leak_words.py runs/r11-test
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def breakdown(run: Path) -> list[dict[str, Any]]:
    """One row per strategy: riddles, riddles leaking, counts by the leaking fields, top words."""
    from chains.news_riddle_metrics import leak_source
    from llmapps.evaluate.human import load_run_outputs
    from llmapps.evaluate.text import content_words, words_of

    config = json.loads((run / "config.json").read_text())["metrics"]
    target, fields = config["target_field"], config["leak_fields"]
    outputs, refs = load_run_outputs(run)
    by_id = {str(r["id"]): r for r in refs}
    rows = []
    for strategy, replies in outputs.items():
        combos: Counter[str] = Counter()
        words: Counter[str] = Counter()
        for sid, reply in replies.items():
            said = set(words_of(reply.get(target) or ""))
            leaked = {f: content_words(leak_source(reply, by_id[sid], f)) & said for f in fields}
            hit = [f for f in fields if leaked[f]]
            if hit:
                combos[" + ".join(hit)] += 1
                words.update(set().union(*leaked.values()))
        rows.append(
            {
                "strategy": strategy,
                "riddles": len(replies),
                "leaking": sum(combos.values()),
                "by_fields": dict(sorted(combos.items())),
                "top_words": words.most_common(8),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    combos = sorted({c for r in rows for c in r["by_fields"]}, key=lambda c: (c.count("+"), c))
    lines = [
        "| strategy | riddles leaking | "
        + " | ".join(f"{c} only" if "+" not in c else c for c in combos)
        + " | most leaked words |",
        "|" + "---|" * (len(combos) + 3),
    ]
    for r in rows:
        cells = [str(r["by_fields"].get(c, 0)) for c in combos]
        top = ", ".join(f"{w} ({n})" for w, n in r["top_words"])
        lines.append(
            f"| {r['strategy']} | {r['leaking']} of {r['riddles']} | "
            + " | ".join(cells)
            + f" | {top} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a `llmapps bench --out` folder")
    args = p.parse_args(argv)
    print(markdown(breakdown(args.run)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
