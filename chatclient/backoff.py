"""Retry delays: capped exponential backoff with full jitter (AWS Architecture Blog, "Exponential
Backoff And Jitter", 2015): try n waits a uniformly random time in [0, min(cap, base * 2**n)], so
that many clients cut off by one server restart do not all come back in the same instant."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Delays in seconds. `base`: the bound of the first delay; `cap`: the largest bound;
    `tries`: how many attempts a send makes in all (the first included) before it gives up;
    reconnection never gives up (it stops at `Client.close()` or on an `AuthError`)."""

    base: float = 0.5
    cap: float = 30.0
    tries: int = 8
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base and self.tries >= 1):
            raise ValueError(f"need base > 0, cap >= base, tries >= 1: {self}")

    def bound(self, attempt: int) -> float:
        """The largest delay after failed attempt number `attempt` (0 for the first), seconds."""
        return min(self.cap, self.base * 2.0 ** min(attempt, 62))

    def delay(self, attempt: int) -> float:
        """A random delay in [0, bound(attempt)] seconds ("full jitter")."""
        return self.rng.uniform(0.0, self.bound(attempt))
