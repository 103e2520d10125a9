"""The command's entry point, as light as can be: a SIGTERM that arrives while the rest of the
program is still starting is a clean stop too (exit 0, not 143).

The early handler only notes the request (raising from a signal handler in the middle of an
import can crash the interpreter); the command looks at it before it starts working, and the
daemon as soon as its own handlers are in place.
"""

import signal
import sys
from types import FrameType

_requested: list[int] = []


def _note(signum: int, frame: FrameType | None) -> None:
    _requested.append(signum)


def stop_requested() -> bool:
    """Whether a SIGTERM arrived before the command's own handlers were in place."""
    return bool(_requested)


def entry() -> None:
    signal.signal(signal.SIGTERM, _note)
    from poller.cli import entry as run_command

    if stop_requested():
        sys.exit(0)
    run_command()
