"""The eval's caches: model file hashes, CLIP vectors, VLM pair scores and listwise picks."""

from __future__ import annotations

import hashlib
import os

from retllm_lite.integrity import file_sha256


def test_file_sha256_is_remembered_until_the_file_changes(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"first")
    assert file_sha256(f) == hashlib.sha256(b"first").hexdigest()
    # Same size and mtime: the remembered value (a real cache: not re-read).
    st = f.stat()
    f.write_bytes(b"FIRST")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_sha256(f) == hashlib.sha256(b"first").hexdigest()
    f.write_bytes(b"second!")
    assert file_sha256(f) == hashlib.sha256(b"second!").hexdigest()
