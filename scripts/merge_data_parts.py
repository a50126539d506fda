"""One-off: merge the hand-written data parts into data/ and assign the fixed split.

The split is a rule on article ids, not randomness, so adding articles never moves existing ones:
among riddled articles, number n % 7 == 3 goes to test, n % 7 == 5 to validation, the rest to train.
"""

import json
import sys
from pathlib import Path

parts, out = Path(sys.argv[1]), Path(sys.argv[2])
articles, riddles = [], []
for i in (1, 2, 3):
    for name, bucket in ((f"articles_{i}.jsonl", articles), (f"riddles_{i}.jsonl", riddles)):
        path = parts / name
        if path.exists():
            bucket += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
articles.sort(key=lambda r: r["id"])
riddles.sort(key=lambda r: r["id"])
ids = {a["id"] for a in articles}
riddles = [r for r in riddles if r["id"] in ids]
splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
for r in riddles:
    n = int(r["id"][1:])
    splits["test" if n % 7 == 3 else "validation" if n % 7 == 5 else "train"].append(r["id"])
out.mkdir(parents=True, exist_ok=True)
(out / "articles.jsonl").write_text(
    "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in articles)
)
(out / "riddles.jsonl").write_text(
    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in riddles)
)
(out / "splits.json").write_text(json.dumps(splits, indent=1) + "\n")
print(len(articles), "articles", len(riddles), "riddles", {k: len(v) for k, v in splits.items()})
