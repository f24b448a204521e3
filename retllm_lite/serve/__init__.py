"""``retllm serve``: a local web app and JSON API over an index (docs/serve.md).

``library`` holds what the API does (plain Python over ``Retriever``), ``routes`` the HTTP
surface, ``security`` the bind policy and request guard, ``files`` reading indexed photos
and caching thumbnails, ``filters`` the date and folder filters, ``server`` uvicorn.
Needs the ``serve`` extra (starlette, uvicorn, python-multipart).
"""

from __future__ import annotations

from .app import create_app
from .library import SearchRequest, ServedIndex, ServeSettings
from .security import BindPolicy, bind_policy
from .server import BackgroundServer, bind_socket, run, url_for

__all__ = [
    "BackgroundServer",
    "BindPolicy",
    "SearchRequest",
    "ServeSettings",
    "ServedIndex",
    "bind_policy",
    "bind_socket",
    "create_app",
    "run",
    "url_for",
]
