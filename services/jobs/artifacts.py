"""Artifact store: a local folder by default, any fsspec URL (s3://, gs://, memory://...) otherwise.

Keys are relative POSIX paths such as `jobs/<id>/images/0.png`; a key that could leave the store
(absolute, `..`, backslashes, empty parts) is refused before any file system call.
"""

import posixpath
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import IO

import fsspec

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class BadArtifactKey(ValueError):
    pass


def check_key(key: str) -> str:
    """Return the normalised key or raise BadArtifactKey."""
    if not key or "\\" in key or "\x00" in key or key.startswith("/"):
        raise BadArtifactKey(f"invalid artifact path: {key!r}")
    parts = key.split("/")
    if any(not _SAFE_PART.match(p) for p in parts):
        raise BadArtifactKey(f"invalid artifact path: {key!r}")
    return "/".join(parts)


def _is_temporary(path: str) -> bool:
    return ".tmp-" in posixpath.basename(path)


def _mtime(info: dict) -> float:
    """Modification time from an fsspec `info` dict (local: `mtime` float; S3: `LastModified` datetime)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return value.timestamp()
    return 0.0


class ArtifactStore:
    def __init__(self, url: str):
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")
        self.is_local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, check_key(key))

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write atomically: readers see the old object or the whole new one, never a part."""
        path = self._path(key)
        if self.is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as f:
                f.write(data)
            Path(tmp).replace(path)
        else:
            self.fs.pipe_file(path, data)  # object stores make a PUT visible whole
        return key

    def read_bytes(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        return self.fs.open(self._path(key), mode)

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def is_file(self, key: str) -> bool:
        return self.fs.isfile(self._path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def _fresh(self, path: str) -> str:
        """Object-store file systems cache listings per process; another process (a worker, another gateway)
        may have written or deleted since, so listings are always read afresh."""
        if not self.is_local:
            self.fs.invalidate_cache(path)
        return path

    def list(self, prefix: str) -> list[str]:
        """Keys of all files under `prefix`, sorted."""
        base = self._fresh(self._path(prefix))
        if not self.fs.exists(base):
            return []
        found = self.fs.find(base)
        return sorted(posixpath.relpath(p, self.root) for p in found if not _is_temporary(p))

    def usage(self, prefix: str) -> tuple[int, float]:
        """(bytes, newest modification time as epoch seconds) of the files under `prefix`; (0, 0) if none."""
        base = self._fresh(self._path(prefix))
        if not self.fs.exists(base):
            return 0, 0.0
        total, newest = 0, 0.0
        for path, info in self.fs.find(base, detail=True).items():
            total += int(info.get("size") or 0)
            newest = max(newest, _mtime(info))
        return total, newest

    def children(self, prefix: str) -> "list[str]":
        """Names directly under `prefix` (e.g. the job ids under `jobs`), sorted."""
        base = self._fresh(self._path(prefix))
        if not self.fs.exists(base):
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(base, detail=False))

    def delete(self, prefix: str, attempts: int = 5) -> bool:
        """Remove everything under `prefix`; True when it is gone. A worker may still be writing there (a job
        deleted while it runs): a file appearing mid-removal makes it try again, a few times, and what is
        still left after that is the sweeper's (the job's tombstone lets it remove the rest at once)."""
        path = self._path(prefix)
        for attempt in range(attempts):
            self._fresh(path)
            if not self.fs.exists(path):
                return True
            try:
                self.fs.rm(path, recursive=True)
            except (FileNotFoundError, OSError):  # raced with a writer (ENOTEMPTY, a file gone under us)
                time.sleep(0.05 * (attempt + 1))
        self._fresh(path)
        return not self.fs.exists(path)

    def local_path(self, key: str) -> Path:
        """A local file system path for `key` (local stores only: training reads and writes folders)."""
        if not self.is_local:
            raise RuntimeError("local_path needs a local artifact store; use download()/upload()")
        return Path(self._path(key))

    def upload_dir(self, local: Path, key: str) -> None:
        """Copy a local folder under `key` (used for exported models and checkpoints)."""
        dest = self._path(key)
        if self.is_local:
            tmp = f"{dest}.tmp-{uuid.uuid4().hex}"
            shutil.copytree(local, tmp)
            if Path(dest).exists():
                shutil.rmtree(dest)
            Path(tmp).replace(dest)
        else:
            self.fs.put(str(local), dest, recursive=True)

    def download_dir(self, key: str, local: Path) -> Path:
        self.fs.get(self._path(key), str(local), recursive=True)
        return local
