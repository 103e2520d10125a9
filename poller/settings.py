"""Typed, validated, frozen configuration: the only reader of config files and environment.

Precedence, highest first: ``POLLER_<SECTION>__<KEY>`` environment variables, the plain
environment names of design.md §7 (``GLANCE_BASE_URL``, ``KAFKA_BOOTSTRAP_SERVERS``...), the
TOML file, the defaults below. Every problem is reported at once, by key (exit code 2).
"""

from __future__ import annotations

import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from poller.cursor import MAX_STORED_INT
from poller.errors import ConfigError, ConfigProblem

# pydantic-settings' message for a variable it could not parse names the field.
_SETTINGS_FIELD = re.compile(r'field "([a-z_]+)"')
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """Accept a number of seconds or a string such as ``"90s"``, ``"5m"``, ``"24h"``, ``"1d"``."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use seconds, or e.g. 30s, 5m, 24h, 1d)")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value.rstrip("/")


# Kafka's own rule (kafka.common.internals.Topic): a name it cannot hold would be retried
# for ever at the first event, with readiness blaming Kafka.
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _topic_name(value: str) -> str:
    if not _TOPIC_NAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"not a Kafka topic name: {value!r} (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"
        )
    return value


_SERVER = re.compile(r"(\[[0-9a-fA-F:.]+\]|[^\s:,\[\]]+):(\d{1,5})")


def _bootstrap_servers(value: str) -> str:
    for server in value.split(","):
        address = _SERVER.fullmatch(server.strip())
        if address is None or not 0 < int(address.group(2)) <= 65535:
            raise ValueError(f"{server.strip()!r} is not host:port (a comma-separated list)")
    return value


TopicName = Annotated[str, AfterValidator(_topic_name)]
BootstrapServers = Annotated[str, AfterValidator(_bootstrap_servers)]

# No duration the daemon knows is longer than a year: a bound keeps every date computed
# from one inside what a datetime can hold (a configuration error, never an OverflowError).
MAX_DURATION = 366 * 86400.0
Seconds = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=MAX_DURATION)]
NonNegativeSeconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=MAX_DURATION)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GlanceSettings(_Section):
    base_url: HttpUrl = "https://www.glance.net"
    request_timeout: Seconds = 30.0
    verify_tls: bool = True
    # A CA bundle to verify the service's certificate with, instead of the system's.
    ca_file: Path | None = None
    page_size: int = Field(default=1000, ge=1, le=1000)
    # Upper bound on one request's range; the API refuses more than 31 days.
    max_window: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=31 * 86400.0)] = (
        31 * 86400.0
    )
    # An answer larger than this is a retriable fault (unset: 8 MiB, room for a page with a
    # session of ten thousand guests, while a parsed answer stays near 70 MB).
    max_answer_bytes: int | None = Field(default=None, ge=1024)
    # Upstream's Date is trusted within this of the host clock, and bounded by it beyond.
    clock_tolerance: Annotated[
        float, BeforeValidator(parse_duration), Field(gt=0, le=100 * 365 * 86400.0)
    ] = 300.0

    def answer_cap(self) -> int:
        if self.max_answer_bytes is not None:
            return self.max_answer_bytes
        return 8 << 20


class PartnerSettings(_Section):
    id: int = Field(gt=0, le=MAX_STORED_INT)
    # The key is never written inline: it comes from an environment variable or a file.
    api_key_env: str = "GLANCE_API_KEY"
    api_key_file: Path | None = None


class KafkaSettings(_Section):
    bootstrap_servers: BootstrapServers = "localhost:9092"
    client_id: str = "glance-poller"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    linger_ms: int = Field(default=20, ge=0)
    max_batch_size: int = Field(default=262144, ge=1024)
    # The largest request (so the largest event) the producer sends; larger events go to the
    # dead-letter topic, cut to fit. Keep it at most the brokers' message.max.bytes.
    max_request_size: int = Field(default=1048576, ge=16384)
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    request_timeout_ms: int = Field(default=30000, ge=1000)


class TopicSettings(_Section):
    completed: TopicName = "glance.session.completed"
    started: TopicName = "glance.session.started"
    counts: TopicName = "glance.session.counts"
    dlq: TopicName = "glance.dlq"


class CompletedStreamSettings(_Section):
    interval: Seconds = 30.0
    # Re-read this much before the cursor on every scan: sessions that end just after a
    # scan covered their start are picked up by the next one.
    overlap: NonNegativeSeconds = 300.0
    # Where the very first scan starts when there is no state yet.
    start_lookback: NonNegativeSeconds = 3600.0
    # A tick ends after this many pages (the scan resumes at once in the next tick), so a
    # large backlog still logs progress and yields to the other streams.
    max_pages_per_tick: int = Field(default=100, ge=1)


class ReconcileSettings(_Section):
    enabled: bool = True
    interval: Seconds = 300.0
    bucket: Seconds = 3600.0
    # Sessions are reconciled (and their ids kept) this long after they start; a session
    # still open when its start leaves the horizon is reported, not delivered.
    horizon: Seconds = 86400.0


class StartedStreamSettings(_Section):
    enabled: bool = True
    interval: Seconds = 30.0
    # Unconfirmed upstream name: if the service does not know it, the stream turns itself
    # off with one warning and the others keep running.
    operation: str = "PartnerActiveSessions"
    # A listing of open sessions reads at most this many pages (a nextId that never ends
    # would hold the partner's state); one cut short is not trusted to narrow the scan.
    max_pages_per_tick: int = Field(default=100, ge=1)


class CountsStreamSettings(_Section):
    enabled: bool = True
    interval: Seconds = 300.0


class StateSettings(_Section):
    path: Path = Path("glance-poller-state.sqlite3")


class RetrySettings(_Section):
    initial_delay: Seconds = 0.5
    max_delay: Seconds = 30.0
    # A Retry-After larger than this is shortened to it.
    max_retry_after: Seconds = 300.0
    # Attempts of one call within a tick; the tick then fails and the next tick starts over.
    max_attempts: int = Field(default=6, ge=1)


class EventSettings(_Section):
    pii: Literal["keep", "hash", "drop"] = "keep"
    pii_salt: SecretStr | None = None


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ServerSettings(_Section):
    # /metrics, /healthz and /readyz on one port; port 0 picks a free one.
    enabled: bool = True
    host: str = "0.0.0.0"  # noqa: S104 - scraped from outside the container by design
    port: int = Field(default=9720, ge=0, le=65535)


class HealthSettings(_Section):
    # A stream is not ready after this many failed ticks in a row...
    failed_ticks: int = Field(default=1, ge=1)
    # ...or when its last successful tick is older than this many intervals (plus a minute).
    stale_after_intervals: float = Field(default=3.0, gt=0)
    # How often Kafka is asked for metadata when no batch has been acknowledged meanwhile,
    # and how long it may stay silent before /readyz says so.
    broker_check_interval: Seconds = 10.0
    broker_max_silence: Seconds = 60.0


class ServiceSettings(_Section):
    # SIGTERM: finish the page in flight, flush, write state; give up waiting after this.
    shutdown_timeout: Seconds = 20.0
    # Each partner's first ticks start after a random delay up to this, so that several
    # partners do not call upstream in lockstep.
    start_jitter: NonNegativeSeconds = 5.0


class BackfillSettings(_Section):
    # Windows of the range fetched at once: the most upstream calls in flight. Lowered by
    # itself while the service refuses calls for load (429/503), raised again slowly.
    concurrency: int = Field(default=4, ge=1, le=16)


class _PlainEnvironmentNames(PydanticBaseSettingsSource):
    """The short environment names of design.md §7, mapped onto their keys."""

    NAMES: Mapping[str, tuple[str, str]] = {
        "GLANCE_BASE_URL": ("glance", "base_url"),
        "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
        "KAFKA_SASL_USERNAME": ("kafka", "sasl_username"),
        "KAFKA_SASL_PASSWORD": ("kafka", "sasl_password"),
        "POLLER_STATE_PATH": ("state", "path"),
    }

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden: values are nested, not per field

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, (section, key) in self.NAMES.items():
            if os.environ.get(name):
                values.setdefault(section, {})[key] = os.environ[name]
        partner_id = os.environ.get("GLANCE_PARTNER_ID")
        if partner_id:
            values["partners"] = [{"id": partner_id}]
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix="POLLER_", env_nested_delimiter="__"
    )

    glance: GlanceSettings = GlanceSettings()
    partners: list[PartnerSettings] = []  # pydantic copies it; a factory costs 40 ms at import
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    completed: CompletedStreamSettings = CompletedStreamSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    started: StartedStreamSettings = StartedStreamSettings()
    counts: CountsStreamSettings = CountsStreamSettings()
    state: StateSettings = StateSettings()
    retry: RetrySettings = RetrySettings()
    events: EventSettings = EventSettings()
    log: LogSettings = LogSettings()
    server: ServerSettings = ServerSettings()
    health: HealthSettings = HealthSettings()
    service: ServiceSettings = ServiceSettings()
    backfill: BackfillSettings = BackfillSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init kwargs: it ranks below every environment name.
        return (env_settings, _PlainEnvironmentNames(settings_cls), init_settings)


@dataclass(frozen=True)
class Partner:
    """A partner with its API key resolved; the key stays a SecretStr everywhere."""

    id: int
    api_key: SecretStr


@dataclass(frozen=True)
class Config:
    settings: Settings
    partners: tuple[Partner, ...]
    source: Path | None

    def secrets(self) -> list[str]:
        """Every secret value, for the log redactor."""
        found = [p.api_key.get_secret_value() for p in self.partners]
        for secret in (self.settings.kafka.sasl_password, self.settings.events.pii_salt):
            if secret is not None:
                found.append(secret.get_secret_value())
        return [s for s in found if s]


# The most read of a file the configuration names: one that never ends (/dev/zero, a log named
# by mistake) is refused by its key, the rest of it unread, instead of taking the memory.
CONFIG_MAX_BYTES = 1 << 20
KEY_FILE_MAX_BYTES = 64 << 10


class _TooLarge(Exception):
    def __init__(self, path: Path, cap: int) -> None:
        size = f"{cap >> 20} MiB" if cap >= 1 << 20 else f"{cap >> 10} KiB"
        super().__init__(f"{path} is larger than {size}")


def _read_capped(path: Path, cap: int) -> bytes:
    """The whole file, or _TooLarge when it holds more than ``cap`` bytes (OSError as is)."""
    with path.open("rb") as handle:
        data = handle.read(cap + 1)
    if len(data) > cap:
        raise _TooLarge(path, cap)
    return data


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Said without the bytes: in a key file, they are the key."""
    return f"{path} is not UTF-8 text (byte {exc.start} is not UTF-8)"


def _read_toml(path: Path, problems: list[ConfigProblem]) -> dict[str, Any]:
    try:
        return tomllib.loads(_read_capped(path, CONFIG_MAX_BYTES).decode())
    except FileNotFoundError:
        problems.append(ConfigProblem("--config", f"no such file: {path}"))
    except PermissionError:
        problems.append(ConfigProblem("--config", f"cannot read {path}: permission denied"))
    except OSError as exc:  # a folder, an I/O error: said as the key file's are
        problems.append(ConfigProblem("--config", f"cannot read {path}: {exc.strerror}"))
    except _TooLarge as exc:
        problems.append(ConfigProblem("--config", f"{exc}: not a glance-poller configuration"))
    except UnicodeDecodeError as exc:
        problems.append(ConfigProblem("--config", _not_utf8(path, exc)))
    except tomllib.TOMLDecodeError as exc:
        problems.append(ConfigProblem("--config", f"{path} is not valid TOML: {exc}"))
    return {}


def _resolve_key(partner: PartnerSettings, index: int, problems: list[ConfigProblem]) -> str:
    key_path = f"partners[{index}]"
    key_file = partner.api_key_file
    if key_file is None and os.environ.get("GLANCE_API_KEY_FILE"):
        key_file = Path(os.environ["GLANCE_API_KEY_FILE"])
    if key_file is not None:
        try:
            value = _read_capped(key_file, KEY_FILE_MAX_BYTES).decode("utf-8-sig").strip()
        except OSError as exc:
            problems.append(
                ConfigProblem(f"{key_path}.api_key_file", f"cannot read {key_file}: {exc.strerror}")
            )
            return ""
        except _TooLarge as exc:
            problems.append(ConfigProblem(f"{key_path}.api_key_file", f"{exc}: not an API key"))
            return ""
        except UnicodeDecodeError as exc:
            # Said without the bytes: they are the key. A UTF-16 file (Windows PowerShell's
            # `echo key > file`) or a Latin-1 editor's no-break space end here.
            problems.append(
                ConfigProblem(
                    f"{key_path}.api_key_file",
                    f"{_not_utf8(key_file, exc)}; save the key as UTF-8",
                )
            )
            return ""
        if not value:
            problems.append(ConfigProblem(f"{key_path}.api_key_file", f"{key_file} is empty"))
        return value
    value = os.environ.get(partner.api_key_env, "").strip()
    if not value:
        problems.append(
            ConfigProblem(
                f"{key_path}.api_key_env",
                f"partner {partner.id}: set the API key in ${partner.api_key_env} "
                "(or point api_key_file / GLANCE_API_KEY_FILE at a file holding it)",
            )
        )
    return value


def _check_files(settings: Settings, problems: list[ConfigProblem]) -> None:
    ca_file = settings.glance.ca_file
    if ca_file is None:
        return
    if not ca_file.is_file():
        problems.append(ConfigProblem("glance.ca_file", f"no such file: {ca_file}"))
        return
    try:
        ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        problems.append(ConfigProblem("glance.ca_file", f"not a PEM CA bundle: {exc}"))
    if not settings.glance.verify_tls:
        problems.append(
            ConfigProblem("glance.ca_file", "is set but glance.verify_tls = false ignores it")
        )


def _check_kafka_security(kafka: KafkaSettings, problems: list[ConfigProblem]) -> None:
    if kafka.security_protocol.startswith("SASL"):
        for key in ("sasl_mechanism", "sasl_username", "sasl_password"):
            if getattr(kafka, key) is None:
                problems.append(
                    ConfigProblem(f"kafka.{key}", f"required with {kafka.security_protocol}")
                )
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(kafka, key)
        if path is not None and not Path(path).is_file():
            problems.append(ConfigProblem(f"kafka.{key}", f"no such file: {path}"))


NO_PARTNER = "no partner configured: set GLANCE_PARTNER_ID or [[partners]]"


def _partners_anyway(file_values: dict[str, Any]) -> list[tuple[int, PartnerSettings]]:
    """The partners that validate on their own, when the whole configuration did not."""
    listed: Any = file_values.get("partners")
    if os.environ.get("GLANCE_PARTNER_ID"):
        listed = [{"id": os.environ["GLANCE_PARTNER_ID"]}]
    found = []
    for index, raw in enumerate(listed if isinstance(listed, list) else []):
        try:
            found.append((index, PartnerSettings.model_validate(raw)))
        except ValidationError:
            continue  # already reported by the whole configuration's validation
    return found


# POLLER_ variables that are not a setting of a section: the configuration file's name, and
# design.md's short name of state.path.
_OTHER_POLLER_NAMES = frozenset({"POLLER_CONFIG", *_PlainEnvironmentNames.NAMES})


def _check_environment_names(problems: list[ConfigProblem]) -> None:
    """POLLER_<SECTION>__<KEY> names whose section does not exist: pydantic-settings reads
    only the sections it knows, so a misspelled one was silently not applied. (A wrong key
    under a real section is already refused.) Named, never quoted: the value may be a secret."""
    for name in sorted(os.environ):
        if not name.startswith("POLLER_") or name in _OTHER_POLLER_NAMES:
            continue
        section = name.removeprefix("POLLER_").partition("__")[0].lower()
        if section not in Settings.model_fields:
            problems.append(
                ConfigProblem(
                    name,
                    f"no section {section!r}: the sections are {', '.join(Settings.model_fields)}",
                )
            )


def load_config(path: Path | None, *, need_credentials: bool = True) -> Config:
    """Read, validate and resolve everything, or raise one ConfigError listing every problem.

    ``need_credentials=False`` is for commands that never call upstream (``state``, ``tail``).
    """
    problems: list[ConfigProblem] = []
    _check_environment_names(problems)
    file_values = _read_toml(path, problems) if path is not None else {}
    try:
        settings = Settings(**file_values)
    except SettingsError as exc:
        # A POLLER_<SECTION> variable that is not JSON. Its value is not repeated (it may
        # hold a password), nor the parser's message, which quotes it.
        field = _SETTINGS_FIELD.search(str(exc))
        name = f"POLLER_{field.group(1).upper()}" if field else "a POLLER_ variable"
        problems.append(ConfigProblem(name, "is not a JSON object; give the section as JSON"))
        raise ConfigError(problems) from None
    except ValidationError as exc:
        for error in exc.errors():
            key = "".join(
                f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
            ).lstrip(".")
            problems.append(ConfigProblem(key, error["msg"]))
        # One bad value must not hide the others: the partners' keys are still checked.
        if need_credentials:
            found = _partners_anyway(file_values)
            for index, listed in found:
                _resolve_key(listed, index, problems)
            if not found and not any(p.key.startswith("partners") for p in problems):
                problems.append(ConfigProblem("partners", NO_PARTNER))
        raise ConfigError(problems) from None
    if need_credentials and not settings.partners:
        problems.append(ConfigProblem("partners", NO_PARTNER))
    seen: set[int] = set()
    partners: list[Partner] = []
    for index, partner in enumerate(settings.partners):
        if partner.id in seen:
            problems.append(ConfigProblem(f"partners[{index}].id", f"duplicate id {partner.id}"))
        seen.add(partner.id)
        key = _resolve_key(partner, index, problems) if need_credentials else ""
        partners.append(Partner(partner.id, SecretStr(key)))
    _check_kafka_security(settings.kafka, problems)
    _check_files(settings, problems)
    reconcile = settings.reconcile
    if reconcile.bucket > reconcile.horizon:
        problems.append(ConfigProblem("reconcile.bucket", "must not be longer than the horizon"))
    if reconcile.horizon <= settings.completed.overlap:
        problems.append(ConfigProblem("reconcile.horizon", "must be longer than completed.overlap"))
    salt = settings.events.pii_salt
    if settings.events.pii == "hash" and (salt is None or not salt.get_secret_value()):
        problems.append(ConfigProblem("events.pii_salt", "required when events.pii = 'hash'"))
    if problems:
        raise ConfigError(problems)
    return Config(settings=settings, partners=tuple(partners), source=path)
