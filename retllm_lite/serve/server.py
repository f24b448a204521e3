"""Running the app with uvicorn: in the foreground (``retllm serve``) or in a thread.

The socket is bound here, before uvicorn starts, so port 0 (any free port) works and the
printed URL names the real port.
"""

from __future__ import annotations

import asyncio
import socket
import threading

from ..errors import BadInput
from .security import BindPolicy


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise BadInput(
            f"cannot listen on {host}:{port} ({exc.strerror})", hint="pick another --port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_for(policy: BindPolicy, port: int, with_token: bool = True) -> str:
    host = policy.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if host in ("0.0.0.0", "[::]"):
        host = socket.gethostname()
    url = f"http://{host}:{port}/"
    if with_token and policy.token:
        url += f"?token={policy.token}"
    return url


def _server(app):
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def run(app, sock: socket.socket) -> None:
    """Serve until Ctrl-C (uvicorn's signal handling)."""
    _server(app).run(sockets=[sock])


class BackgroundServer:
    """``with BackgroundServer(app, sock) as url:`` the app served from a thread."""

    def __init__(self, app, sock: socket.socket):
        self.sock = sock
        self.server = _server(app)
        self.thread = threading.Thread(target=self._run, name="retllm-serve", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve(sockets=[self.sock]))

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread stopped before it started")
            self.thread.join(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
