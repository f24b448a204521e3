"""Hostile files: each is indexed correctly or recorded with a one-line reason; never fatal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from hostile import make_hostile_folder
from retllm_lite.cli import cli
from retllm_lite.index.store import Index


def run_cli(*args):
    return CliRunner().invoke(cli, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])


@pytest.fixture
def hostile(tmp_path):
    root = tmp_path / "hostile"
    return root, make_hostile_folder(root)


def test_every_hostile_file_is_indexed_or_recorded(hostile, tiny_clip_dir, tmp_path):
    root, expect = hostile
    index_dir = tmp_path / "idx"
    res = run_cli("index", root, "--index", index_dir, "--clip-model", tiny_clip_dir)
    assert res.exit_code == 0, res.output
    summary = res.stderr.strip().splitlines()
    n_ok = sum(1 for v in expect.values() if v == "ok")
    assert summary[0].startswith(f"{n_ok} indexed")
    assert "not indexed:" in summary[1] and "retllm index --errors" in summary[1]

    errors = json.loads(run_cli("index", "--errors", "--index", index_dir, "--json").stdout)
    reasons = {os.path.relpath(e["path"], root): e["reason"] for e in errors}
    for name, outcome in expect.items():
        if outcome == "ok":
            continue
        match = [r for p, r in reasons.items() if p == name or p.startswith(name + "/")]
        assert match, f"{name}: not recorded (have {sorted(reasons)})"
        assert any(outcome in r for r in match), (name, match)
        assert all("\n" not in r for r in match)
    with Index.open(index_dir) as idx:
        ok = {os.path.relpath(os.fsdecode(r.path), root) for r in idx.catalog.all_items("ok")}
    assert ok == {n for n, v in expect.items() if v == "ok"}

    # every indexed file, odd names included, finds itself
    for name in sorted(ok):
        out = run_cli("search", "--image", root / name, "--index", index_dir, "-k", "1", "--json")
        assert out.exit_code == 0, (name, out.output)
        hit = json.loads(out.stdout)[0]
        assert hit["score"] > 0.999
    # a non-UTF-8 name prints escaped in JSON and exactly (raw bytes) with --paths
    bad = os.fsdecode(b"caf\xe9-\xff.jpg")
    out = run_cli("search", "--image", root / bad, "--index", index_dir, "-k", "1", "--json")
    assert json.loads(out.stdout)[0]["path"].endswith("caf\\xe9-\\xff.jpg")
    raw = subprocess.run(
        [
            sys.executable,
            "-m",
            "retllm_lite",
            "search",
            "--image",
            os.fsencode(root / bad),
            "--index",
            str(index_dir),
            "-k",
            "1",
            "--paths",
        ],
        capture_output=True,
        timeout=120,
    )
    assert raw.stdout == os.fsencode(root / bad) + b"\n"

    # a second run changes nothing and stops at nothing
    again = json.loads(run_cli("index", root, "--index", index_dir, "--json").stdout)
    assert again["indexed"] == 0 and again["failed"] == 0


def test_file_vanishing_between_listing_and_reading(photos, tiny_clip_dir, tmp_path):
    """Deleted after the scan listed it, before a worker read it: recorded, run continues."""
    from retllm_lite.encode import load_encoder
    from retllm_lite.index.indexer import Indexer

    files = sorted(photos.rglob("*.jpg"))
    victim = files[-1]

    def delete_late_file(stage, done, total):
        if victim.exists():
            victim.unlink()

    with Index.open(tmp_path / "idx", writable=True) as idx:
        rep = Indexer(
            idx, load_encoder(tiny_clip_dir), batch_size=1, workers=1, progress=delete_late_file
        ).index_folders([photos])
        errors = dict(idx.errors())
    assert rep.indexed == len(files) - 1 and rep.failed == 1
    assert "vanished" in errors[str(victim)]


def without_root_powers(cmd: list) -> list:
    """Root reads any folder; drop the capabilities that let it (util-linux's setpriv)."""
    if os.geteuid() != 0:
        return cmd
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="root without setpriv cannot be refused a read",
)
def test_unreadable_folder(photos, tiny_clip_dir, tmp_path):
    locked = photos / "locked"
    locked.mkdir()
    shutil.copy(next(photos.rglob("*.jpg")), locked / "secret.jpg")
    locked.chmod(0o000)
    try:
        proc = subprocess.run(
            without_root_powers(
                [
                    sys.executable,
                    "-m",
                    "retllm_lite",
                    "index",
                    str(photos),
                    "--index",
                    str(tmp_path / "idx"),
                    "--clip-model",
                    str(tiny_clip_dir),
                    "--json",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["indexed"] == 24 and report["reasons"] == {"permission denied": 1}
    errs = json.loads(run_cli("index", "--errors", "--index", tmp_path / "idx", "--json").stdout)
    assert errs == [{"path": str(locked), "reason": "permission denied"}]
