"""The command's entry point, as light as can be: a SIGTERM that arrives while the rest of the
program is still being imported is a clean stop too (exit 0, not 143)."""

import signal
import sys
from types import FrameType


class StopRequested(BaseException):
    """SIGTERM before the daemon's own handler is in place: stop as cleanly as it would."""


def _early_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested


def entry() -> None:
    signal.signal(signal.SIGTERM, _early_stop)
    try:
        from poller.cli import entry as run_command
    except StopRequested:
        sys.exit(0)
    run_command()
