"""Downloads from a Hugging Face hub with huggingface_hub, each file checked against the hub.

``snapshot(repo, revision)`` lists a repository at a revision: the commit it resolves to and,
per file, the size and checksum the hub reports (the LFS sha256 of large files, the git
blob id of the others). ``download(snap, path, dest)`` fetches one file into ``dest`` at
that commit (resumable: an interrupted file continues from where it stopped), then hashes
it and deletes it unless it matches.

The hub is ``$HF_ENDPOINT`` (default https://huggingface.co). Downloads are off when
``--offline`` is given or RETLLM_OFFLINE / HF_HUB_OFFLINE is set (``offline_requested``);
callers check that first, so nothing here is reached offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import BadModelFile, ChecksumMismatch, HubUnreachable, ModelNotFound, RetllmError

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_ENV = ("RETLLM_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_CHUNK = 1 << 20


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def offline_requested(flag: bool | None = None) -> bool:
    """True when downloads are off: ``--offline``, or RETLLM_OFFLINE / HF_HUB_OFFLINE set."""
    return bool(flag) or any(_truthy(os.environ.get(var)) for var in OFFLINE_ENV)


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int | None
    lfs_sha256: str | None = None
    blob_id: str | None = None

    @property
    def etag(self) -> tuple[str, str] | None:
        """(kind, value) of the checksum the hub reports: its LFS sha256, else its git blob id."""
        if self.lfs_sha256:
            return "lfs-sha256", self.lfs_sha256
        if self.blob_id:
            return "git-blob-sha1", self.blob_id
        return None


@dataclass(frozen=True)
class RepoSnapshot:
    repo: str
    revision: str
    commit: str
    endpoint: str
    files: dict[str, RemoteFile]


def _hub():
    """huggingface_hub, with its import-time settings brought up to date for an online call.

    huggingface_hub reads HF_HUB_OFFLINE (and HF_ENDPOINT) once, when it is first imported,
    and caches HTTP sessions built in that mode. retllm decides offline-ness itself, at call
    time (``offline_requested``), and only calls here when online; a process that imported
    huggingface_hub while HF_HUB_OFFLINE was set (a test session, a notebook) would otherwise
    refuse every request. So the flag is cleared and the cached sessions dropped, and the
    endpoint is passed explicitly to every call instead of relying on the import-time value.
    """
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    if constants.HF_HUB_OFFLINE:
        constants.HF_HUB_OFFLINE = False
        reset_sessions()
    return huggingface_hub


def _reason(exc: BaseException) -> str:
    """A short reason from a requests/urllib3 error chain ("Connection refused", ...)."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(Read timed out)", r"(IncompleteRead\([^)]*\))"):
        match = re.search(pattern, text)
        if match:
            return match.group(1).strip()
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:160]


def _translate(exc: BaseException, repo: str, what: str) -> RetllmError | None:
    """A typed, one-line error for what huggingface_hub/requests raised (None: not ours)."""
    import requests
    from huggingface_hub import errors as hf

    where = endpoint()
    interrupted = (
        hf.LocalEntryNotFoundError,
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
    )
    if isinstance(exc, interrupted):
        cause = exc.__cause__ or exc.__context__ or exc
        return HubUnreachable(f"cannot download {what} from {where} ({_reason(cause)})")
    if isinstance(exc, hf.GatedRepoError):
        return ModelNotFound(
            f"{repo} at {where} is gated", hint="accept its terms on the hub, then set HF_TOKEN"
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return ModelNotFound(f"no repository {repo} at {where}")
    if isinstance(exc, hf.RevisionNotFoundError):
        return ModelNotFound(f"{repo} at {where} has no revision for {what}")
    if isinstance(exc, hf.EntryNotFoundError):
        return ModelNotFound(f"{repo} at {where} has no file {what}")
    if isinstance(exc, hf.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        return HubUnreachable(f"{where} answered HTTP {status} for {what}")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return HubUnreachable(f"the download of {what} from {where} stopped early")
    return None


def snapshot(repo: str, revision: str) -> RepoSnapshot:
    """The repository at ``revision``: resolved commit, and every file with its size and checksum."""
    hub = _hub()
    api = hub.HfApi(endpoint=endpoint())
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:
        err = _translate(exc, repo, f"{repo}@{revision}")
        if err is None:
            raise
        raise err from None
    if not info.sha:
        raise HubUnreachable(f"{endpoint()} did not say which commit {repo}@{revision} is")
    files = {
        s.rfilename: RemoteFile(
            path=s.rfilename,
            size=s.lfs.size if s.lfs else s.size,
            lfs_sha256=s.lfs.sha256 if s.lfs else None,
            blob_id=s.blob_id,
        )
        for s in info.siblings or []
    }
    return RepoSnapshot(repo=repo, revision=revision, commit=info.sha, endpoint=endpoint(), files=files)


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Turn huggingface_hub's per-file download bars on or off for the duration."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    group = "huggingface_hub.http_get"
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is not None:
        yield  # the user's setting wins (huggingface_hub refuses to change it anyway)
        return
    was_disabled = are_progress_bars_disabled(group)
    (enable_progress_bars if enabled else disable_progress_bars)(group)
    try:
        yield
    finally:
        (disable_progress_bars if was_disabled else enable_progress_bars)(group)


def file_hashes(path: str | Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, in one pass."""
    path = Path(path)
    sha256 = hashlib.sha256()
    git = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def download(
    snap: RepoSnapshot,
    path: str,
    dest: str | Path,
    *,
    retries: int = 3,
    progress: bool | None = None,
) -> dict:
    """Fetch ``path`` of ``snap`` into ``dest/path``; returns what pull.json records for it.

    Interrupted transfers are resumed (``retries`` more times here; a later call resumes too,
    from the partial file huggingface_hub keeps under ``dest/.cache``). The finished file is
    hashed and must match the hub's checksum, else it is deleted and ChecksumMismatch raised.
    ``progress``: a bar per file on stderr (default: when stderr is a terminal).
    """
    remote = snap.files.get(path)
    if remote is None:
        raise ModelNotFound(f"{snap.repo}@{snap.commit[:12]} has no file {path}")
    if remote.etag is None:
        raise BadModelFile(
            f"{snap.endpoint} reports no checksum for {snap.repo}/{path}",
            hint="refusing a file that cannot be checked",
        )
    hub = _hub()
    if progress is None:
        progress = sys.stderr.isatty()
    attempt = 0
    while True:
        try:
            with _progress_bars(progress):
                local = Path(
                    hub.hf_hub_download(
                        snap.repo,
                        path,
                        revision=snap.commit,
                        local_dir=str(dest),
                        endpoint=snap.endpoint,
                    )
                )
            break
        except Exception as exc:
            err = _translate(exc, snap.repo, path)
            if err is None:
                raise
            if not isinstance(err, HubUnreachable) or attempt >= retries:
                if isinstance(err, HubUnreachable):
                    err.hint = "run the same command again to resume the download"
                raise err from None
            attempt += 1
            time.sleep(min(0.5 * 2**attempt, 4.0))
    sha256, git_sha1 = file_hashes(local)
    kind, expected = remote.etag
    actual = sha256 if kind == "lfs-sha256" else git_sha1
    size = local.stat().st_size
    if actual != expected or (remote.size is not None and size != remote.size):
        local.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{snap.repo}/{path}: downloaded file has {kind.split('-', 1)[-1]} {actual[:12]}… "
            f"({size} bytes) but the hub reports {expected[:12]}… ({remote.size} bytes); deleted it",
            hint="the download was corrupted or the mirror serves other bytes; try again later",
        )
    return {"path": path, "size": size, "sha256": sha256, "etag": expected, "etag_kind": kind}
