"""Applications built on llmapps, one module per app (``news_riddle`` first)."""
