"""Log records of rtkit kept in memory, so a notebook can show them on request.

Inside Jupyter, a record printed to stderr lands under whichever cell ran last,
which is rarely the cell a learner is reading. rtkit therefore keeps its recent
log lines in a bounded buffer attached to the ``rtkit`` logger: a cell calls
:func:`recent_logs` (or a widget subscribes with :meth:`LogBuffer.subscribe`)
to show them where they belong.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

__all__ = ["LogBuffer", "install_log_buffer", "recent_logs"]

DEFAULT_CAPACITY = 500

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogBuffer(logging.Handler):
    """Logging handler that keeps the last ``capacity`` formatted records.

    Args:
        capacity: number of lines kept; older lines are dropped first.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        super().__init__(level=logging.INFO)
        self.lines: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        self._subscribers: list[Callable[[str], None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.lines.append(line)
        for subscriber in list(self._subscribers):
            try:
                subscriber(line)
            except Exception:
                self.handleError(record)

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback`` with each new line; return a function that stops it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def clear(self) -> None:
        """Drop the kept lines."""
        self.lines.clear()


_buffer: LogBuffer | None = None


def install_log_buffer() -> LogBuffer:
    """Attach the shared :class:`LogBuffer` to the ``rtkit`` logger once.

    Also sets the ``rtkit`` logger to INFO when no level was configured, and
    ``rtkit.websockets`` (the protocol library's records) to WARNING, so the
    buffer gets rtkit's start, stop and rejection lines without a line per
    HTTP request. Calling it again returns the same buffer.
    """
    global _buffer
    if _buffer is None:
        _buffer = LogBuffer()
        logger = logging.getLogger("rtkit")
        logger.addHandler(_buffer)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        protocol_logger = logging.getLogger("rtkit.websockets")
        if protocol_logger.level == logging.NOTSET:
            protocol_logger.setLevel(logging.WARNING)
    return _buffer


def recent_logs(count: int = 20) -> str:
    """Return the last ``count`` lines of rtkit's log, one per line."""
    lines = list(install_log_buffer().lines)
    return "\n".join(lines[-count:] if count > 0 else [])
