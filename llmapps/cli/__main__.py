"""``python -m llmapps.cli``: the ``llmapps`` command."""

from llmapps.cli import main

raise SystemExit(main())
