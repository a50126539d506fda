"""Evaluation metrics, usable on their own and by ``llmapps bench``.

- ``reference``: ROUGE-1/2/L and BLEU against references.
- ``embedding``: semantic similarity and the FAISS nearest-neighbour index.
- ``perplexity``: perplexity of reference texts under a local model.
- ``text``: content words, format validity, length (parameterised by field names).
- ``metrics``: the metric registry (contract in ``llmapps.api.metrics``) with the generic
  metrics of ``builtin_metrics`` registered; an app's own metrics live with the app.
- ``scoring``: ``Scorer`` and ``aggregate``, every metric over rows and references of any app.
- ``judge``: LLM as judge through a judge app on any strategy.
- ``human``: blinded side-by-side sheets for people, and their ratings back as win rates.

Heavy libraries load on first use.
"""
