"""A cap on the event streams each API key holds open on this gateway process."""

from collections import Counter

from services.contracts.problems import Problem


class StreamSlots:
    """At most `per_key` open streams per owner; one more is refused with 429 problem+json.

    Counted in this process (the event loop is single-threaded, so no lock): a stream belongs to the
    gateway that serves it and ends with it, so nothing can leak a slot across replicas or restarts."""

    def __init__(self, per_key: int):
        self.per_key = per_key
        self.open: Counter[str] = Counter()

    def take(self, owner: str) -> "Slot":
        if self.open[owner] >= self.per_key:
            raise Problem(429, "Too many open event streams",
                          f"this API key already has {self.open[owner]} event streams open on this gateway; "
                          f"the limit is {self.per_key}: close one first", type_="too-many-streams",
                          headers={"Retry-After": "5"}, limit="max_streams_per_key", value=self.per_key)
        self.open[owner] += 1
        return Slot(self, owner)

    def give_back(self, owner: str) -> None:
        self.open[owner] -= 1
        if self.open[owner] <= 0:
            del self.open[owner]


class Slot:
    """One open stream's place; `release` may be called more than once (the stream's end, the response's)."""

    def __init__(self, slots: StreamSlots, owner: str):
        self._slots, self._owner, self._held = slots, owner, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.give_back(self._owner)
