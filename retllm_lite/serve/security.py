"""What keeps ``retllm serve`` safe by default: where it binds, who may ask, what is sent back.

- It binds 127.0.0.1 unless told otherwise; any other address needs a token (``--token``,
  or one generated and printed). With a token, every request must carry it: an
  ``Authorization: Bearer`` or ``X-Retllm-Token`` header, or the cookie a ``?token=`` link
  sets (HttpOnly, SameSite=Strict), so a link can be opened once and the page works.
- On a loopback bind the Host header must name the loopback address (DNS rebinding: a
  web page cannot point a name it controls at 127.0.0.1 and read the API), and a request
  from another origin (an ``Origin`` header that is not this server) is refused.
- A request path that is not plain (``..`` segments, a NUL or other control character, a
  backslash, still-encoded ``%`` after decoding, over ``MAX_PATH_CHARS``) is refused before
  routing. Files are only ever looked up by item id (``routes.py``); this is a second
  fence, not the first.
- Every response carries a strict Content-Security-Policy (scripts and styles only from
  this server, no inline script), ``nosniff`` and no-referrer headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from ..errors import BadInput

COOKIE = "retllm_token"
MAX_PATH_CHARS = 512
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class BindPolicy:
    """Where to listen and which token requests need (None: loopback without a token)."""

    host: str
    token: str | None
    generated: bool = False

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def bind_policy(host: str, token: str | None, generate: bool = True) -> BindPolicy:
    """The token a bind needs: a non-loopback ``host`` without one gets a generated token,
    or (``generate=False``) is refused."""
    if token is not None and len(token) < 16:
        raise BadInput(
            "the token is too short (under 16 characters)", hint="omit --token to get a generated one"
        )
    if token is not None or is_loopback(host):
        return BindPolicy(host, token)
    if not generate:
        raise BadInput(
            f"binding {host} (not loopback) needs a token",
            hint="pass --token, or let 'retllm serve' generate one",
        )
    return BindPolicy(host, secrets.token_urlsafe(24), generated=True)


def path_is_plain(path: str) -> bool:
    """True for a decoded request path with nothing that could walk a file tree."""
    if len(path) > MAX_PATH_CHARS or not path.startswith("/"):
        return False
    if "\\" in path or "%" in path:  # '%' left after decoding: double-encoded
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):  # NUL, CR/LF (header injection), ...
        return False
    return not any(seg in ("..", ".") for seg in path.split("/"))


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class Guard:
    """Pure ASGI middleware: path fence, Host/Origin checks, token, security headers."""

    def __init__(self, app, policy: BindPolicy, port_holder: dict):
        self.app = app
        self.policy = policy
        self.port_holder = port_holder  # {"port": int} once bound (port 0 binds a free one)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        refusal = self._check(scope)
        if refusal is not None:
            status, text, extra = refusal
            await _respond(send_with_headers, status, {"error": text}, extra)
            return
        if self.policy.token is not None and scope["method"] == "GET":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if "token" in query and self._matches(query["token"]):
                rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
                location = scope["path"] + (f"?{rest}" if rest else "")
                cookie = f"{COOKIE}={self.policy.token}; Path=/; HttpOnly; SameSite=Strict"
                headers = [(b"location", location.encode()), (b"set-cookie", cookie.encode())]
                await _respond(send_with_headers, 303, {"ok": True}, headers)
                return
        await self.app(scope, receive, send_with_headers)

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.policy.token.encode())

    def _check(self, scope):
        if not path_is_plain(scope["path"]):
            return 400, "refused: not a plain request path", []
        port = self.port_holder.get("port")
        if self.policy.loopback:
            host = _header(scope, b"host") or ""
            name, _, hport = host.rpartition(":") if not host.endswith("]") else (host, "", "")
            if not is_loopback(name or host) or (port is not None and hport and hport != str(port)):
                return 421, "refused: Host is not this loopback server", []
        origin = _header(scope, b"origin")
        if origin is not None and origin != "null":
            host = _header(scope, b"host") or ""
            if origin not in (f"http://{host}", f"https://{host}"):
                return 403, "refused: request from another origin", []
        if self.policy.token is None:
            return None
        auth = _header(scope, b"authorization") or ""
        if auth.startswith("Bearer ") and self._matches(auth[7:]):
            return None
        if self._matches(_header(scope, b"x-retllm-token")):
            return None
        cookie = SimpleCookie()
        try:
            cookie.load(_header(scope, b"cookie") or "")
        except Exception:
            cookie = SimpleCookie()
        if COOKIE in cookie and self._matches(cookie[COOKIE].value):
            return None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if scope["method"] == "GET" and "token" in query and self._matches(query["token"]):
            return None  # handled by the redirect that sets the cookie
        return 401, "this server needs its token (open the link it printed, or send the header)", []


async def _respond(send, status: int, body: dict, headers: list) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
