"""Evaluation metrics, usable on their own and by ``llmapps bench``.

- ``reference``: ROUGE-1/2/L and BLEU against references.
- ``embedding``: semantic similarity and the FAISS nearest-neighbour index.
- ``perplexity``: perplexity of reference texts under a local model.
- ``riddle``: solvability@k, leakage, format validity, length (parameterised by field names).
- ``scoring``: ``Scorer`` and ``aggregate``, every metric over rows and references of any app.
- ``judge``: LLM as judge through a judge app on any strategy.
- ``human``: blinded side-by-side sheets for people, and their ratings back as win rates.

Heavy libraries load on first use.
"""
