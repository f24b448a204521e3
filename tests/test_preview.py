"""Terminal previews: protocol choice, what is drawn (decoded back to pixels), clean pipes."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
from click.testing import CliRunner

from clip_fixtures import draw_photo
from retllm_lite.cli import cli
from retllm_lite.pipeline import SearchHit
from retllm_lite.view.preview import ThumbnailEncoder, choose_protocol, detect_protocol, write_previews
from retllm_lite.view.thumbnails import make_thumbnail
from terminal_images import DECODERS, GRAPHICS, kitty_images, mean_abs_diff, sixel_images, unwrap_tmux

TERMINAL_VARS = ("TMUX", "STY", "KITTY_WINDOW_ID", "TERM_PROGRAM", "LC_TERMINAL", "KONSOLE_VERSION")


def invoke(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture
def plain_env(monkeypatch):
    """A terminal environment that names no image protocol (tests may run inside tmux)."""
    for var in TERMINAL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


@pytest.fixture
def indexed(photos, tiny_clip_dir, tmp_path, plain_env):
    index_dir = tmp_path / "idx"
    res = invoke("index", photos, "--index", index_dir, "--clip-model", tiny_clip_dir)
    assert res.exit_code == 0, res.output
    return photos, index_dir


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"TERM": "xterm-kitty"}, "kitty"),
        ({"TERM": "xterm-256color", "KITTY_WINDOW_ID": "3"}, "kitty"),
        ({"TERM": "xterm-ghostty", "TERM_PROGRAM": "ghostty"}, "kitty"),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, "iterm2"),
        ({"TERM": "xterm-256color", "LC_TERMINAL": "iTerm2"}, "iterm2"),  # over ssh
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, "iterm2"),
        ({"TERM": "foot"}, "sixel"),
        ({"TERM": "mlterm"}, "sixel"),
        ({"TERM": "xterm-256color", "KONSOLE_VERSION": "230805"}, "sixel"),
        ({"TERM": "xterm-256color"}, None),
        ({"TERM": "xterm-256color", "TERM_PROGRAM": "vscode"}, None),
        ({"TERM": "dumb"}, None),
        ({}, None),
        ({"TERM": "tmux-256color", "TMUX": "/tmp/tmux-0/default,1,0", "KITTY_WINDOW_ID": "1"}, None),
        ({"TERM": "screen-256color", "TERM_PROGRAM": "iTerm.app"}, None),
    ],
)
def test_detect_protocol_from_environment(env, expected):
    assert detect_protocol(env) == expected


def test_choose_protocol_rules():
    kitty = {"TERM": "xterm-kitty"}
    assert choose_protocol("auto", is_tty=True, env=kitty).protocol == "kitty"
    piped = choose_protocol("auto", is_tty=False, env=kitty)
    assert piped.protocol is None and "not a terminal" in piped.reason
    assert choose_protocol("sixel", is_tty=False, env={}).protocol == "sixel"  # forced wins
    assert choose_protocol("none", is_tty=True, env=kitty).protocol is None
    unknown = choose_protocol("auto", is_tty=True, env={"TERM": "xterm-256color"})
    assert unknown.protocol is None and "TERM=xterm-256color" in unknown.reason
    tmux = choose_protocol("auto", is_tty=True, env={"TERM": "tmux-256color", "TMUX": "x"})
    assert tmux.protocol is None and "tmux" in tmux.reason
    with pytest.raises(ValueError):
        choose_protocol("ascii", is_tty=True, env={})


def _strip_graphics(data: bytes) -> str:
    text = re.sub(rb"\x1b_G.*?\x1b\\|\x1b\]1337;.*?\x07|\x1bP.*?\x1b\\", b"", data, flags=re.S)
    return text.decode("utf-8")


def test_forced_protocols_draw_each_result_photo_in_rank_order(indexed):
    photos, index_dir = indexed
    query = ["search", "--image", photos / "album1" / "img_0004.jpg", "--index", index_dir, "-k", "4"]
    rows = json.loads(invoke(*query, "--json").stdout)
    expected = [make_thumbnail(r["path"], 256) for r in rows]
    for protocol, decode in DECODERS.items():
        res = invoke(*query, "--preview-protocol", protocol)  # forced: drawn although not a TTY
        assert res.exit_code == 0, res.output
        images = [img for _keys, img in decode(res.stdout_bytes)]
        assert len(images) == 4, protocol
        for i, img in enumerate(images):
            diffs = [mean_abs_diff(img, e) for e in expected]
            assert min(range(4), key=diffs.__getitem__) == i, (protocol, i, diffs)
            assert diffs[i] < 30, (protocol, i, diffs)
        lines = [ln for ln in _strip_graphics(res.stdout_bytes).splitlines() if ln.strip()]
        assert [ln.split()[0] for ln in lines] == ["1", "2", "3", "4"]
        assert [ln.split("  ")[-1] for ln in lines] == [r["path"] for r in rows]


def test_auto_without_a_terminal_prints_the_plain_table(indexed, monkeypatch):
    _photos, index_dir = indexed
    monkeypatch.setenv("TERM", "xterm-kitty")
    monkeypatch.setenv("KITTY_WINDOW_ID", "1")
    res = invoke("search", "a red circle", "--index", index_dir, "-k", "3", "--preview")
    assert res.exit_code == 0
    assert b"\x1b" not in res.stdout_bytes
    assert res.stdout.splitlines()[0].split() == ["#", "score", "path"] and len(res.stdout.splitlines()) == 4
    assert "no previews: standard output is not a terminal" in res.stderr


def test_machine_formats_stay_clean_even_with_a_forced_protocol(indexed):
    _photos, index_dir = indexed
    base = ["search", "a red circle", "--index", index_dir, "-k", "3", "--preview-protocol", "kitty"]
    as_json = invoke(*base, "--json")
    assert b"\x1b" not in as_json.stdout_bytes and len(json.loads(as_json.stdout)) == 3
    assert "--preview ignored with --json" in as_json.stderr
    paths = invoke(*base, "--paths")
    assert [p for p in paths.stdout.splitlines()] == [r["path"] for r in json.loads(as_json.stdout)]
    nl = invoke(*base, "--nl")
    assert [json.loads(line)["rank"] for line in nl.stdout.splitlines()] == [1, 2, 3]


def test_missing_preview_library_falls_back_to_the_table_with_a_note(indexed, monkeypatch):
    _photos, index_dir = indexed
    monkeypatch.setitem(sys.modules, "chafa", None)  # as if chafa.py were not installed
    res = invoke("search", "a red circle", "--index", index_dir, "-k", "2", "--preview-protocol", "sixel")
    assert res.exit_code == 0
    assert b"\x1b" not in res.stdout_bytes and len(res.stdout.splitlines()) == 3
    note = [ln for ln in res.stderr.splitlines() if "no previews" in ln]
    assert len(note) == 1 and "pip install 'retllm-lite[preview]'" in note[0]


def _run_in_pty(cmd: list[str], env: dict, cols: int, rows: int, px: tuple[int, int]) -> bytes:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, *px))
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return b"".join(chunks).replace(b"\r\n", b"\n")


def test_in_a_real_terminal_kitty_is_detected_and_sized_in_cells(indexed):
    photos, index_dir = indexed
    env = {k: v for k, v in os.environ.items() if k not in TERMINAL_VARS}
    env.update(TERM="xterm-kitty", KITTY_WINDOW_ID="1")
    query = photos / "album2" / "img_0005.jpg"
    cmd = [sys.executable, "-m", "retllm_lite", "search", "--image", str(query), "--index", str(index_dir)]
    out = _run_in_pty([*cmd, "-k", "2", "--preview"], env, cols=100, rows=30, px=(1200, 720))
    images = kitty_images(out)
    assert len(images) == 2
    for keys, img in images:
        cols, rows = int(keys["c"]), int(keys["r"])
        assert 0 < cols <= 24 and 0 < rows <= 8
        assert img.size == (cols * 12, rows * 24)  # the cell size the terminal reported
    assert mean_abs_diff(images[0][1], make_thumbnail(query, 256)) < 30  # an image finds itself first


def test_text_items_unreadable_images_and_tmux_passthrough(tmp_path):
    photo = tmp_path / "p.jpg"
    draw_photo(7, (300, 200)).save(photo, "JPEG", quality=92)
    hits = [
        SearchHit(1, 1, 0.4, "text", text="a caption\x1b[2J with an escape", item_id="c1", coarse_rank=2),
        SearchHit(2, 2, 0.3, "image", path=str(tmp_path / "gone.jpg")),
        SearchHit(3, 3, 0.2, "image", path=str(photo), p_true=0.7, coarse_rank=1),
    ]
    out = io.BytesIO()
    write_previews(hits, out, ThumbnailEncoder("sixel"))
    data = out.getvalue()
    text = _strip_graphics(data)
    assert "a caption\\x1b[2J with an escape" in text and "\x1b[2J" not in text
    assert "(was #2)" in text and "P(True) 0.700" in text
    assert "cannot show this image: no such file" in text
    (only,) = sixel_images(data)
    assert mean_abs_diff(only[1], make_thumbnail(photo, 256)) < 30

    wrapped = ThumbnailEncoder("kitty", passthrough="tmux")
    first, second = (wrapped.encode(make_thumbnail(photo, 256)) for _ in range(2))
    assert first.startswith(b"\x1bPtmux;") and not GRAPHICS.match(first)
    (a,), (b,) = kitty_images(unwrap_tmux(first)), kitty_images(unwrap_tmux(second))
    assert a[0]["i"] != b[0]["i"]  # each thumbnail its own image id
    assert mean_abs_diff(a[1], make_thumbnail(photo, 256)) < 30
