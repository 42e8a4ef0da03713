"""Command line: ``python -m rtkit serve [--host H] [--port P]``.

Runs the same server the notebooks start in the kernel, so ``static/client.html``
works without Jupyter. Ctrl-C (SIGINT) or SIGTERM closes every connection with
1001, frees the port and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .hub import DEFAULT_HISTORY_SIZE, DEFAULT_MAX_CHANNELS
from .server import DEFAULT_HOST, PortInUseError, Server
from .source import EventSource

__all__ = ["main"]

logger = logging.getLogger("rtkit.cli")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``rtkit`` command."""
    parser = argparse.ArgumentParser(
        prog="python -m rtkit", description="Run the rtkit teaching server."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="serve the browser client, /health and WebSocket on one port"
    )

    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to bind (default: %(default)s; 0.0.0.0 exposes the server "
        "to the network)",
    )

    serve.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to bind (default: RTKIT_PORT or 8765; 0 picks a free port)",
    )

    serve.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept WebSocket upgrades from ORIGIN, e.g. "
        "https://hub.example.org, or null for pages opened from files "
        "(repeatable)",
    )

    serve.add_argument(
        "--max-size",
        type=int,
        default=2**20,
        metavar="BYTES",
        help="largest incoming message in bytes; larger ones close with 1009 "
        "(default: %(default)s)",
    )

    serve.add_argument(
        "--rate",
        type=float,
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
        type=int,
        default=DEFAULT_HISTORY_SIZE,
        metavar="EVENTS",
        help="events kept for pollers and resuming clients (default: %(default)s)",
    )

    serve.add_argument(
        "--max-channels",
        type=int,
        default=DEFAULT_MAX_CHANNELS,
        metavar="COUNT",
        help="channels that may exist at once (default: %(default)s)",
    )

    return parser


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


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        server = Server(
            args.host,
            args.port,
            allowed_origins=args.allow_origin,
            max_size=args.max_size,
            history_size=args.history,
            max_channels=args.max_channels,
        )
        if args.rate is not None:
            # Validate before binding, so a bad rate never leaves a half-started server.
            EventSource(server.hub, args.rate)
        asyncio.run(serve_until_stopped(server, args.rate, args.poisson))
    except (PortInUseError, ValueError) as exc:
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


if __name__ == "__main__":
    sys.exit(main())
