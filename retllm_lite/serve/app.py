"""The ASGI app factory: ``create_app(served, policy)`` -> a Starlette app behind ``Guard``."""

from __future__ import annotations

from starlette.applications import Starlette

from .library import ServedIndex
from .routes import make_routes
from .security import BindPolicy, Guard


def create_app(served: ServedIndex, policy: BindPolicy, port_holder: dict | None = None):
    """The web app over ``served``; ``policy`` says which Host and token requests need.

    ``port_holder`` ({"port": N}, filled in once bound) lets the Host check name the port.
    """
    app = Starlette(routes=make_routes(served))
    return Guard(app, policy, port_holder if port_holder is not None else {})
