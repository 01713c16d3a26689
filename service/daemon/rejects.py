"""Rejected messages: counted by reason code, logged at a bounded rate.

Every rejection is counted (status shows the counts by reason); at most
``logged_per_s`` of them are logged each second, so a storm of bad input cannot flood the
journal, and the number left out is logged once the second is over.
"""

from __future__ import annotations

import logging
import time
from collections import Counter


class Rejects:
    """Counts of rejected messages by reason code, with rate-limited logging.

    Parameters
    ----------
    logger : logging.Logger
        Where the rejections are logged (warnings).
    logged_per_s : int
        Most rejections logged per second; all are counted.
    """

    def __init__(self, logger: logging.Logger, logged_per_s: int = 10):
        self.log = logger
        self.logged_per_s = logged_per_s
        self.counts: Counter[str] = Counter()
        self._window_start = time.monotonic()
        self._in_window = 0

    def add(self, code: str, reason: str) -> None:
        """Count one rejection and log its reason unless this second's quota is used up."""
        self.counts[code] += 1
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            if self._in_window > self.logged_per_s:
                self.log.warning("... %d more rejections not logged", self._in_window - self.logged_per_s)
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        if self._in_window <= self.logged_per_s:
            self.log.warning("rejected message: %s", reason)

    @property
    def total(self) -> int:
        """All rejections so far."""
        return sum(self.counts.values())
