"""The HTTP surface: the page (three packaged files) and the JSON API under /api/.

Routes take item ids (integers) only; no route takes a file path from the client.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from ..errors import BadInput, RetllmError
from .files import NotServable
from .library import SearchRequest, ServedIndex

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_STATIC_BYTES: dict[str, bytes] = {}
THUMB_CACHE = "private, max-age=31536000, immutable"  # the URL's content never changes for an ETag
MULTIPART_OVERHEAD = 64 * 1024


def _static(name: str) -> Response:
    data = _STATIC_BYTES.get(name)
    if data is None:
        data = _STATIC_BYTES[name] = resources.files(__package__).joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"cache-control": "no-cache"})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={"cache-control": "no-store"})


def _int(value: str | None, name: str, default: int | None = None) -> int | None:
    if value is None or value == "":
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise BadInput(f"{name} must be a whole number, got {value[:40]!r}")
    return int(value)


def _float(value: str | None, name: str, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except ValueError:
        raise BadInput(f"{name} must be a number, got {value[:40]!r}") from None
    if out != out:  # NaN
        raise BadInput(f"{name} must be a number, got {value[:40]!r}")
    return out


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() in ("1", "true", "yes", "on")


def _parse(params, served: ServedIndex) -> SearchRequest:
    settings = served.settings
    return SearchRequest(
        text=(params.get("q") or "").strip() or None,
        like=_int(params.get("like"), "like"),
        image_weight=_float(params.get("image_weight"), "image_weight", 0.5),
        k=_int(params.get("k"), "k", settings.default_k),
        modality=params.get("modality") or None,
        rerank=_flag(params.get("rerank"), settings.rerank_default),
        rerank_k=_int(params.get("rerank_k"), "rerank_k", 5),
        enhance=params.get("enhance") or "gated",
        after=params.get("after") or None,
        before=params.get("before") or None,
        folder=params.get("folder") or None,
    )


async def _read_capped(request: Request, cap: int) -> bytes | None:
    """The request body, or None once it passes ``cap`` bytes (nothing more is read)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        return None
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def make_routes(served: ServedIndex) -> list[Route]:
    async def page(request: Request) -> Response:
        return _static("index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC or name == "index.html":
            return _error(404, "not found")
        return _static(name)

    async def search(request: Request) -> Response:
        try:
            if request.method == "GET":
                query = _parse(request.query_params, served)
            else:
                query = await _parse_upload(request)
            return JSONResponse(await served.search(query), headers={"cache-control": "no-store"})
        except NotServable as exc:
            return _error(exc.status, exc.reason)
        except RetllmError as exc:
            return _error(400, str(exc))

    async def _parse_upload(request: Request) -> SearchRequest:
        cap = served.settings.max_upload_bytes
        body = await _read_capped(request, cap + MULTIPART_OVERHEAD)
        if body is None:
            raise NotServable(413, f"the upload is over the {cap // (1024 * 1024)} MB limit")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        # python-multipart parses the buffered body; a file part is held in memory up to
        # 1 MB, then in a temporary file in the system's temp dir, never near the photos
        async with Request(request.scope, replay).form(max_files=1, max_fields=20) as form:
            query = _parse(form, served)
            upload = form.get("image")
            if upload is not None and not isinstance(upload, str):
                data = await upload.read()
                if len(data) > cap:
                    raise NotServable(413, f"the image is over the {cap // (1024 * 1024)} MB limit")
                if data:
                    query.image = data
        return query

    async def item(request: Request) -> Response:
        try:
            return JSONResponse(await served.item(request.path_params["item_id"]))
        except NotServable as exc:
            return _error(exc.status, exc.reason)

    async def thumbnail(request: Request) -> Response:
        try:
            px = _int(request.query_params.get("size"), "size", 256)
            thumb = await served.thumbnail(request.path_params["item_id"], px)
        except NotServable as exc:
            return _error(exc.status, exc.reason)
        except RetllmError as exc:
            return _error(400, str(exc))
        etag = f'"{thumb.etag}"'
        headers = {"cache-control": THUMB_CACHE, "etag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return FileResponse(thumb.path, media_type="image/jpeg", headers=headers)

    async def folders(request: Request) -> Response:
        return JSONResponse({"folders": await served.folders()})

    async def status(request: Request) -> Response:
        return JSONResponse(await served.status(), headers={"cache-control": "no-store"})

    async def not_found(request: Request) -> Response:
        return _error(404, "not found")

    return [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/search", search, methods=["GET", "POST"]),
        Route("/api/items/{item_id:int}", item),
        Route("/api/items/{item_id:int}/thumbnail", thumbnail),
        Route("/api/folders", folders),
        Route("/api/status", status),
        Route("/{rest:path}", not_found),
    ]
