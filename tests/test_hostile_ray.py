"""Hostile Ray addresses: every form is probed before ``ray.init`` and fails in one line, fast.

``ray.init`` hangs for minutes on an address where something that is not Ray listens, and the
probe used to skip every address starting with "local" (issue 22, item 8). Real listeners on
loopback stand in for the wrong service: a silent TCP server, an HTTP/1.1 server and a server
that closes at once; ``auto`` is probed through the address ``RAY_ADDRESS`` gives it. That a real
Ray GCS passes the probe is shown on the real cluster in ``tests/test_ray.py``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from llmapps.errors import BackendError

pytest.importorskip("ray", reason="the ray extra: pip install 'llmapps[ray]'")


def _serve(mode: str) -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()
    held: list[socket.socket] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if mode == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            if mode == "close":
                conn.close()
            else:
                held.append(conn)  # silent: keep it open, say nothing

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


@pytest.fixture(params=["silent", "http", "close"])
def listener(request: pytest.FixtureRequest) -> Iterator[int]:
    yield from _serve(request.param)


@pytest.mark.parametrize(
    "form", ["127.0.0.1:{port}", "localhost:{port}", "ray://localhost:{port}", "ray://[::1]:{port}"]
)
def test_a_listener_that_is_not_ray_fails_in_seconds(listener: int, form: str) -> None:
    from llmapps.bench.ray_engine import _probe

    address = form.format(port=listener)
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"(is not a Ray cluster|cannot reach the Ray cluster)"):
        _probe(address)
    assert time.monotonic() - started < 8


def test_auto_is_probed_through_the_address_it_stands_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmapps.bench.ray_engine import _probe

    for port in _serve("silent"):
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        with pytest.raises(BackendError, match=rf"'auto' \(127.0.0.1:{port}\) is not a Ray"):
            _probe("auto")


def test_the_run_fails_before_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmapps.ray_engine import RayEngineConfig, ray_cluster

    for port in _serve("silent"):
        started = time.monotonic()
        with (
            pytest.raises(BackendError, match=rf"'localhost:{port}' is not a Ray cluster"),
            ray_cluster(RayEngineConfig(address=f"localhost:{port}")),
        ):
            pass
        assert time.monotonic() - started < 8
