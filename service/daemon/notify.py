"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``) without libsystemd.

systemd passes a datagram socket path in ``NOTIFY_SOCKET`` (a leading ``@`` means the Linux
abstract namespace) and, with a watchdog, the interval in ``WATCHDOG_USEC``. A service sends
newline-separated ``KEY=VALUE`` assignments to it: ``READY=1`` once it serves,
``STATUS=...`` for ``systemctl status``, ``WATCHDOG=1`` at least every interval,
``STOPPING=1`` when it shuts down. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to systemd's notify socket; does nothing when there is none.

    Parameters
    ----------
    address : str or None
        Value of ``NOTIFY_SOCKET`` (filesystem path, or ``@name`` for the abstract namespace).
    watchdog_usec : int or None
        Value of ``WATCHDOG_USEC`` (microseconds), when systemd expects watchdog pings.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self.address = address or None
        self._watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        if self.address is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # the abstract namespace is spelled with a leading NUL byte on the socket level
            self._target = "\0" + self.address[1:] if self.address.startswith("@") else self.address

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "Notifier":
        """Read ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` once (at start-up).

        ``WATCHDOG_PID``, when set, must be this process; otherwise the watchdog is not ours.
        """
        env = os.environ if environ is None else environ
        usec = None
        raw = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if raw and (pid is None or pid == str(os.getpid())):
            try:
                usec = int(raw)
            except ValueError:
                log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
            else:
                usec = usec if usec > 0 else None
        return cls(env.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._socket is not None

    def notify(self, **assignments: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (keys upper-cased); False when not sent."""
        if self._socket is None:
            return False
        text = "\n".join(f"{key.upper()}={value}" for key, value in assignments.items())
        try:
            self._socket.sendto(text.encode("utf-8"), self._target)
        except OSError as exc:
            # systemd going away must not take the service with it
            log.warning("systemd notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is up (``READY=1``), optionally with a status line."""
        if status is None:
            return self.notify(ready=1)
        return self.notify(ready=1, status=status.replace("\n", " "))

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``."""
        return self.notify(status=text.replace("\n", " "))

    def watchdog(self) -> bool:
        """Watchdog keep-alive (``WATCHDOG=1``); send at least every :meth:`watchdog_interval_s`."""
        return self.notify(watchdog=1)

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down (``STOPPING=1``)."""
        return self.notify(stopping=1)

    def watchdog_interval_s(self) -> float | None:
        """Seconds between keep-alives: half of ``WATCHDOG_USEC``, or None without a watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def status_line(status: dict[str, Any]) -> str:
    """One line about a status dict (systemd's STATUS=, shown by ``systemctl status``)."""
    if status["state"] == "reconstructing":
        return (f"reconstructing {status['scan_id']}: {status['n_projections_used']}/"
                f"{status['n_projections_expected']} projections")
    return f"{status['state']}; {status['scans_completed']} scans done"
