"""Run the app with uvicorn: in the foreground (``llmapps serve``) or in a thread on loopback.

``serve_in_thread`` binds the socket itself (port 0 picks a free one, with no race between
choosing and binding) and yields the base URL; ``serve_model`` loads a model and does both, for
the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llmapps.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from llmapps.serving.settings import ServerSettings
    from llmapps.settings import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_settings(base: ServerSettings | None = None, **given: Any) -> ServerSettings:
    """``base`` (default: settings' ``service.server``) with the ``given`` values on top (a None
    leaves the setting as it is), validated: a bad value is a ``ConfigError`` naming it."""
    from pydantic import ValidationError

    from llmapps.errors import config_error_from_validation
    from llmapps.serving.settings import ServerSettings

    if base is None:
        from llmapps.settings import get_settings

        base = get_settings().service.server
    try:
        return ServerSettings(
            **{**base.model_dump(), **{k: v for k, v in given.items() if v is not None}}
        )
    except ValidationError as err:
        raise config_error_from_validation("serve options", err) from err


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP so asyncio turns Nagle off on accepted connections (with proto 0 it does
    # not, and every response waits ~40 ms for the client's delayed ACK); TCP_NODELAY on the
    # listener is inherited by accepted sockets on Linux as well.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {err}; pick another --port (0: any free)"
        ) from err
    sock.listen(128)
    return sock


def uvicorn_server(app: FastAPI, **config: Any) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, **config))


@contextlib.contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 60.0
) -> Iterator[str]:
    """Serve ``app`` from a background thread for the length of the block; yields ``http://host:port``."""
    sock = bind_socket(host, port)
    server = uvicorn_server(app)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="llmapps-serve", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise BackendError(f"the server on {host} did not start within {startup_timeout:.0f}s")
        time.sleep(0.01)
    bound = sock.getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@contextlib.contextmanager
def serve_model(
    name: str,
    *,
    api_key: str | None = None,
    settings: Settings | None = None,
    server: ServerSettings | None = None,
    host: str = "127.0.0.1",
) -> Iterator[str]:
    """Load ``name`` and serve it on a free loopback port for the block; yields the base URL."""
    from pydantic import SecretStr

    from llmapps.serving.app import create_app
    from llmapps.settings import get_settings

    settings = settings or get_settings()
    server = server or settings.service.server
    if api_key is not None:
        server = server.model_copy(update={"api_key": SecretStr(api_key)})
    from llmapps.models.local import load_local_model

    lm = load_local_model(name, settings=settings)
    with serve_in_thread(create_app(lm, server, model_name=name), host=host, port=0) as url:
        yield url
