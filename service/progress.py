"""Progress bars for long commands (reconstruct, simulate, bench): tqdm, on a terminal only.

Where stderr is a file, a pipe or journald, nothing is drawn: carriage-return redraws would
fill logs with partial lines.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class ProgressBar:
    """``progress(done, total)`` callable that draws a tqdm bar when ``stream`` is a terminal.

    Parameters
    ----------
    label : str
        Text before the bar.
    unit : str
        What ``done`` counts (``"group"``, ``"projection"``, ``"stage"``).
    stream : text stream, optional
        Where to draw (default stderr).
    """

    def __init__(self, label: str, unit: str = "it", stream=None):
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.enabled = _is_terminal(self.stream)
        self.bar: tqdm | None = None  # made at the first call, when the total is known

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = tqdm(desc=self.label, unit=self.unit, total=total, file=self.stream,
                            dynamic_ncols=True, leave=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        """End the bar (when the work stopped before ``total``)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.enabled = False


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
