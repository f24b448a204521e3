"""Publishing a folder atomically: build it beside its final place, then rename it there.

Exports, conversions and downloads all write into a staging folder next to the target and
call ``replace_dir`` when everything in it is complete, so a half-written model is never
found under the final name, whatever interrupts the work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_dir(stage: Path, final: Path) -> None:
    """Rename finished ``stage`` to ``final``; an existing ``final`` is swapped out and removed.

    If the last rename fails, the previous ``final`` is put back.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        os.replace(stage, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.replace(final, old / "previous")
    try:
        os.replace(stage, final)
    except OSError:
        os.replace(old / "previous", final)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
