"""Client side of LLM-as-a-service: any OpenAI-compatible endpoint as a LangChain chat model.

``ServiceChatModel`` (``chat.py``) is langchain-openai's ``ChatOpenAI`` with what a batch job
against a paid or self-hosted API needs around each call: a response cache (``cache.py``), a rate
limit in requests and tokens per minute and retries with backoff (``limits.py``), and token usage
with cost per call. The ``service`` strategy (``llmapps/strategies/service.py``) builds on it.
A client only: it never imports the server package (``llmapps.serving``, where the scripted
``fake_endpoint`` lives too).
"""
