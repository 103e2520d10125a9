"""The error taxonomy of design.md §6: every failure the daemon knows is one of these.

Where an error is decided (retriable, fatal, bad record) is the only place that knows the
upstream's or the broker's quirks; everything downstream reacts to the class alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_AUTH = 3
EXIT_STATE = 4
EXIT_KAFKA_AUTH = 5


class PollerError(Exception):
    """Base of every error the daemon raises on purpose."""

    exit_code = EXIT_FAILURE


@dataclass(frozen=True)
class ConfigProblem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(PollerError):
    """The configuration is invalid; raised before anything connects anywhere."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


class StateError(PollerError):
    """The state file cannot be used; it is never silently replaced."""

    exit_code = EXIT_STATE

    RECOVER = (
        "inspect it with `glance-poller state show`, or start over with "
        "`glance-poller state reset` (which re-reads history)"
    )

    def __init__(self, path: str, problem: str, way_out: str = RECOVER) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"state file {path} {problem}: {way_out}")


class StateUnwritable(PollerError):
    """The state file cannot take a write now (its volume is full, an I/O error): weather, not
    damage. The tick fails and is retried; the events of its page are sent again, with the same
    ids, once a commit gets through."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(
            f"state file {path} cannot be written ({reason}): free space on its volume"
        )


class CursorInFuture(PollerError):
    """A stored cursor lies beyond the host clock (plus the tolerance): scanning from there
    would skip every session until then. Every tick fails, loudly, until it is moved back."""

    def __init__(self, partner_id: int, stream: str, scanned_until: str) -> None:
        self.reason = "cursor_in_future"
        super().__init__(
            f"the {stream} cursor lies in the future ({scanned_until}): nothing would be "
            f"delivered until then; move it back with `glance-poller state reset --partner "
            f"{partner_id} --to DATE` (stop the daemon first)"
        )


class UpstreamError(PollerError):
    """Something went wrong talking to the Glance Activity Service."""


class RetriableUpstreamError(UpstreamError):
    """A transient failure: the call is worth repeating after a backoff.

    ``reason`` is a short, bounded label (it becomes a metric label), never free text.
    """

    def __init__(self, reason: str, detail: str, *, retry_after: float | None = None) -> None:
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{reason}: {detail}")


class AuthenticationFailed(UpstreamError):
    """Wrong apiKey or unknown partnerId: retrying cannot help."""

    exit_code = EXIT_AUTH

    def __init__(self, partner_id: int, message: str) -> None:
        self.partner_id = partner_id
        super().__init__(
            f"partner {partner_id}: the Glance Activity Service rejected the credentials "
            f"({message}); check the partner id and its API key"
        )


class UpstreamMisconfigured(UpstreamError):
    """The service answered in a way that only a wrong ``glance.base_url`` explains (a
    redirect): fatal, since following it could hand the API key to another host."""

    exit_code = EXIT_CONFIG

    def __init__(self, partner_id: int, detail: str) -> None:
        self.partner_id = partner_id
        super().__init__(f"glance.base_url: {detail}")


class UnknownOperation(UpstreamError):
    """The service does not offer this web method (e.g. an unconfirmed operation name)."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        super().__init__(f"the service has no web method {operation!r}")


class BadRecord(PollerError):
    """One upstream record that cannot become an event; it goes to the dead-letter topic."""

    def __init__(self, reason: str, record: Any) -> None:
        self.reason = reason
        self.record = record
        super().__init__(reason)


class KafkaAuthFailed(PollerError):
    """Kafka refused the credentials or the permissions: retrying cannot help."""

    exit_code = EXIT_KAFKA_AUTH

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"Kafka refused the daemon's credentials or permissions ({detail}); check "
            "kafka.sasl_username / KAFKA_SASL_PASSWORD and the topics' ACLs"
        )


class PublishFailed(PollerError):
    """Kafka did not acknowledge every event of a batch; the batch is retried as a whole."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.retry_after: float | None = None
        super().__init__(f"{reason}: {detail}")
