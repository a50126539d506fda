"""The suite runs offline by construction: pytest-socket refuses any host but loopback."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi import FastAPI
from pytest_socket import SocketConnectBlockedError

from llmapps.serving.server import serve_in_thread


@pytest.mark.filterwarnings("ignore:A test tried to use socket")
def test_a_connection_off_loopback_is_refused_before_it_leaves() -> None:
    with pytest.raises(SocketConnectBlockedError, match=r"93\.184\.215\.14"):
        socket.create_connection(("93.184.215.14", 80), timeout=1)


def test_loopback_servers_still_answer() -> None:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    with serve_in_thread(app) as url:
        assert httpx.get(url + "/ping", timeout=10).json() == {"ok": "yes"}
