"""Checkpoints by reference: `hf:OWNER/REPO[/FILE][@REVISION]` (the Hugging Face Hub) and `https://...` URLs.

`resolve_checkpoint(ref)` turns a reference into a local file, fetching it once into a cache, and leaves a plain
path alone. Nothing fetched is ever executed or unpickled: the caller (engine.checkpoint) then validates the file
as a safetensors checkpoint exactly as it does a local one. Every failure is a one-line
`CheckpointDownloadError`.

- `hf:` goes through `huggingface_hub.hf_hub_download`, so its cache (HF_HOME, HF_HUB_CACHE), offline mode
  (HF_HUB_OFFLINE=1) and mirror (HF_ENDPOINT) apply as in every Hub library. FILE defaults to
  `model.safetensors`; REVISION (a branch, tag or commit) to `main`.
- `https://` (and `http://` to this machine only, for local servers) is downloaded into
  `<user cache>/ardiff/checkpoints/` with a progress bar on stderr (when stderr is a terminal). An interrupted
  download stays in a `.part` file and the next attempt resumes it with an HTTP Range request. A
  `#sha256=HEX` fragment (pip's convention) is checked before the file is moved into the cache. Each network
  wait gives up after ARDIFF_DOWNLOAD_TIMEOUT seconds (default 30). HF_HUB_OFFLINE=1 (the Hub's offline
  switch) holds for URLs too: a cached file is used, anything else fails at once instead of reaching out.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.errors import CheckpointDownloadError

__all__ = ["DEFAULT_HF_FILENAME", "HubRef", "is_reference", "parse_hf_ref", "resolve_checkpoint", "url_cache_dir"]

DEFAULT_HF_FILENAME = "model.safetensors"  # the Hub's convention (transformers, timm, diffusers' single files)
DEFAULT_TIMEOUT = 30.0
_CHUNK = 1 << 20
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# A safetensors file starts with an 8-byte little-endian header length, then the JSON header.
_MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class HubRef:
    """A parsed `hf:` reference."""

    repo_id: str
    filename: str
    revision: str | None

    def __str__(self) -> str:
        return f"hf:{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def is_reference(ref: str | os.PathLike | None) -> bool:
    """Whether `ref` names a checkpoint to fetch (hf:, https://, http://) rather than a local path."""
    return isinstance(ref, str) and ref.startswith(("hf:", "https://", "http://"))


def checkpoint_arg(text: str) -> str | Path:
    """A checkpoint as a user typed it: a reference stays text (a Path would fold `https://` into `https:/`),
    anything else is a local path with `~` expanded."""
    text = text.strip()
    return text if is_reference(text) else Path(text).expanduser()


def resolve_checkpoint(ref: str | os.PathLike, timeout: float | None = None) -> Path:
    """A local path for `ref`: a reference is fetched (once; later calls find it in the cache), a path is
    returned as it is (not checked: the caller says what is wrong with it)."""
    if not is_reference(ref):
        return Path(ref)
    ref = str(ref)
    if timeout is None:
        timeout = _env_timeout()
    path = _fetch_hf(parse_hf_ref(ref), timeout) if ref.startswith("hf:") else _fetch_url(ref, timeout)
    _check_safetensors(path, ref)
    return path


# --------------------------------------------------------------------------- the Hub


def parse_hf_ref(ref: str) -> HubRef:
    """`hf:OWNER/REPO[/FILE][@REVISION]` -> HubRef; FILE may name a subfolder (`hf:o/r/dir/x.safetensors`)."""
    body = ref[len("hf:"):]
    revision = None
    if "@" in body:
        body, revision = body.rsplit("@", 1)
        if not revision:
            raise CheckpointDownloadError(f"{ref}: empty revision after '@' (give a branch, tag or commit)")
    parts = body.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]) or any(p in ("", ".", "..") for p in parts):
        raise CheckpointDownloadError(f"{ref}: expected hf:OWNER/REPO[/FILE][@REVISION], e.g. "
                                      f"hf:someone/ardiff-model/{DEFAULT_HF_FILENAME}")
    return HubRef(repo_id="/".join(parts[:2]), filename="/".join(parts[2:]) or DEFAULT_HF_FILENAME,
                  revision=revision)


def _fetch_hf(hub: HubRef, timeout: float) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # a declared dependency; only a broken install lacks it
        raise CheckpointDownloadError(f"{hub}: huggingface_hub is not installed ({err})") from None
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its retry warnings would make a failure more than one line
    try:
        # Its cache, HF_HUB_OFFLINE and HF_ENDPOINT apply; its own progress bar shows on stderr.
        return Path(hf_hub_download(hub.repo_id, hub.filename, revision=hub.revision, etag_timeout=timeout,
                                    library_name="ardiff"))
    except Exception as err:  # noqa: BLE001 - whatever the Hub client raises is a failed fetch, said in one line
        raise CheckpointDownloadError(f"{hub}: cannot fetch from the Hugging Face Hub: {_hf_reason(err)}") from None
    finally:
        logger.setLevel(level)


def _hf_reason(err: BaseException) -> str:
    name = type(err).__name__
    if name == "LocalEntryNotFoundError" or "offline" in str(err).lower():
        return ("not in the local Hub cache and the Hub cannot be reached (offline: HF_HUB_OFFLINE=1, or no "
                "network); fetch it once online, or give a local path")
    if name in ("RemoteEntryNotFoundError", "EntryNotFoundError"):
        return "the repository has no such file (name it: hf:OWNER/REPO/FILE)"
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return "no such repository, or it is private or gated (log in with `hf auth login`)"
    if name == "RevisionNotFoundError":
        return "no such revision (branch, tag or commit)"
    return _first_line(err)


# --------------------------------------------------------------------------- URLs


def url_cache_dir() -> Path:
    """Where downloaded checkpoints live: the user cache dir (as for I3D), e.g. ~/.cache/ardiff/checkpoints."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("ardiff")) / "checkpoints"


def _split_url(ref: str) -> tuple[str, str | None, str]:
    """(URL without fragment, expected sha256 or None, file name) or a CheckpointDownloadError."""
    parsed = urllib.parse.urlsplit(ref)
    if not parsed.hostname:
        raise CheckpointDownloadError(f"{ref}: not a URL (expected https://HOST/PATH)")
    if parsed.scheme == "http" and parsed.hostname not in _LOOPBACK:
        raise CheckpointDownloadError(f"{ref}: plain http is only allowed to this machine; use https://")
    sha = None
    if parsed.fragment:
        key, _, value = parsed.fragment.partition("=")
        if key != "sha256" or not _SHA256.fullmatch(value):
            raise CheckpointDownloadError(f"{ref}: the fragment must be #sha256= and 64 hex digits")
        sha = value.lower()
    name = Path(urllib.parse.unquote(parsed.path)).name or "checkpoint.safetensors"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:120]  # never a path of the server's choosing
    return urllib.parse.urlunsplit(parsed._replace(fragment="")), sha, name


def _fetch_url(ref: str, timeout: float) -> Path:
    url, sha, name = _split_url(ref)
    folder = url_cache_dir() / hashlib.sha256(ref.encode()).hexdigest()[:16]  # the fragment is part of the key
    final = folder / name
    if final.is_file():  # only ever moved here complete (and verified, when a sha256 was given)
        return final
    if _offline():
        raise CheckpointDownloadError(f"{ref}: not in the download cache ({url_cache_dir()}) and offline mode is on "
                                      f"(HF_HUB_OFFLINE); fetch it once online, or give a local path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointDownloadError(f"{ref}: cannot create the cache folder {folder} ({err.strerror})") from None
    # One download at a time per file (torchrun starts every rank at once): the others wait, then find it.
    with _locked(folder / (name + ".lock")):
        if final.is_file():
            return final
        part = folder / (name + ".part")
        _download(url, part, timeout, ref)
        if sha is not None:
            got = _sha256(part)
            if got != sha:
                part.unlink(missing_ok=True)  # a resumed download cannot fix wrong bytes: start again next time
                raise CheckpointDownloadError(f"{ref}: sha256 mismatch: the file has {got}, the URL says {sha}; "
                                              f"nothing was kept")
        try:
            _check_safetensors(part, ref)
        except CheckpointDownloadError:
            part.unlink(missing_ok=True)  # an error page or a pickle is never cached
            raise
        os.replace(part, final)
    return final


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX flock; released by the OS if the process dies). Where there is no
    fcntl (Windows) downloads are not serialised."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(url: str, part: Path, timeout: float, ref: str) -> None:
    """Fetch `url` into `part`, continuing from its current length when the server allows Range requests."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "ardiff", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked in _split_url
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            if err.headers.get("Content-Range", "") == f"bytes */{have}":
                return None  # the partial file is already whole (a run that stopped before the rename)
            part.unlink(missing_ok=True)  # not a prefix the server knows: start again
            return _download(url, part, timeout, ref)
        raise CheckpointDownloadError(f"{ref}: the server answered HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CheckpointDownloadError(f"{ref}: cannot connect ({_first_line(reason)})") from None
    with response:
        resumed = response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            response.close()  # another range than asked for: appending it would corrupt the file
            part.unlink(missing_ok=True)
            return _download(url, part, timeout, ref)
        if have and not resumed:
            have = 0  # the server ignored Range: the whole file is coming, overwrite the partial one
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as out, _progress(part.name[:-5], total, have) as advance:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    advance(len(chunk))
            except (OSError, ValueError, http.client.HTTPException) as err:  # a timeout, a reset, a short read
                out.flush()
                raise CheckpointDownloadError(
                    f"{ref}: download stopped at {out.tell()} of {total or '?'} bytes ({_first_line(err) or 'timed out'}); "
                    f"run again to resume") from None
            done = out.tell()
    if total is not None and done < total:
        raise CheckpointDownloadError(f"{ref}: download stopped at {done} of {total} bytes; run again to resume")


class _progress:
    """A rich progress bar on stderr while downloading, only when stderr is a terminal (logs stay clean)."""

    def __init__(self, name: str, total: int | None, done: int) -> None:
        self.name, self.total, self.done, self.bar = name, total, done, None

    def __enter__(self):
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

            self.bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(f"downloading {self.name}", total=self.total, completed=self.done)
        return self._advance

    def _advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, count)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


# --------------------------------------------------------------------------- checks


def _check_safetensors(path: Path, ref: str) -> None:
    """Refuse at once what cannot be a safetensors file (an HTML error page, a pickle), before it is parsed."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as err:
        raise CheckpointDownloadError(f"{ref}: cannot read the fetched file {path} ({err.strerror})") from None
    size = int.from_bytes(head[:8], "little") if len(head) == 9 else 0
    if not (0 < size < _MAX_HEADER and head[8:9] == b"{"):
        raise CheckpointDownloadError(f"{ref}: the fetched file is not a safetensors checkpoint ({path}); ardiff "
                                      f"never unpickles files")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _offline() -> bool:
    """huggingface_hub's rule for HF_HUB_OFFLINE (and the older TRANSFORMERS_OFFLINE), read at each call."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _env_timeout() -> float:
    text = os.environ.get("ARDIFF_DOWNLOAD_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise CheckpointDownloadError(f"ARDIFF_DOWNLOAD_TIMEOUT must be a number of seconds > 0, got {text!r}")
    return value


def _first_line(err: object) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0]
