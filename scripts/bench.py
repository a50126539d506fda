#!/usr/bin/env python
"""The bench as a script: ``python scripts/bench.py news-riddle --strategies few-shot,zero-shot --out runs/x``.

Same flags as ``llmapps bench`` (``--help`` lists them).
"""

from __future__ import annotations

import sys

from llmapps.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
