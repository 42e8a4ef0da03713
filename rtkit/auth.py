"""Token authentication for WebSocket upgrades and ``/poll``.

A :class:`TokenAuth` contains one shared secret and the way clients send it. A
browser cannot set headers on a WebSocket upgrade, so there are three common
ways, each with its own trade-off:

``via="query"``
    The token rides in the URL: ``ws://host:port/ws?token=TOKEN``. It is the
    simplest, but URLs end up in access logs, browser history and proxies. A
    missing or wrong token gets HTTP 401 before the upgrade.
``via="message"``
    The upgrade is accepted, and the first message must be ``{"type":
    "auth", "token": TOKEN}`` within ``timeout`` seconds. The server replies
    ``{"type": "authenticated"}`` and only then runs the normal handler. A
    wrong or missing token closes the connection with 1008. The token stays
    out of URLs and logs, but unauthenticated clients hold a connection for
    up to ``timeout`` seconds.
``via="cookie"``
    ``GET /login`` with ``Authorization: Bearer TOKEN`` returns a session
    cookie (``HttpOnly; SameSite=Strict``) that the browser then sends with
    every upgrade on its own. Because the browser sends it on its own, a page
    on another local port (same site, since cookies ignore ports) can ride on
    it, and only the server's ``Origin`` check stops that page. The cookie's
    name ends with the server's port, ``rtkit_session_8765``, so that two
    servers on one host do not overwrite each other's session.

With any of them, ``/poll`` accepts the token as ``Authorization: Bearer``,
as ``?token=``, or as the session cookie.

:func:`connect` opens an authenticated connection from Python.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import ssl
from collections import OrderedDict
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as websocket_connect
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from . import routes

__all__ = [
    "AUTH_METHODS",
    "SESSION_COOKIE",
    "AuthenticationFailed",
    "TokenAuth",
    "connect",
    "is_session_cookie",
    "session_cookie_name",
]

logger = logging.getLogger("rtkit.auth")

AuthMethod = Literal["query", "message", "cookie"]
AUTH_METHODS: tuple[AuthMethod, ...] = ("query", "message", "cookie")
"""The ways a client can send the token, as :class:`TokenAuth` ``via`` takes them."""

SESSION_COOKIE = "rtkit_session"
"""The prefix of the session cookie's name; see :func:`session_cookie_name`."""

REPEATED_AUTHORIZATION = (
    "the request repeats its Authorization header; send one "
    "'Authorization: Bearer TOKEN'"
)

MAX_SESSIONS = 1000
"""Session cookies kept at once; the oldest is forgotten beyond this."""

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/-]{1,256}=*")
"""The token68 syntax of RFC 7235, so a token fits a Bearer header unchanged."""


class AuthenticationFailed(Exception):
    """Raised by :func:`connect` when the server rejects the token."""


def session_cookie_name(port: int) -> str:
    """Return the name of the session cookie of the server on ``port``.

    Browsers keep one cookie per host, name and path, whatever the port, so
    a shared name would let a login on one port replace the session of a
    server on another port of the same host.
    """
    return f"{SESSION_COOKIE}_{port}"


def is_session_cookie(name: str) -> bool:
    """Return whether ``name`` is an rtkit session cookie's name, for any port."""
    prefix = SESSION_COOKIE + "_"
    return name.startswith(prefix) and name.removeprefix(prefix).isdecimal()


def _check_token(token: object) -> str:
    if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
        described = "it" if isinstance(token, str) else f"a {type(token).__name__}"
        raise ValueError(
            f"invalid token: {described} is not 1 to 256 letters, digits and "
            "- . _ ~ + / (then optional = padding); pass such a string, or "
            "None for a random one"
        )
    return token


def _check_via(via: object) -> AuthMethod:
    if via not in AUTH_METHODS:
        raise ValueError(f"invalid via: {via!r}; pass 'query', 'message' or 'cookie'")
    return via  # type: ignore[return-value]


class TokenAuth:
    """A shared-secret token that clients must present.

    Args:
        token: the secret; ``None`` generates a random one with
            :func:`secrets.token_urlsafe` (16 bytes). Read it back from
            :attr:`token`.
        via: how WebSocket clients send it: ``"query"``, ``"message"`` or
            ``"cookie"`` (see the module documentation).
        timeout: seconds a ``"message"`` client has to send its auth message.

    Raises:
        ValueError: if ``token`` is not 1 to 256 characters of the token68
            syntax, ``via`` is not one of the three methods, or ``timeout``
            is not a positive number.
    """

    def __init__(
        self,
        token: str | None = None,
        via: AuthMethod = "query",
        timeout: float = 5.0,
    ) -> None:
        self.token = _check_token(secrets.token_urlsafe(16) if token is None else token)
        self.via: AuthMethod = _check_via(via)
        valid = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if not valid or not 0 < timeout < float("inf"):
            raise ValueError(
                f"invalid timeout: {timeout!r}; pass the seconds a client has to "
                "send its auth message, above 0, e.g. 5"
            )
        self.timeout = float(timeout)
        self._sessions: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        # The token is a secret, so it stays out of reprs and logs.
        return f"<rtkit.auth.TokenAuth via={self.via!r} timeout={self.timeout:g}>"

    # Checks

    def matches(self, candidate: object) -> bool:
        """Return whether ``candidate`` is the token, in constant time.

        Any string is compared, including non-ASCII text and lone surrogates
        from a JSON ``\\ud800`` escape; anything but a string never matches.
        """
        if not isinstance(candidate, str):
            return False
        return _equal_secrets(candidate, self.token)

    def has_session(self, request: Request, *, port: int) -> bool:
        """Return whether ``request`` carries a session cookie from ``/login``.

        Args:
            request: the HTTP request.
            port: the server's port, which names the cookie.
        """
        session = _cookie(request, session_cookie_name(port))
        if session is None:
            return False
        # Comparing with every session keeps the time independent of which
        # session a guess comes close to. At most MAX_SESSIONS are kept.
        found = False
        for known in self._sessions:
            found |= _equal_secrets(session, known)
        return found

    def check_upgrade(self, request: Request, *, port: int) -> str | None:
        """Check the token a WebSocket upgrade carries, as ``via`` requires.

        Args:
            request: the upgrade request.
            port: the server's port, which names the session cookie.

        Returns:
            ``None`` when the upgrade may proceed (always for ``"message"``,
            which checks the first message instead), else the reason for 401.
        """
        if self.via == "query":
            token = _query_token(request)
            if token is None:
                return (
                    "missing token: this server requires one; add ?token=TOKEN "
                    "to the WebSocket URL, e.g. ws://HOST:PORT/ws?token=TOKEN"
                )
            if not self.matches(token):
                return (
                    "wrong token in ?token=; use the server's token (its "
                    "--token, RTKIT_TOKEN, or the one it printed at start)"
                )
        elif self.via == "cookie" and not self.has_session(request, port=port):
            return (
                f"missing or unknown {session_cookie_name(port)} cookie: GET "
                "/login with 'Authorization: Bearer TOKEN' first, then open the "
                "WebSocket"
            )
        return None

    def check_http(self, request: Request, *, port: int) -> str | None:
        """Check the token of a plain HTTP request such as ``/poll``.

        The token may come as ``Authorization: Bearer``, as ``?token=`` or as
        the session cookie, whatever ``via`` is.

        Args:
            request: the HTTP request.
            port: the server's port, which names the session cookie.

        Returns:
            ``None`` when the request may proceed, else the reason for 401.
        """
        if len(request.headers.get_all("Authorization")) > 1:
            return REPEATED_AUTHORIZATION
        bearer = _bearer(request)
        if bearer is not None:
            return None if self.matches(bearer) else "wrong token in Authorization"
        token = _query_token(request)
        if token is not None:
            return None if self.matches(token) else "wrong token in ?token="
        if self.has_session(request, port=port):
            return None
        return (
            "missing token: this server requires one; send 'Authorization: Bearer "
            f"TOKEN', add ?token=TOKEN, or send the {session_cookie_name(port)} "
            "cookie from /login"
        )

    # Responses

    def login(self, request: Request, *, port: int, secure: bool = False) -> Response:
        """Respond to ``GET /login``: a session cookie for a valid Bearer token.

        Args:
            request: the request; its ``Authorization`` header must be
                ``Bearer TOKEN``.
            port: the server's port, which names the cookie.
            secure: whether the server uses TLS, which adds ``Secure`` to the
                cookie so the browser never sends it over plain HTTP.

        Returns:
            204 with ``Set-Cookie``, or 401 naming what is missing or wrong.
        """
        if len(request.headers.get_all("Authorization")) > 1:
            return unauthorized(REPEATED_AUTHORIZATION)
        bearer = _bearer(request)
        if bearer is None or not self.matches(bearer):
            problem = "missing" if bearer is None else "wrong token in"
            return unauthorized(
                f"{problem} Authorization header; send 'Authorization: Bearer "
                "TOKEN' to get a session cookie"
            )
        session = secrets.token_urlsafe(24)
        self._sessions[session] = None
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        name = session_cookie_name(port)
        cookie = f"{name}={session}; HttpOnly; SameSite=Strict; Path=/"
        if secure:
            cookie += "; Secure"
        response = routes.http_response(
            HTTPStatus.NO_CONTENT, b"", "text/plain; charset=utf-8"
        )
        # RFC 9110 forbids Content-Length in a 204 response.
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        response.headers["Set-Cookie"] = cookie
        return response

    # First-message authentication

    async def authenticate(self, connection: ServerConnection) -> bool:
        """Wait for the auth message of a ``"message"`` client and check it.

        Sends ``{"type": "authenticated"}`` when the token is right; otherwise
        closes the connection with 1008 and a reason naming the problem.

        Returns:
            Whether the client may go on to the normal handler.
        """
        try:
            async with asyncio.timeout(self.timeout):
                message = await connection.recv()
        except TimeoutError:
            await connection.close(
                1008,
                f"authentication failed: no auth message within {self.timeout:g} s",
            )
            return False
        token, problem = _auth_message_token(message)
        if problem is None and not self.matches(token):
            problem = "wrong token"
        if problem is not None:
            await connection.close(1008, f"authentication failed: {problem}")
            return False
        await connection.send('{"type": "authenticated"}')
        return True


def unauthorized(reason: str, *, as_json: bool = False) -> Response:
    """Build a 401 response whose body names what is missing and how to fix it."""
    if as_json:
        payload = {"error": "unauthorized", "message": reason}
        response = routes.json_response(HTTPStatus.UNAUTHORIZED, payload)
    else:
        response = routes.text_response(
            HTTPStatus.UNAUTHORIZED, f"unauthorized: {reason}"
        )
    response.headers["WWW-Authenticate"] = 'Bearer realm="rtkit"'
    return response


def _auth_message_token(message: str | bytes) -> tuple[str | None, str | None]:
    """Return the token of an auth message and ``None``, or ``None`` and the problem."""
    expected = 'send {"type": "auth", "token": TOKEN} first'
    if isinstance(message, bytes):
        return None, f"binary message; {expected}"
    try:
        decoded = json.loads(message)
    except RecursionError:
        return None, f"first message is JSON nested too deeply; {expected}"
    except ValueError:
        return None, f"first message is not JSON; {expected}"
    if not isinstance(decoded, dict) or decoded.get("type") != "auth":
        return None, f"first message is not an auth message; {expected}"
    token = decoded.get("token")
    if not isinstance(token, str):
        return None, f"auth message has no token string; {expected}"
    return token, None


def _equal_secrets(candidate: str, secret: str) -> bool:
    """Return whether two strings are equal, in constant time for any characters.

    ``hmac.compare_digest`` takes only ASCII strings, so both are compared as
    UTF-8 bytes, and ``surrogatepass`` encodes the lone surrogates of a JSON
    ``\\ud800`` escape instead of raising ``UnicodeEncodeError``.
    """
    return hmac.compare_digest(
        candidate.encode("utf-8", "surrogatepass"),
        secret.encode("utf-8", "surrogatepass"),
    )


def _query_token(request: Request) -> str | None:
    values = parse_qs(urlsplit(request.path).query).get("token")
    return values[0] if values else None


def _bearer(request: Request) -> str | None:
    """Return the credentials of ``Authorization: Bearer``, or ``None``.

    A repeated header counts as missing; callers check for it first.
    """
    values = request.headers.get_all("Authorization")
    if len(values) != 1:
        return None
    value = values[0]
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip()


def _cookie(request: Request, name: str) -> str | None:
    """Return the value of cookie ``name`` in ``request``, or ``None``.

    Parsed by hand, because http.cookies rejects whole headers for one
    unusual cookie that another local app set on the same host.
    """
    for header in request.headers.get_all("Cookie"):
        for pair in header.split(";"):
            key, _, value = pair.strip().partition("=")
            if key == name:
                return value
    return None


# The Python client


async def connect(
    ws_url: str, token: str, via: AuthMethod = "query", **kwargs: Any
) -> ClientConnection:
    """Open a WebSocket to an rtkit server and authenticate with ``token``.

    Args:
        ws_url: the server's WebSocket URL, such as ``server.ws_url``.
        token: the server's token.
        via: how to send the token: ``"query"`` adds ``?token=``,
            ``"message"`` sends the auth message and waits for the reply,
            ``"cookie"`` fetches a session cookie from ``/login`` first.
        kwargs: passed to :func:`websockets.asyncio.client.connect`, such as
            ``ssl`` for a ``wss://`` URL or ``open_timeout`` (which also
            bounds the login request and the wait for the auth reply).

    Returns:
        An open connection; for ``"message"``, the ``authenticated`` reply is
        already consumed, so the next message is the server's greeting.

    Raises:
        AuthenticationFailed: if the server rejects the token (HTTP 401, or
            close code 1008 after the auth message), with the server's
            explanation.
        websockets.exceptions.InvalidStatus: if the server refuses the upgrade
            for another reason, such as 503 when it is full or 403 for the
            Origin.
        websockets.exceptions.ConnectionClosed: if the connection is lost
            before the reply to the auth message.
        ValueError: if ``token`` or ``via`` is invalid.
    """
    _check_token(token)
    _check_via(via)
    open_timeout = kwargs.get("open_timeout", 10)
    if via == "query":
        url = _with_query_token(ws_url, token)
        try:
            return await websocket_connect(url, **kwargs)
        except InvalidStatus as exc:
            if not _is_unauthorized(exc):
                raise
            raise _rejected(exc) from exc
    if via == "cookie":
        session = await _login(ws_url, token, kwargs.get("ssl"), open_timeout)
        headers = dict(kwargs.pop("additional_headers", None) or {})
        headers["Cookie"] = session
        try:
            return await websocket_connect(ws_url, additional_headers=headers, **kwargs)
        except InvalidStatus as exc:
            if not _is_unauthorized(exc):
                raise
            raise _rejected(exc) from exc
    connection = await websocket_connect(ws_url, **kwargs)
    try:
        await connection.send(json.dumps({"type": "auth", "token": token}))
        async with asyncio.timeout(open_timeout):
            reply = await connection.recv()
    except ConnectionClosed as exc:
        if exc.rcvd is None or exc.rcvd.code != CloseCode.POLICY_VIOLATION:
            # Lost or closed for another reason: not a verdict on the token.
            raise
        raise AuthenticationFailed(
            f"server rejected the token: {exc.rcvd.reason}"
        ) from exc
    except TimeoutError:
        await connection.close()
        raise AuthenticationFailed(
            f"no reply to the auth message within {open_timeout:g} s; is "
            "the server using via='message'?"
        ) from None
    if not _is_authenticated(reply):
        await connection.close()
        raise AuthenticationFailed(
            f"unexpected reply to the auth message: {reply!r:.80}; is the "
            "server using via='message'?"
        )
    return connection


def _with_query_token(ws_url: str, token: str) -> str:
    parts = urlsplit(ws_url)
    # quote() with no safe characters, because parse_qs reads "+" as a space.
    extra = f"token={quote(token, safe='')}"
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def _is_unauthorized(exc: InvalidStatus) -> bool:
    """Tell a rejected token (401) from other refusals, such as 503 when full."""
    return exc.response.status_code == HTTPStatus.UNAUTHORIZED


def _is_authenticated(reply: str | bytes) -> bool:
    try:
        message = json.loads(reply)
    except ValueError:
        return False
    return isinstance(message, dict) and message.get("type") == "authenticated"


def _rejected(exc: InvalidStatus) -> AuthenticationFailed:
    response = exc.response
    body = response.body.decode(errors="replace").strip() if response.body else ""
    return AuthenticationFailed(
        f"server rejected the WebSocket upgrade with HTTP {response.status_code}: "
        f"{body}"
    )


async def _login(
    ws_url: str,
    token: str,
    ssl_context: ssl.SSLContext | bool | None,
    open_timeout: float | None,
) -> str:
    """Send ``GET /login`` with the token and return the session cookie.

    The cookie comes back as ``name=value``, ready for a ``Cookie`` header.
    """
    parts = urlsplit(ws_url)
    secure = parts.scheme == "wss"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if secure else 80)
    context: ssl.SSLContext | None = None
    if secure:
        context = (
            ssl_context
            if isinstance(ssl_context, ssl.SSLContext)
            else ssl.create_default_context()
        )
    host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = (
        f"GET /login HTTP/1.1\r\nHost: {host_header}\r\n"
        f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )

    async with asyncio.timeout(open_timeout):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host if secure else None
        )
        try:
            writer.write(request.encode())
            raw = await reader.read()
        finally:
            writer.close()
    return _session_cookie(raw)


def _session_cookie(raw: bytes) -> str:
    """Return the session cookie from a raw ``/login`` response, as ``name=value``.

    The name is taken from the response rather than built from the URL's
    port, because a proxy in front of the server may use another port.

    Raises:
        AuthenticationFailed: if the status is not 204 or the cookie is missing.
    """
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "204":
        text = body.decode(errors="replace").strip()
        raise AuthenticationFailed(f"GET /login failed: {lines[0]}: {text}")

    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "set-cookie":
            cookie_name, _, rest = value.strip().partition("=")
            if is_session_cookie(cookie_name):
                return f"{cookie_name}={rest.split(';', 1)[0]}"
    raise AuthenticationFailed(
        f"GET /login returned no {SESSION_COOKIE}_PORT cookie; check that the "
        "server uses TokenAuth(via='cookie')"
    )
