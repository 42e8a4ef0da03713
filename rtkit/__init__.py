"""rtkit: helpers for teaching real-time APIs in Jupyter.

Start the in-kernel server from a notebook cell with top-level ``await``::

    import rtkit
    server = await rtkit.start()      # http://127.0.0.1:8765/
    await rtkit.stop()
"""

from .auth import TokenAuth
from .echo import WELCOME, echo, echo_reply
from .logs import install_log_buffer, recent_logs
from .origins import check_origin
from .server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    Handshake,
    PortInUseError,
    Server,
    default_port,
    describe_close,
    running_servers,
    start,
    stop,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "WELCOME",
    "Handshake",
    "PortInUseError",
    "Server",
    "TokenAuth",
    "check_origin",
    "default_port",
    "describe_close",
    "echo",
    "echo_reply",
    "recent_logs",
    "running_servers",
    "start",
    "stop",
]

__version__ = "0.1.0"

# Keep rtkit's log lines from the first import on, so recent_logs() and the
# control panel show them instead of stderr under whichever cell ran last.
install_log_buffer()
