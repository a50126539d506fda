"""Moved to ``llmapps.serving.fake_endpoint`` (it is a server: the client package imports none);
its names stay importable from here."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from llmapps.serving import fake_endpoint

    return getattr(fake_endpoint, name)
