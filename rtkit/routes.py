"""HTTP routes served on the WebSocket port.

websockets reads every request on the port, upgrade or not, and passes it to the
server's ``process_request`` hook. rtkit responds to plain HTTP requests there (the
browser client, its static files, ``/health``) and lets WebSocket upgrades on
``/ws`` and ``/`` through to the connection handler. Each HTTP response closes
its TCP connection, because websockets does not keep HTTP connections alive.
"""

from __future__ import annotations

import math
import mimetypes
import re
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .echo import encode
from .hub import DEFAULT_CHANNEL, check_channel, short_repr

__all__ = [
    "MAX_WAIT",
    "STATIC_DIR",
    "WEBSOCKET_PATHS",
    "InvalidParameter",
    "PollQuery",
    "http_response",
    "is_upgrade",
    "json_response",
    "parse_poll_query",
    "repeated_header",
    "request_path",
    "resolve_static",
    "route_name",
    "static_response",
    "text_response",
]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""The folder served under ``/static/``: ``static/`` at the top of the checkout."""

WEBSOCKET_PATHS = frozenset({"/", "/ws"})
"""Paths that accept a WebSocket upgrade."""

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


def is_upgrade(request: Request) -> bool:
    """Return whether ``request`` is a WebSocket upgrade request.

    Repeated ``Upgrade`` headers are read as one comma-separated list, as RFC
    9110 section 5.3 allows, so this never raises.
    """
    values = ",".join(request.headers.get_all("Upgrade"))
    return "websocket" in (token.strip() for token in values.lower().split(","))


def repeated_header(request: Request, names: Iterable[str]) -> str | None:
    """Return the first of ``names`` that ``request`` sends more than once."""
    for name in names:
        if len(request.headers.get_all(name)) > 1:
            return name
    return None


def http_response(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    *,
    head: bool = False,
    extra_headers: dict[str, str] | None = None,
) -> Response:
    """Build an HTTP response that websockets sends instead of a handshake.

    Args:
        status: the HTTP status.
        body: the response body.
        content_type: the ``Content-Type`` header value.
        head: whether the request was ``HEAD``, which sends the headers only.
        extra_headers: more headers to add.
    """
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Connection", "close"),
        ]
    )
    for name, value in (extra_headers or {}).items():
        headers[name] = value
    return Response(status.value, status.phrase, headers, b"" if head else body)


def text_response(status: HTTPStatus, text: str, *, head: bool = False) -> Response:
    """Build a plain text response; ``text`` gets a final newline."""
    body = (text.rstrip("\n") + "\n").encode()
    return http_response(status, body, "text/plain; charset=utf-8", head=head)


def json_response(
    status: HTTPStatus, payload: dict[str, Any], *, head: bool = False
) -> Response:
    """Build a JSON response."""
    body = encode(payload).encode()
    return http_response(status, body, "application/json", head=head)


def resolve_static(url_path: str, root: Path = STATIC_DIR) -> Path | None:
    """Map a URL path below ``/static/`` to a file inside ``root``.

    The path is percent-decoded once, then resolved with symbolic links
    followed, so ``..`` segments (plain or encoded), absolute paths and links
    that lead outside ``root`` all fail the containment check.

    Returns:
        The file, or ``None`` when it does not exist or lies outside ``root``.
    """
    try:
        relative = unquote(url_path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\x00" in relative or "\\" in relative or relative.endswith("/"):
        return None
    try:
        root = root.resolve()
        candidate = (root / relative.lstrip("/")).resolve()
        if relative.startswith("/") or not candidate.is_relative_to(root):
            return None
        return candidate if candidate.is_file() else None
    except OSError:
        # For example a name longer than the file system allows.
        return None


def static_response(path: Path, *, head: bool = False) -> Response:
    """Build the response for a file found by :func:`resolve_static`."""
    content_type = CONTENT_TYPES.get(path.suffix.lower())
    if content_type is None:
        guessed, _ = mimetypes.guess_type(path.name)
        content_type = guessed or "application/octet-stream"
    return http_response(HTTPStatus.OK, path.read_bytes(), content_type, head=head)


SEQ_PATTERN = re.compile(r"[0-9]{1,18}")
"""A sequence number in a query: ASCII digits, at most 18 of them."""

MAX_WAIT = 30.0
"""The maximum long-poll wait in seconds, below common proxy idle timeouts."""


class InvalidParameter(ValueError):
    """Raised for a query parameter outside its allowed range."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class PollQuery:
    """The parameters of a ``/poll`` request."""

    since: int = 0
    """The last sequence number the client received."""
    wait: float | None = None
    """How long a long poll may wait for an event; ``None`` for a short poll."""
    epoch: str | None = None
    """The epoch ``since`` belongs to; a different epoch means "start over"."""
    channel: str = DEFAULT_CHANNEL
    """The channel whose events are requested."""


def parse_poll_query(query: str, max_wait: float = MAX_WAIT) -> PollQuery:
    """Parse ``since``, ``wait``, ``epoch`` and ``channel`` from a ``/poll`` query.

    ``since`` defaults to 0. ``wait``, in seconds from 0 to ``max_wait``
    (the server's cap, :data:`MAX_WAIT` by default), makes the request a long
    poll. ``epoch``, when given and not the server's
    current one, makes the server respond as if ``since`` were 0. ``channel``
    defaults to ``events``.

    Raises:
        InvalidParameter: naming the parameter, its value and the allowed range.
    """
    values = parse_qs(query, keep_blank_values=True)
    since_text = values.get("since", ["0"])[0]
    if not SEQ_PATTERN.fullmatch(since_text):
        raise InvalidParameter(
            "since",
            f"invalid since: {short_repr(since_text)}; pass the last seq you "
            "received, an integer >= 0 (0 for everything in the history)",
        )
    since = int(since_text)
    epoch = values.get("epoch", [None])[0] or None
    channel = values.get("channel", [DEFAULT_CHANNEL])[0]
    try:
        check_channel(channel)
    except ValueError as exc:
        raise InvalidParameter("channel", str(exc)) from None
    if "wait" not in values:
        return PollQuery(since, None, epoch, channel)
    wait_text = values["wait"][0]
    try:
        wait = float(wait_text)
    except ValueError:
        wait = math.nan
    if not 0 <= wait <= max_wait:
        raise InvalidParameter(
            "wait",
            f"invalid wait: {short_repr(wait_text)}; pass seconds from 0 to "
            f"{max_wait:g}, the server's max_wait (longer waits are cut by "
            "proxies), or leave it out for a short poll",
        )
    return PollQuery(since, wait, epoch, channel)


ROUTE_NAMES = frozenset({"static", "health", "poll", "login", "ws"})


def route_name(path: str) -> str:
    """Return the route ``path`` belongs to, for counting requests.

    One of ``root``, ``static``, ``health``, ``poll``, ``login``, ``ws``
    (plain requests to the WebSocket endpoint, not upgrades) or ``other``; the
    set is fixed so that unknown paths cannot grow a counter without bound.
    """
    if path == "/":
        return "root"
    parts = path.split("/")
    first = parts[1] if len(parts) > 1 and not parts[0] else ""
    return first if first in ROUTE_NAMES else "other"


def request_path(request: Request) -> str:
    """Return the path of ``request`` without its query string."""
    return urlsplit(request.path).path
