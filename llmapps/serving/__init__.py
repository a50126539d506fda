"""Serve a local model over an OpenAI-compatible HTTP API (``llmapps serve``).

``batcher.py`` gathers concurrent requests into one batched ``LocalModel.generate`` call (dynamic
batching), ``app.py`` is the FastAPI app (auth, limits, OpenAI-style errors, SSE streaming),
``server.py`` runs it with uvicorn (in a thread on a loopback port for tests and the demo); the
``serve`` command of the command line reads the flags and starts it. ``server.serve_model`` is
the ``llmapps.servers`` entry point; ``llmapps.compose`` hands it to the ``service`` strategy's
offline defaults; ``fake_endpoint.py`` is a scripted endpoint for measuring and fault-testing clients.
"""
