"""Command line: ``python -m rtkit serve [--host H] [--port P] ...`` and ``cert``.

``serve`` runs the same server the notebooks start in the kernel, so
``static/client.html`` works without Jupyter. Ctrl-C (SIGINT) or SIGTERM closes
every connection with 1001, frees the port and exits with status 0. ``cert``
writes a local certificate authority and a server certificate for
``serve --certfile/--keyfile`` (see :mod:`rtkit.tls`). Invalid options exit
with status 2 and a message naming the option and the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import ssl
import sys
from pathlib import Path

from . import routes
from .auth import AUTH_METHODS, TOKEN_PATTERN, TokenAuth
from .hub import DEFAULT_HISTORY_SIZE, DEFAULT_MAX_CHANNELS
from .origins import normalize_origin
from .push import DEFAULT_MAX_BUFFER, DEFAULT_MAX_RATE
from .server import (
    DEFAULT_HOST,
    DEFAULT_MAX_CONNECTIONS,
    MAX_WAIT_LIMIT,
    PortInUseError,
    Server,
)
from .source import EventSource

__all__ = ["main"]

logger = logging.getLogger("rtkit.cli")


TOKEN_VARIABLE = "RTKIT_TOKEN"
"""The environment variable that ``--token`` defaults to."""

TOKEN_FORM = "1 to 256 letters, digits and - . _ ~ + / (then optional = padding)"


def port_number(text: str) -> int:
    """Parse a port for argparse: an integer from 0 to 65535."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass a port from 0 to 65535 (0 picks a "
            "free port)"
        )
    return value


def host_address(text: str) -> str:
    """Parse an address to bind for argparse: any non-empty text."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass an address of this machine, such as "
            f"{DEFAULT_HOST}, or 0.0.0.0 or :: to listen on every interface"
        )
    return text


def origin(text: str) -> str:
    """Parse an allowed origin for argparse, as the server normalizes it."""
    try:
        return normalize_origin(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass null or scheme://host[:port] with "
            "http or https, e.g. http://host:8000"
        ) from None


def positive_count(text: str) -> int:
    """Parse a count for argparse: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass a positive integer"
        )
    return value


def byte_count(text: str) -> int:
    """Parse a number of bytes for argparse: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass a number of bytes, an integer >= 0"
        )
    return value


def count_or_zero(text: str) -> int | None:
    """Parse a count for argparse: a positive integer, or 0 for no limit."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass a positive integer, or 0 for no limit"
        )
    return value or None


def event_rate(text: str) -> float:
    """Parse the event source's rate for argparse, within EventSource's range."""
    value = parse_number(text)
    if not 0 < value <= EventSource.MAX_RATE:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass events per second, above 0 and at "
            f"most {EventSource.MAX_RATE:g}"
        )
    return value


def folder_path(text: str) -> str:
    """Parse a folder path for argparse: any non-empty text."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass a folder path, e.g. ~/.rtkit/tls"
        )
    return text


def token_value(text: str) -> str:
    """Parse a token for argparse: the token68 syntax that TokenAuth accepts."""
    if not TOKEN_PATTERN.fullmatch(text):
        # The value is a secret, so the message leaves it out.
        raise argparse.ArgumentTypeError(
            f"invalid value: the token is not {TOKEN_FORM}; pass such a "
            "token, or leave --token out and pass --auth-via for a random one"
        )
    return text


def token_from_environment() -> str | None:
    """Return ``RTKIT_TOKEN``, or ``None`` when it is unset or empty.

    Raises:
        ValueError: naming ``RTKIT_TOKEN`` if its value is not a valid token.
    """
    token = os.environ.get(TOKEN_VARIABLE) or None
    if token is not None and not TOKEN_PATTERN.fullmatch(token):
        raise ValueError(
            f"invalid {TOKEN_VARIABLE}: the token is not {TOKEN_FORM}; set it "
            "to such a token, or unset it"
        )
    return token


def parse_number(text: str) -> float:
    """Return ``text`` as a float, or NaN when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def rate_or_zero(text: str) -> float | None:
    """Parse a rate for argparse: a positive number, or 0 for no limit."""
    value = parse_number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass a number of messages per second "
            "above 0, or 0 for no limit"
        )
    return value or None


def seconds(text: str) -> float:
    """Parse a duration for argparse: seconds above 0."""
    value = parse_number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass a number of seconds above 0"
        )
    return value


def long_poll_wait(text: str) -> float:
    """Parse ``--max-wait`` for argparse: seconds above 0, at most an hour."""
    value = seconds(text)
    if value > MAX_WAIT_LIMIT:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass at most {MAX_WAIT_LIMIT:g} seconds, "
            "because each waiting request holds a connection"
        )
    return value


def seconds_or_zero(text: str) -> float | None:
    """Parse a duration for argparse: seconds above 0, or 0 (also 0.00) to disable."""
    value = parse_number(text)
    if value == 0:
        return None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(
            f"invalid value: {text!r}; pass a number of seconds above 0, or 0 "
            "to turn it off"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``rtkit`` command."""
    parser = argparse.ArgumentParser(
        prog="python -m rtkit", description="Run the rtkit teaching server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve the browser client, /health and WebSocket on one port"
    )
    add_serve_arguments(serve)
    add_limit_arguments(serve)
    add_security_arguments(serve)

    cert = commands.add_parser(
        "cert",
        help="create a local certificate authority and a server certificate "
        "for serve --certfile/--keyfile",
    )
    cert.add_argument(
        "--dir",
        type=folder_path,
        default=None,
        metavar="DIR",
        help="folder for ca.pem, server.pem and server-key.pem (default: "
        "~/.rtkit/tls); valid existing files are reused",
    )
    return parser


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """Add the address, origin and event source options of ``serve``."""

    serve.add_argument(
        "--host",
        type=host_address,
        default=DEFAULT_HOST,
        help="address to bind (default: %(default)s; 0.0.0.0 or :: exposes the "
        "server to the network)",
    )

    serve.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="port to bind (default: RTKIT_PORT or 8765; 0 picks a free port)",
    )

    serve.add_argument(
        "--allow-origin",
        type=origin,
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept WebSocket upgrades from ORIGIN, e.g. "
        "https://hub.example.org, or null for pages opened from files "
        "(repeatable)",
    )

    serve.add_argument(
        "--max-size",
        type=count_or_zero,
        default=2**20,
        metavar="BYTES",
        help="largest incoming message in bytes; larger ones close with 1009 "
        "(default: %(default)s; 0 for no limit)",
    )

    serve.add_argument(
        "--rate",
        type=event_rate,
        default=None,
        metavar="EVENTS_PER_SECOND",
        help="run the built-in event source at this rate, so the page's "
        "transports have events to show (default: no source)",
    )

    serve.add_argument(
        "--poisson",
        action="store_true",
        help="with --rate: random gaps between events (a Poisson process) "
        "instead of fixed ones",
    )

    serve.add_argument(
        "--history",
        type=positive_count,
        default=DEFAULT_HISTORY_SIZE,
        metavar="EVENTS",
        help="events kept for pollers and resuming clients (default: %(default)s)",
    )

    serve.add_argument(
        "--max-channels",
        type=positive_count,
        default=DEFAULT_MAX_CHANNELS,
        metavar="COUNT",
        help="channels that may exist at once (default: %(default)s)",
    )


def add_limit_arguments(serve: argparse.ArgumentParser) -> None:
    """Add the resource limit and keepalive options of ``serve``."""
    serve.add_argument(
        "--max-connections",
        type=count_or_zero,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="COUNT",
        help="WebSocket connections open at once; further upgrades get HTTP 503 "
        "with Retry-After (default: %(default)s; 0 for no limit)",
    )
    serve.add_argument(
        "--max-rate",
        type=rate_or_zero,
        default=DEFAULT_MAX_RATE,
        metavar="MESSAGES_PER_SECOND",
        help="messages per second one connection may send; a faster one is "
        "closed with 1008 (default: %(default)g; 0 for no limit)",
    )
    serve.add_argument(
        "--max-wait",
        type=long_poll_wait,
        default=routes.MAX_WAIT,
        metavar="SECONDS",
        help="maximum long-poll wait in seconds that a client may request "
        "(default: %(default)g)",
    )
    serve.add_argument(
        "--max-buffer",
        type=byte_count,
        default=DEFAULT_MAX_BUFFER,
        metavar="BYTES",
        help="bytes that may wait in one client's write buffer before "
        "--slow-policy applies (default: %(default)s)",
    )
    serve.add_argument(
        "--slow-policy",
        choices=("drop", "discard"),
        default="drop",
        help="what happens to a client over --max-buffer: drop its connection, "
        "or discard messages for it until it catches up (default: %(default)s)",
    )
    serve.add_argument(
        "--stall-timeout",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="abort a connection whose write buffer has sent nothing for this "
        "long while data waits, a client that stopped reading (default: "
        "--ping-interval plus --ping-timeout)",
    )
    serve.add_argument(
        "--ping-interval",
        type=seconds_or_zero,
        default=20.0,
        metavar="SECONDS",
        help="seconds between keepalive pings (default: %(default)g; 0 turns "
        "keepalive off)",
    )
    serve.add_argument(
        "--ping-timeout",
        type=seconds_or_zero,
        default=20.0,
        metavar="SECONDS",
        help="seconds to wait for a pong before closing with 1011 (default: "
        "%(default)g; 0 waits forever)",
    )


def add_security_arguments(serve: argparse.ArgumentParser) -> None:
    """Add the Origin, token, TLS and access log options of ``serve``."""
    serve.add_argument(
        "--no-origin-check",
        dest="check_origin",
        action="store_false",
        help="accept WebSocket upgrades from pages of any origin and requests "
        "under any Host name; any web page open in a browser on this machine "
        "can then connect",
    )
    serve.add_argument(
        "--token",
        type=token_value,
        default=None,
        help="require this token from WebSocket clients and /poll (default: "
        "RTKIT_TOKEN when set, which keeps it out of the process list)",
    )
    serve.add_argument(
        "--auth-via",
        choices=AUTH_METHODS,
        default=None,
        help="how WebSocket clients send the token: ?token= in the URL, a first "
        "message, or a cookie from GET /login (default: query); without "
        "--token, a random token is printed at start",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log one line per HTTP request, upgrades included, with the full "
        "URL (so a token in ?token= shows up in the log)",
    )
    serve.add_argument(
        "--certfile",
        default=None,
        metavar="FILE",
        help="serve https:// and wss:// with this PEM certificate (chain), e.g. "
        "server.pem from `python -m rtkit cert`",
    )
    serve.add_argument(
        "--keyfile",
        default=None,
        metavar="FILE",
        help="the PEM private key of --certfile, unless the certificate file "
        "contains it",
    )


async def serve_until_stopped(
    server: Server, rate: float | None = None, poisson: bool = False
) -> None:
    """Run ``server`` until SIGINT or SIGTERM, then stop it cleanly.

    With ``rate``, the built-in event source publishes that many events per
    second while the server runs.
    """
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)
    async with server:
        if rate is not None:
            server.start_source(rate, poisson=poisson)
        logger.info("open %s in a browser; press Ctrl-C to stop", server.url)
        await stop_requested.wait()


def load_server_context(
    certfile: str | None, keyfile: str | None
) -> ssl.SSLContext | None:
    """Return a server TLS context from ``--certfile`` and ``--keyfile``, if given.

    Raises:
        ValueError: if the files are missing, unreadable or do not match.
    """
    if certfile is None:
        if keyfile is not None:
            raise ValueError(
                "--keyfile needs --certfile; pass the certificate too, e.g. "
                "--certfile server.pem --keyfile server-key.pem"
            )
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot load the certificate {certfile!r}"
            + (f" with the key {keyfile!r}" if keyfile else "")
            + f": {exc}; check --certfile and --keyfile, or create both with "
            "`python -m rtkit cert`"
        ) from None
    return context


def build_auth(token: str | None, via: str | None) -> TokenAuth | None:
    """Return the :class:`TokenAuth` that ``--token`` and ``--auth-via`` ask for.

    A random token is generated when only ``--auth-via`` is given, and
    printed, because clients need it.
    """
    if token is None and via is None:
        return None
    auth = TokenAuth(token, via or "query")  # type: ignore[arg-type]
    if token is None:
        print(f"rtkit: clients must send this token: {auth.token}", flush=True)
    return auth


def serve(args: argparse.Namespace) -> int:
    """Run ``python -m rtkit serve`` and return the exit status."""
    try:
        token = args.token if args.token is not None else token_from_environment()
        server = Server(
            args.host,
            args.port,
            allowed_origins=args.allow_origin,
            max_size=args.max_size,
            history_size=args.history,
            max_channels=args.max_channels,
            max_connections=args.max_connections,
            max_rate=args.max_rate,
            max_wait=args.max_wait,
            max_buffer=args.max_buffer,
            slow_policy=args.slow_policy,
            stall_timeout=args.stall_timeout,
            ping_interval=args.ping_interval,
            ping_timeout=args.ping_timeout,
            check_origin=args.check_origin,
            auth=build_auth(token, args.auth_via),
            ssl=load_server_context(args.certfile, args.keyfile),
            access_log=args.access_log,
        )
        if args.rate is not None:
            # Validate before binding, so a bad rate never leaves a half-started server.
            EventSource(server.hub, args.rate)
        asyncio.run(serve_until_stopped(server, args.rate, args.poisson))
    except PortInUseError as exc:
        # strerror leaves out the "[Errno 98]" prefix of str(exc).
        print(f"rtkit: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"rtkit: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"rtkit: cannot listen on {args.host}: {exc}; check --host "
            "(an address of this machine, such as 127.0.0.1)",
            file=sys.stderr,
        )
        return 2
    return 0


def cert(args: argparse.Namespace) -> int:
    """Run ``python -m rtkit cert`` and return the exit status."""
    try:
        # Imported here, so that serve works even where cryptography is missing.
        from .tls import DEFAULT_DIRECTORY, LocalCA
    except ImportError as exc:
        print(
            f"rtkit: cannot create certificates: {exc}; install the cryptography "
            "package (pip install 'cryptography>=42')",
            file=sys.stderr,
        )
        return 2

    directory = DEFAULT_DIRECTORY if args.dir is None else args.dir
    try:
        ca = LocalCA.create(directory)
        spki = ca.spki_sha256()
    except (OSError, ValueError) as exc:
        blocker = _file_in_path(Path(directory))
        problem = f"{blocker} is a file, not a folder" if blocker else str(exc)
        print(
            f"rtkit: cannot create certificates in {directory}: {problem}; pass "
            "a writable folder with --dir",
            file=sys.stderr,
        )
        return 2

    print(f"CA certificate:     {ca.ca_file}")
    print(f"server certificate: {ca.cert_file}")
    print(f"server key:         {ca.key_file}")
    print(f"valid until:        {ca.not_valid_after().isoformat(timespec='seconds')}")
    print()
    print("serve with TLS:")
    print(f"  python -m rtkit serve --certfile {ca.cert_file} --keyfile {ca.key_file}")
    print("trust the CA:")
    print(f"  Python:   ssl=rtkit.tls.LocalCA({str(ca.directory)!r}).client_context()")
    print(f"  curl:     curl --cacert {ca.ca_file} https://127.0.0.1:8765/health")
    print(f"  Chromium: --ignore-certificate-errors-spki-list={spki}")
    return 0


def _file_in_path(path: Path) -> Path | None:
    """Return the file that ``path`` or one of its parents is, or ``None``."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command == "cert":
        return cert(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
