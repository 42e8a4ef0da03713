"""Origin checks for WebSocket upgrades.

Browsers send an ``Origin`` header with every WebSocket upgrade, and they do not
apply the same-origin policy to WebSockets. Without a check, any page the user
visits could open a WebSocket to a server on their machine (cross-site WebSocket
hijacking). rtkit accepts an upgrade when the page that opens it was served by
this server:

* no ``Origin`` header: a non-browser client (Python, curl), accepted;
* an ``Origin`` listed in ``allowed_origins``: accepted;
* ``Origin: null`` (a page opened from ``file://`` or a sandboxed frame):
  rejected, because any site can produce it from a sandboxed iframe;
* otherwise the ``Origin`` must name the same host and port as the request's
  ``Host`` header, treating ``localhost``, ``127.0.0.1`` and ``::1`` as one host,
  and that host must be an IP address or ``localhost``. A DNS name could point
  at this machine by DNS rebinding, so a DNS name must be listed explicitly.

A page served through a path-prefixing proxy such as jupyter-server-proxy keeps
the proxy's ``Host`` and ``Origin``, which match, so it passes the same rule.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_HOSTS", "check_host", "check_origin", "normalize_origin"]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str:
    """Return ``origin`` lowercased and without a trailing slash.

    Raises:
        ValueError: if ``origin`` is not ``null`` or an http(s) origin such as
            ``http://host:8000``.
    """
    normalized = origin.strip().rstrip("/").lower()
    if normalized == "null":
        return normalized
    try:
        parsed = urlsplit(normalized)
        parsed.port  # noqa: B018 - raises ValueError for an invalid port
    except ValueError:
        parsed = urlsplit("")
    if (
        parsed.scheme not in DEFAULT_PORTS
        or not parsed.hostname
        or parsed.path
        or parsed.query
    ):
        raise ValueError(
            f"invalid origin: {origin!r}; pass 'null' or scheme://host[:port] "
            "with http or https, e.g. 'http://host:8000'"
        )
    return normalized


def _split_host_header(host: str, default_port: int) -> tuple[str, int] | None:
    """Split a ``Host`` header into a lowercase host name and a port."""
    try:
        parsed = urlsplit(f"//{host}")
        port = parsed.port
    except ValueError:
        return None
    if not parsed.hostname:
        return None
    return parsed.hostname.lower(), port if port is not None else default_port


def _is_ip_or_localhost(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _same_host(first: str, second: str) -> bool:
    return first == second or (first in LOOPBACK_HOSTS and second in LOOPBACK_HOSTS)


def check_origin(
    origin: str | None,
    host: str | None,
    allowed_origins: Collection[str] = (),
    *,
    secure: bool = False,
) -> str | None:
    """Decide whether a WebSocket upgrade may proceed.

    Args:
        origin: value of the request's ``Origin`` header, or ``None`` if absent.
        host: value of the request's ``Host`` header, or ``None`` if absent.
        allowed_origins: extra origins to accept, normalized with
            :func:`normalize_origin`; ``"null"`` accepts pages opened from files.
        secure: whether the request arrived over TLS, which makes the default
            ``Host`` port 443 instead of 80.

    Returns:
        ``None`` if the upgrade is accepted, otherwise the reason for rejecting
        it, written for the person who has to fix it.
    """
    if origin is None:
        return None
    normalized = origin.strip().rstrip("/").lower()
    if normalized in allowed_origins:
        return None
    allow_hint = (
        f"if that page is trusted, allow it with allowed_origins=[{origin!r}] "
        f"or `python -m rtkit serve --allow-origin {origin}`"
    )
    if normalized == "null":
        page = f"http://{host}/" if host else "this server's / page"
        return (
            "Origin 'null' is sent by pages opened from file:// and by sandboxed "
            f"frames of any site; open the client from this server instead "
            f"({page}), or " + allow_hint
        )
    try:
        parsed = urlsplit(normalized)
        origin_port = parsed.port
    except ValueError:
        origin_port = None
        parsed = urlsplit("")
    if parsed.scheme not in DEFAULT_PORTS or not parsed.hostname:
        return f"Origin {origin!r} is not a valid http(s) origin"
    origin_host = parsed.hostname
    if origin_port is None:
        origin_port = DEFAULT_PORTS[parsed.scheme]
    if host is None:
        return "the request has no Host header, so its origin cannot be verified"
    request_host = _split_host_header(host, 443 if secure else 80)
    if request_host is None:
        return f"Host header {host!r} is not a valid host[:port]"
    host_name, host_port = request_host
    if not _same_host(origin_host, host_name) or origin_port != host_port:
        return (
            f"Origin {origin!r} is not this server's origin (the request was sent "
            f"to {host!r}); {allow_hint}"
        )
    if not _is_ip_or_localhost(host_name):
        return (
            f"Host {host!r} is a DNS name, which another site can point at this "
            f"machine (DNS rebinding); {allow_hint}"
        )
    return None


def check_host(host: str | None, allowed_origins: Collection[str] = ()) -> str | None:
    """Decide whether a plain HTTP request may proceed, judged by its ``Host``.

    A page on another site can read this server's responses after DNS
    rebinding: the browser treats the rebound name as the page's own origin,
    so it sends no ``Origin`` on a GET and lets the page read the response.
    The request still names the attacker's DNS name in ``Host``, so a
    ``Host`` that is neither an IP address, ``localhost``, nor the host of
    an entry of ``allowed_origins`` is rejected.

    Args:
        host: value of the request's ``Host`` header, or ``None`` if absent
            (an HTTP/1.0 client, never a browser).
        allowed_origins: extra origins accepted, normalized with
            :func:`normalize_origin`; their host names are accepted in ``Host``.

    Returns:
        ``None`` if the request is accepted, otherwise the reason for rejecting
        it, written for the person who has to fix it.
    """
    if host is None:
        return None
    request_host = _split_host_header(host, 80)
    if request_host is None:
        return f"Host header {host!r} is not a valid host[:port]"
    host_name = request_host[0]
    if _is_ip_or_localhost(host_name):
        return None
    allowed_hosts = {
        urlsplit(origin).hostname for origin in allowed_origins if origin != "null"
    }
    if host_name in allowed_hosts:
        return None
    return (
        f"Host {host!r} is a DNS name, which another site can point at this "
        f"machine (DNS rebinding); to serve this server under that name, allow "
        f"its origin with allowed_origins=['http://{host}'] or "
        f"`python -m rtkit serve --allow-origin http://{host}`"
    )
