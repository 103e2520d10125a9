from __future__ import annotations

from pathlib import Path

import pytest

from poller.errors import ConfigError
from poller.settings import load_config, parse_duration


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("POLLER_", "GLANCE_", "KAFKA_")):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "poller.toml"
    path.write_text(text)
    return path


def test_file_then_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path,
        """
[glance]
base_url = "http://file.example:8080/"
[kafka]
bootstrap_servers = "file:9092"
linger_ms = 5
[completed]
interval = "2m"
[[partners]]
id = 7
api_key_env = "KEY_OF_7"
""",
    )
    monkeypatch.setenv("KEY_OF_7", "secret-7")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "plain:9092")
    monkeypatch.setenv("POLLER_KAFKA__LINGER_MS", "9")
    config = load_config(path)
    settings = config.settings
    assert settings.glance.base_url == "http://file.example:8080"
    assert settings.kafka.bootstrap_servers == "plain:9092"
    assert settings.kafka.linger_ms == 9
    assert settings.completed.interval == 120.0
    assert [p.id for p in config.partners] == [7]
    assert config.partners[0].api_key.get_secret_value() == "secret-7"
    assert "secret-7" not in repr(config)


def test_plain_environment_names_define_a_partner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    monkeypatch.setenv("GLANCE_PARTNER_ID", "12345")
    monkeypatch.setenv("GLANCE_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("GLANCE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("POLLER_STATE_PATH", str(tmp_path / "s.db"))
    config = load_config(None)
    assert config.partners[0].id == 12345
    assert config.partners[0].api_key.get_secret_value() == "from-file"
    assert config.settings.state.path == tmp_path / "s.db"
    assert config.secrets() == ["from-file"]


def test_every_problem_is_reported_at_once_by_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[glance]
base_url = "ftp://nope"
page_size = 5000
[completed]
interval = -3
overlap = "soon"
[kafka]
colour = "blue"
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    keys = {p.key for p in caught.value.problems}
    assert keys == {
        "glance.base_url",
        "glance.page_size",
        "completed.interval",
        "completed.overlap",
        "kafka.colour",
        "partners",
    }
    assert caught.value.exit_code == 2


def test_missing_partner_and_unreadable_key_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[partners]]\nid = 3\napi_key_file = "/nonexistent/key"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p.key for p in caught.value.problems] == ["partners[0].api_key_file"]
    with pytest.raises(ConfigError) as caught:
        load_config(None)
    assert [p.key for p in caught.value.problems] == ["partners"]


def test_missing_key_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, '[[partners]]\nid = 3\napi_key_env = "P3_KEY"\n')
    with pytest.raises(ConfigError, match=r"\$P3_KEY"):
        load_config(path)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[glance\n"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_sasl_needs_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLANCE_PARTNER_ID", "1")
    monkeypatch.setenv("GLANCE_API_KEY", "k")
    path = write(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert {p.key for p in caught.value.problems} == {
        "kafka.sasl_mechanism",
        "kafka.sasl_username",
        "kafka.sasl_password",
    }


def test_state_commands_need_no_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, '[[partners]]\nid = 3\napi_key_env = "UNSET_KEY"\n')
    assert load_config(path, need_credentials=False).partners[0].id == 3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30.0),
        (45, 45),
        ("90s", 90.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("soon")


def test_duplicate_partner_ids_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K", "key-123456")
    path = write(
        tmp_path,
        '[[partners]]\nid = 3\napi_key_env = "K"\n[[partners]]\nid = 3\napi_key_env = "K"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p.key for p in caught.value.problems] == ["partners[1].id"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[reconcile]\nbucket = "2d"\nhorizon = "1d"\n', "reconcile.bucket"),
        (
            '[reconcile]\nhorizon = "5m"\nbucket = "1m"\n[completed]\noverlap = "10m"\n',
            "reconcile.horizon",
        ),
        ('[events]\npii = "hash"\n', "events.pii_salt"),
        ('[glance]\nclock_tolerance = "0s"\n', "glance.clock_tolerance"),
        ('[glance]\nmax_window = "32d"\n', "glance.max_window"),
        ("[kafka]\nmax_request_size = 100\n", "kafka.max_request_size"),
    ],
)
def test_cross_field_and_bounded_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str
) -> None:
    monkeypatch.setenv("GLANCE_PARTNER_ID", "1")
    monkeypatch.setenv("GLANCE_API_KEY", "key-123456")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert [p.key for p in caught.value.problems] == [key]


def test_the_secrets_handed_to_the_redactor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLANCE_PARTNER_ID", "1")
    monkeypatch.setenv("GLANCE_API_KEY", "the-api-key")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "the-kafka-password")
    monkeypatch.setenv("POLLER_EVENTS__PII_SALT", "the-pii-salt")
    config = load_config(None)
    assert sorted(config.secrets()) == ["the-api-key", "the-kafka-password", "the-pii-salt"]


def test_a_bad_value_does_not_hide_a_missing_key(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[glance]\nbase_url = "nope"\n[[partners]]\nid = 4\napi_key_env = "NO_SUCH"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [p.key for p in caught.value.problems] == ["glance.base_url", "partners[0].api_key_env"]
