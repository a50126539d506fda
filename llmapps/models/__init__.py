"""Model layer: the backends that load and run local models, below the strategies.

``local.py`` (transformers) and ``llamacpp.py`` (llama.cpp, GGUF files) register into
``llmapps.api.backends.BACKENDS``; ``loader.py`` resolves a model spec to a backend and loads it
into a ``ModelPool`` (``pool.py``); ``langchain_local.py`` wraps a loaded model as LangChain
models; ``structured.py`` and ``grammar_masks.py`` constrain decoding; ``packaged.py`` and
``tiny.py`` provide the packaged and the tiny built-in models. Imports only ``llmapps.api`` and
the foundation modules (settings, errors).
"""
