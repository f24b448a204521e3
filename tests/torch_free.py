"""Run CLI commands in a fresh interpreter and check the search path never imported torch."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "torchvision", "open_clip", "transformers")
_END = "--retllm-test-end-of-command--"

_CHILD = """
import json, sys
from retllm_lite.cli import cli
for args in json.loads(sys.argv[1]):
    try:
        cli(args)
    except SystemExit as e:
        assert not e.code, (args, e.code)
    print({end!r}, flush=True)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print("HEAVY:", bad, file=sys.stderr)
sys.exit(3 if bad else 0)
"""


def run_without_torch(*commands: list[str], timeout: float = 300) -> list[str]:
    """Each command's stdout; fails the test if a command fails or a heavy module was imported."""
    import json

    code = _CHILD.format(end=_END, heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps([[str(a) for a in c] for c in commands])],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split(_END + "\n")[: len(commands)]
