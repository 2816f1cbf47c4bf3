"""API keys: `owner:key` and bare `key` entries, and the key ring that re-reads the keys file when it changes.

A named owner's keys all see the same jobs and models, so a key is rotated by adding `alice:NEW`, then
removing `alice:OLD`. A bare key's owner id is derived from the key's hash, as it always was.
"""

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(key_hash: str) -> str:
    """Owner ids are derived from the key's hash, so neither the key nor its full hash is ever stored."""
    return hashlib.sha256(f"owner:{key_hash}".encode()).hexdigest()[:24]


_OWNER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_DERIVED_ID = re.compile(r"^[0-9a-f]{24}$")


class BadKeyEntry(ValueError):
    pass


def parse_key_entries(entries: Iterable[str]) -> dict[str, str]:
    """sha256(key) -> owner id, from `owner:key` and bare `key` entries (blank lines and `#` comments skipped).

    A bare key that contains `:` must be written with its owner, or its first part is read as one.
    """
    out: dict[str, str] = {}
    for raw in entries:
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        name, sep, key = entry.partition(":")
        if sep and _OWNER_NAME.match(name):
            key = key.strip()
            if not key:
                raise BadKeyEntry(f"the entry for owner {name!r} has no key after the `:`")
            if _DERIVED_ID.match(name) or name == ANONYMOUS:
                raise BadKeyEntry(f"{name!r} cannot be an owner name (it looks like a derived owner id)")
            owner = name
        else:
            key, owner = entry, owner_of(hash_key(entry))
        digest = hash_key(key)
        if out.get(digest, owner) != owner:
            raise BadKeyEntry(f"one key is given to two owners ({out[digest]!r} and {owner!r})")
        out[digest] = owner
    return out


class KeyRing:
    """The configured keys: the inline ones and the keys file's, re-read when the file changes.

    A change is noticed on the next request (one `stat` per request). A file that cannot be read or holds
    a bad entry is logged and the keys read before stay in force, so a half-edited file locks nobody out.
    """

    def __init__(self, inline: str, file: Path | None):
        self.inline = parse_key_entries(inline.split(","))
        self.file = file
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._from_file: dict[str, str] = {}
        self._all = dict(self.inline)
        self.reload_if_changed()

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.file)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload_if_changed(self) -> None:
        if self.file is None:
            return
        sig = self._signature()
        if sig is None or sig == self._seen:
            return
        with self._lock:
            if sig == self._seen:
                return
            try:
                from_file = parse_key_entries(Path(self.file).read_text().splitlines())
                merged = {**from_file, **self.inline}
                clash = [d for d in from_file if d in self.inline and from_file[d] != self.inline[d]]
                if clash:
                    raise BadKeyEntry("a key in the file belongs to another owner in DETBOOTH_API_KEYS")
            except (OSError, UnicodeDecodeError, BadKeyEntry) as e:
                log.error("keys file %s not (re)loaded, the previous keys stay in force: %s", self.file, e)
                self._seen = sig
                return
            first = self._seen is None
            self._from_file, self._all, self._seen = from_file, merged, sig
            if not first:
                log.info("keys file %s reloaded: %d key(s) of %d owner(s)", self.file, len(merged),
                         len(set(merged.values())))

    @property
    def configured(self) -> bool:
        """Keys are required once any were configured: emptying the file later locks callers out, it never
        opens the gateway."""
        self.reload_if_changed()
        self._required = getattr(self, "_required", False) or bool(self._all)
        return self._required

    def owner_for(self, key: str) -> str | None:
        self.reload_if_changed()
        return self._all.get(hash_key(key))

    def owners(self) -> set[str]:
        return set(self._all.values())
