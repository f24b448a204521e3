"""What the ``retllm serve`` tests share: a dated photo corpus indexed with the tiny CLIP,
the app served by uvicorn on 127.0.0.1 (a free port), and a raw HTTP client."""

from __future__ import annotations

import datetime as dt
import http.client
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from clip_fixtures import draw_photo
from retllm_lite.cli import cli

# album -> the year its photos' mtimes are set to (the date filter's input on this branch)
ALBUMS = {"beach": 2019, "city": 2021, "garden": 2023}
PER_ALBUM = 4


def _stamp(path: Path, year: int, day: int) -> None:
    t = dt.datetime(year, 6, 1 + day, 12, 0).timestamp()
    os.utime(path, (t, t))


def make_corpus(root: Path) -> Path:
    """photos/<album>/p<n>.jpg with mtimes in the album's year; one with EXIF; one broken file."""
    photos = root / "photos"
    seed = 100
    for album, year in ALBUMS.items():
        (photos / album).mkdir(parents=True)
        for i in range(PER_ALBUM):
            p = photos / album / f"p{i}.jpg"
            img = draw_photo(seed, (480, 360))
            seed += 1
            if album == "garden" and i == 0:
                exif = Image.Exif()
                exif[0x010F] = "TestMake"
                exif[0x0110] = "Model <b>&amp;</b>"
                exif.get_ifd(0x8769)[0x9003] = "2023:06:14 09:30:00"
                img.save(p, quality=90, exif=exif)
            else:
                img.save(p, quality=90)
            _stamp(p, year, i)
    (photos / "city" / "broken.jpg").write_bytes(b"not a jpeg at all\n" * 4)
    return photos


def index_folder(photos: Path, index_dir: Path, clip_dir: Path) -> None:
    res = CliRunner().invoke(
        cli, ["index", str(photos), "--index", str(index_dir), "--clip-model", str(clip_dir)]
    )
    assert res.exit_code == 0, res.output


@dataclass
class Served:
    photos: Path
    index_dir: Path
    port: int
    server: object
    served: object

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            hdrs = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            if body is not None:
                hdrs["Content-Length"] = str(len(body))
            for k, v in hdrs.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get_json(self, path: str, expect: int = 200, **kw):
        status, _headers, body = self.request("GET", path, **kw)
        assert status == expect, (path, status, body[:500])
        return json.loads(body)

    def post_image(self, path: str, fields: dict, image: bytes, expect: int | None = 200):
        body, ctype = multipart(fields, image)
        status, _h, data = self.request("POST", path, body, {"Content-Type": ctype})
        if expect is not None:
            assert status == expect, (status, data[:500])
        return status, json.loads(data)


def multipart(fields: dict, image: bytes | None, filename: str = "query.jpg") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    if image is not None:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
        )
        out.write(image + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def start(photos: Path, index_dir: Path, token: str | None = None, host: str = "127.0.0.1", **settings):
    """Serve the index on a free loopback port; returns a context manager yielding Served."""
    from retllm_lite.serve import (
        BackgroundServer,
        ServedIndex,
        ServeSettings,
        bind_policy,
        bind_socket,
        create_app,
    )

    class _Ctx:
        def __enter__(self):
            self.served = ServedIndex(ServeSettings(index_path=index_dir, **settings))
            sock = bind_socket("127.0.0.1", 0)
            port = sock.getsockname()[1]
            policy = bind_policy(host, token)
            self.server = BackgroundServer(create_app(self.served, policy, {"port": port}), sock)
            self.server.__enter__()
            return Served(photos, index_dir, port, self.server, self.served)

        def __exit__(self, *exc):
            self.server.__exit__(*exc)
            self.served.close()

    return _Ctx()


@pytest.fixture(scope="session")
def serve_corpus(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("serve-corpus")
    photos = make_corpus(root)
    index_dir = root / "idx"
    index_folder(photos, index_dir, tiny_clip_dir)
    return photos, index_dir


@pytest.fixture(scope="module")
def served(serve_corpus, tmp_path_factory):
    from retllm_lite.serve.files import ThumbnailCache

    photos, index_dir = serve_corpus
    thumbs = ThumbnailCache(tmp_path_factory.mktemp("thumbs"))
    with start(photos, index_dir, thumbnails=thumbs) as s:
        yield s
