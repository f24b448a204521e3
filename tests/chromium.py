"""Headless Chromium driven as a subprocess: a screenshot and the DOM after loading."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
TIMEOUT_S = 120


def chromium_or_skip() -> str:
    """The chromium binary; skip (fail in CI, where .ci/run installs it) when there is none."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    reason = "no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: the browser test must run in CI")
    pytest.skip(reason)


def _run(binary: str, args: list[str]) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        proc = subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc


def screenshot(binary: str, url: str, out: Path, size: tuple[int, int] = (1200, 900)) -> Path:
    _run(binary, [f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", url])
    assert out.is_file() and out.stat().st_size > 0
    return out


def dump_dom(binary: str, url: str) -> str:
    return _run(binary, ["--dump-dom", url]).stdout.decode("utf-8")
