"""The streams' names, as the state file and the metrics know them."""

from typing import Final, Literal

COMPLETED: Final = "completed"
STARTED: Final = "started"
RECONCILE: Final = "reconcile"
COUNTS: Final = "counts"
StreamName = Literal["completed", "started", "reconcile", "counts"]
