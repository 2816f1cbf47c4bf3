"""The ``pages`` parameter: which pages of a document to detect on, e.g. ``1-3,5`` or ``2-`` (page 2 to the end).

Pure and dependency-free, so every side that validates a detect request (gateway, service, client) parses it the
same way."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PART = re.compile(r"^\s*(\d{1,6})\s*(?:(-)\s*(\d{1,6})?)?\s*$")


@dataclass(frozen=True)
class PageSpec:
    """Page ranges, 1-based and inclusive; ``end=None`` runs to the document's last page."""

    ranges: tuple[tuple[int, int | None], ...]

    def __str__(self) -> str:
        return ",".join(str(a) if a == b else f"{a}-{'' if b is None else b}" for a, b in self.ranges)

    def select(self, page_count: int) -> list[int]:
        """The page numbers this spec names in a document of ``page_count`` pages, in ascending order.
        Raises ``ValueError`` when a named page is past the end."""
        pages: list[int] = []
        for start, end in self.ranges:
            last = page_count if end is None else end
            if start > page_count or last > page_count:
                word = "page" if page_count == 1 else "pages"
                raise ValueError(f"pages={self} asks for page {max(start, last)}; the document has "
                                 f"{page_count} {word}")
            pages.extend(range(start, last + 1))
        return pages

    def count_at_most(self, page_count: int) -> int:
        """How many pages ``select`` returns for a document of ``page_count`` pages (no error past the end)."""
        return sum(max(0, min(page_count if b is None else b, page_count) - a + 1) for a, b in self.ranges)


def parse_page_spec(text: str) -> PageSpec:
    """``"1-3,5,8-"`` -> ranges. Strict: ascending, non-overlapping, from 1; anything else raises ``ValueError``
    with a message that says what is wrong."""
    if not text or not text.strip():
        raise ValueError("pages is empty; write e.g. 1-3,5")
    ranges: list[tuple[int, int | None]] = []
    for part in text.split(","):
        match = _PART.match(part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a page or a range; write e.g. 1-3,5 or 2-")
        start = int(match.group(1))
        end = None if match.group(2) and match.group(3) is None else int(match.group(3) or start)
        if start < 1:
            raise ValueError("pages are numbered from 1")
        if end is not None and end < start:
            raise ValueError(f"the range {start}-{end} runs backwards")
        if ranges:
            prev_start, prev_end = ranges[-1]
            if prev_end is None or start <= prev_end:
                raise ValueError(f"{part.strip()!r} overlaps or comes before the range before it; "
                                 "list pages once, in ascending order")
        ranges.append((start, end))
    return PageSpec(tuple(ranges))
