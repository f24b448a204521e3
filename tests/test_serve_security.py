"""``retllm serve`` is safe by default: every refused path form, the token, Host and Origin checks,
files that changed since indexing, and a non-loopback bind without a token."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from retllm_lite.errors import BadInput
from retllm_lite.serve import bind_policy
from serve_fixtures import index_folder, make_corpus, start

SECRET = b"TOP-SECRET-CONTENTS-9f3c"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, tiny_clip_dir):
    root = tmp_path_factory.mktemp("serve-security")
    photos = make_corpus(root)
    (root / "secret.txt").write_bytes(SECRET)
    (root / "photos" / "beach" / "link-out.jpg").symlink_to(root / "secret.txt")
    index_folder(photos, root / "idx", tiny_clip_dir)
    with start(photos, root / "idx") as s:
        yield s, root


def refused_forms(root) -> dict[str, str]:
    secret = str(root / "secret.txt")
    link = str(root / "photos" / "beach" / "link-out.jpg")
    return {
        "dot-dot": "/static/../../../../../../etc/passwd",
        "dot-dot in the api": "/api/items/../../../../etc/passwd",
        "absolute path": "/" + secret,
        "absolute path as an item": "/api/items/" + secret,
        "absolute path as a query": "/api/items/1/thumbnail?path=" + secret,
        "percent-encoded ..": "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "percent-encoded slashes": "/static/..%2f..%2f..%2fetc%2fpasswd",
        "double-encoded": "/static/%252e%252e%252f%252e%252e%252fetc%252fpasswd",
        "overlong UTF-8 dots": "/static/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
        "backslashes": "/static/..\\..\\etc\\passwd",
        "NUL byte": "/static/app.js%00.png",
        "NUL in an item id": "/api/items/1%00",
        "CR/LF (header injection)": "/static/app.js%0d%0aSet-Cookie:%20x=y?token=x",
        "overlong name": "/static/" + "a" * 5000,
        "symlink pointing out": "/static/../photos/beach/link-out.jpg",
        "symlink by path": "/api/items/" + link,
        "like= a path": "/api/search?like=" + secret,
        "like= dot-dot": "/api/search?like=../../etc/passwd",
        "folder= dot-dot": "/api/search?q=x&folder=../../etc",
        "negative id": "/api/items/-1/thumbnail",
        "huge id": "/api/items/99999999999999999999/thumbnail",
    }


def test_every_refused_path_form(guarded, capsys):
    s, root = guarded
    got = {}
    for name, path in refused_forms(root).items():
        status, _headers, body = s.request("GET", path)
        got[name] = status
        assert 400 <= status < 500, (name, path, status)
        assert SECRET not in body and b"root:" not in body, name
    # the symlink pointing out (a .jpg name on a text file) was recorded as an error, not an item
    errors = {e["path"]: e["reason"] for e in s.get_json("/api/status")["errors"]["first"]}
    assert "not an image" in errors[str(root / "photos" / "beach" / "link-out.jpg")]
    with capsys.disabled():
        print("\nrefused path forms (status):", json.dumps(got, indent=1))
    # an item id still works, and ignores a path given alongside it
    hit = s.get_json("/api/search?q=x&k=1")["hits"][0]
    status, headers, body = s.request("GET", f"/api/items/{hit['id']}/thumbnail?path={root / 'secret.txt'}")
    assert status == 200 and headers["content-type"] == "image/jpeg" and SECRET not in body


def test_a_photo_replaced_since_indexing_is_not_served(guarded):
    s, root = guarded
    hits = s.get_json("/api/search?q=x&k=50")["hits"]
    swapped = next(h for h in hits if h["path"].endswith("garden/p3.jpg"))
    gone = next(h for h in hits if h["path"].endswith("garden/p2.jpg"))
    os.replace(swapped["path"], str(root / "moved-away.jpg"))
    os.symlink(root / "secret.txt", swapped["path"])  # now points out of the folder
    os.unlink(gone["path"])
    for hit, expect in ((swapped, 409), (gone, 410)):
        status, _h, body = s.request("GET", f"/api/items/{hit['id']}/thumbnail?size=1024")
        assert status == expect and SECRET not in body, (hit["path"], status)
        assert s.get_json(f"/api/search?like={hit['id']}", expect=expect)["error"]


def test_host_and_origin_checks_on_loopback(guarded):
    s, _root = guarded
    assert s.request("GET", "/api/status", headers={"Host": "evil.example"})[0] == 421
    assert s.request("GET", "/api/status", headers={"Host": f"attacker.test:{s.port}"})[0] == 421
    assert s.request("GET", "/api/status", headers={"Host": f"localhost:{s.port}"})[0] == 200
    cross = {"Origin": "http://evil.example"}
    assert s.request("GET", "/api/search?q=x", headers=cross)[0] == 403
    same = {"Origin": f"http://127.0.0.1:{s.port}"}
    assert s.request("GET", "/api/search?q=x", headers=same)[0] == 200


def test_a_token_guards_every_request(serve_corpus):
    photos, index_dir = serve_corpus
    token = "t0ken-for-tests-0123456789"
    with start(photos, index_dir, token=token) as s:
        for path in (
            "/",
            "/static/app.js",
            "/api/status",
            "/api/search?q=x",
            "/api/items/1",
            "/api/items/1/thumbnail",
            "/api/folders",
            "/nope",
        ):
            status, _h, body = s.request("GET", path)
            assert status == 401 and b"token" in body, path
            assert s.request("GET", path, headers={"X-Retllm-Token": "wrong-" + token})[0] == 401
        assert s.request("GET", "/api/status", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert s.request("GET", "/api/status", headers={"X-Retllm-Token": token})[0] == 200
        status, headers, _b = s.request("GET", f"/?token={token}")
        assert status == 303 and headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert s.request("GET", "/api/status", headers={"Cookie": cookie.split(";")[0]})[0] == 200
        assert s.request("GET", "/api/status", headers={"Cookie": "retllm_token=nope"})[0] == 401
        assert s.request("GET", f"/?token=wrong{token}")[0] == 401


def test_a_non_loopback_bind_needs_a_token(serve_corpus, tiny_clip_dir):
    with pytest.raises(BadInput, match="needs a token"):
        bind_policy("0.0.0.0", None, generate=False)
    assert bind_policy("127.0.0.1", None).token is None and bind_policy("::1", None).token is None
    generated = bind_policy("192.168.1.20", None)
    assert generated.generated and len(generated.token) >= 24
    with pytest.raises(BadInput, match="too short"):
        bind_policy("0.0.0.0", "short")
    # the command: --host 0.0.0.0 without --token generates one, prints it, and requires it
    _photos, index_dir = serve_corpus
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RETLLM_SERVE_TOKEN", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retllm_lite",
            "serve",
            "--index",
            str(index_dir),
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
            if line.startswith("open "):
                break
        token = re.search(r"token \(generated; every request needs it\): (\S+)", "".join(lines)).group(1)
        port = int(re.search(r":(\d+)/\?token=", lines[-1]).group(1))
        base = f"http://127.0.0.1:{port}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/api/status", timeout=60)
        assert refused.value.code == 401
        req = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200 and json.loads(resp.read())["items"]["total"] > 0
    finally:
        proc.terminate()
        proc.wait(30)
