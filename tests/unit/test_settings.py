from __future__ import annotations

import os
from pathlib import Path

import pytest

from poller.errors import ConfigError
from poller.settings import GlanceSettings, load_config, parse_duration


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


# Every problem by its key and what it says


def problems_of(path: Path | None, **kwargs: bool) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, **kwargs)
    return {p.key: p.message for p in caught.value.problems}


def test_a_missing_or_unreadable_or_invalid_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert problems_of(missing, need_credentials=False) == {"--config": f"no such file: {missing}"}
    bad = write(tmp_path, "[glance\n")
    assert problems_of(bad, need_credentials=False)["--config"].startswith(
        f"{bad} is not valid TOML: "
    )
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    # Found by an adversary: a folder was an IsADirectoryError traceback, exit 1.
    assert problems_of(folder, need_credentials=False) == {
        "--config": f"cannot read {folder}: Is a directory"
    }
    locked = write(tmp_path, "")
    locked.chmod(0)
    try:
        if not os.access(locked, os.R_OK):
            assert problems_of(locked, need_credentials=False) == {
                "--config": f"cannot read {locked}: permission denied"
            }
    finally:
        locked.chmod(0o600)


def test_a_key_file_is_read_stripped_and_refused_when_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key"
    key.write_text("  the-key \n")
    path = write(tmp_path, f'[[partners]]\nid = 3\napi_key_file = "{key}"\n')
    config = load_config(path)
    assert config.partners[0].api_key.get_secret_value() == "the-key"
    key.write_text(" \n")
    assert problems_of(path) == {"partners[0].api_key_file": f"{key} is empty"}
    key.unlink()
    message = problems_of(path)["partners[0].api_key_file"]
    assert message.startswith(f"cannot read {key}: ") and "No such file" in message


MiB = 1 << 20
KiB = 1 << 10


def test_a_config_file_larger_than_a_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    """Found by an adversary: `--config /dev/zero` was read without limit (the machine's
    memory, then OOM). The cap is checked on a regular file just over it."""
    path = tmp_path / "poller.toml"
    path.write_bytes(b"#" + b"x" * (MiB - 2) + b"\n")  # a comment, exactly at the cap
    assert load_config(path, need_credentials=False).source == path
    path.write_bytes(b"#" + b"x" * (MiB - 1) + b"\n")
    assert problems_of(path, need_credentials=False) == {
        "--config": f"{path} is larger than 1 MiB: not a glance-poller configuration"
    }


def test_a_config_file_not_in_utf8_is_named_without_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "poller.toml"
    path.write_bytes(b'[glance]\nbase_url = "http://h\xe9.example"\n')
    assert problems_of(path, need_credentials=False) == {
        "--config": f"{path} is not UTF-8 text (byte 29 is not UTF-8)"
    }


@pytest.mark.parametrize("named_by", ["api_key_file", "GLANCE_API_KEY_FILE"])
def test_a_key_file_larger_than_64_kibibytes_is_refused_without_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named_by: str
) -> None:
    key = tmp_path / "key"
    if named_by == "api_key_file":
        path = write(tmp_path, f'[[partners]]\nid = 3\napi_key_file = "{key}"\n')
    else:
        path = write(tmp_path, "[[partners]]\nid = 3\n")
        monkeypatch.setenv("GLANCE_API_KEY_FILE", str(key))
    key.write_bytes(b"k" * (64 * KiB))
    assert load_config(path).partners[0].api_key.get_secret_value() == "k" * (64 * KiB)
    key.write_bytes(b"k" * (64 * KiB + 1))
    assert problems_of(path) == {
        "partners[0].api_key_file": f"{key} is larger than 64 KiB: not an API key"
    }


def test_a_key_file_saved_with_a_byte_order_mark_or_not_as_utf8_is_said_without_its_bytes(
    tmp_path: Path,
) -> None:
    """Notepad's UTF-8 starts with a byte order mark, which is not part of the key; a Latin-1
    or UTF-16 file is named with the first byte that is not UTF-8, and never shown."""
    key = tmp_path / "key"
    key.write_bytes("\ufeffthe-key\r\n".encode())
    path = write(tmp_path, f'[[partners]]\nid = 3\napi_key_file = "{key}"\n')
    assert load_config(path).partners[0].api_key.get_secret_value() == "the-key"
    key.write_bytes("the-k\xe9y".encode("latin-1"))
    assert problems_of(path) == {
        "partners[0].api_key_file": f"{key} is not UTF-8 text (byte 5 is not UTF-8); "
        "save the key as UTF-8"
    }


def test_the_key_file_variable_stands_for_every_partner_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key"
    key.write_text("file-key\n")
    monkeypatch.setenv("GLANCE_API_KEY_FILE", str(key))
    monkeypatch.setenv("GLANCE_API_KEY", "env-key")
    config = load_config(write(tmp_path, "[[partners]]\nid = 3\n"))
    assert config.partners[0].api_key.get_secret_value() == "file-key"
    monkeypatch.setenv("GLANCE_API_KEY_FILE", "")
    config = load_config(write(tmp_path, "[[partners]]\nid = 3\n"))
    assert config.partners[0].api_key.get_secret_value() == "env-key"


def test_a_key_in_the_environment_is_stripped_and_a_blank_one_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[[partners]]\nid = 3\napi_key_env = "K3"\n')
    monkeypatch.setenv("K3", "  key-3 ")
    assert load_config(path).partners[0].api_key.get_secret_value() == "key-3"
    monkeypatch.setenv("K3", "   ")
    assert problems_of(path) == {
        "partners[0].api_key_env": "partner 3: set the API key in $K3 (or point api_key_file "
        "/ GLANCE_API_KEY_FILE at a file holding it)"
    }


def test_a_ca_file_must_be_a_pem_bundle_that_is_used(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    path = write(tmp_path, f'[glance]\nca_file = "{missing}"\n')
    assert problems_of(path, need_credentials=False) == {
        "glance.ca_file": f"no such file: {missing}"
    }
    missing.write_text("not a certificate")
    assert problems_of(path, need_credentials=False)["glance.ca_file"].startswith(
        "not a PEM CA bundle: "
    )
    import trustme

    trustme.CA().cert_pem.write_to_path(str(missing))
    assert load_config(path, need_credentials=False).settings.glance.ca_file == missing
    ignored = write(tmp_path, f'[glance]\nca_file = "{missing}"\nverify_tls = false\n')
    assert problems_of(ignored, need_credentials=False) == {
        "glance.ca_file": "is set but glance.verify_tls = false ignores it"
    }


def test_sasl_needs_each_of_its_settings_and_ssl_files_must_exist(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\n'
        f'ssl_cafile = "{tmp_path / "ca"}"\nssl_keyfile = "{tmp_path / "key"}"\n',
    )
    assert problems_of(path, need_credentials=False) == {
        "kafka.sasl_username": "required with SASL_SSL",
        "kafka.sasl_password": "required with SASL_SSL",
        "kafka.ssl_cafile": f"no such file: {tmp_path / 'ca'}",
        "kafka.ssl_keyfile": f"no such file: {tmp_path / 'key'}",
    }
    (tmp_path / "cert").write_text("x")
    plain = write(tmp_path, f'[kafka]\nssl_certfile = "{tmp_path / "cert"}"\n')
    assert load_config(plain, need_credentials=False).settings.kafka.ssl_certfile is not None


@pytest.mark.parametrize(
    "url", ["ftp://host", "http://", "host:80", "https:///path", "file:///etc/passwd"]
)
def test_only_an_http_url_with_a_host_is_a_base_url(tmp_path: Path, url: str) -> None:
    path = write(tmp_path, f'[glance]\nbase_url = "{url}"\n')
    assert (
        f"not an http(s) URL: {url!r}"
        in problems_of(path, need_credentials=False)["glance.base_url"]
    )


def test_a_base_url_loses_its_trailing_slashes(tmp_path: Path) -> None:
    path = write(tmp_path, '[glance]\nbase_url = "https://h.example/api//"\n')
    assert load_config(path, need_credentials=False).settings.glance.base_url == (
        "https://h.example/api"
    )


def test_a_bad_value_with_partners_reports_their_keys_and_no_no_partner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        "[kafka]\nlinger_ms = -1\n"
        '[[partners]]\nid = 3\napi_key_env = "K3"\n[[partners]]\nid = "x"\n'
        '[[partners]]\nid = 5\napi_key_env = "K5"\n',
    )
    found = problems_of(path)
    assert set(found) == {
        "kafka.linger_ms",
        "partners[1].id",
        "partners[0].api_key_env",
        "partners[2].api_key_env",
    }
    assert set(problems_of(path, need_credentials=False)) == {"kafka.linger_ms", "partners[1].id"}
    monkeypatch.setenv("GLANCE_PARTNER_ID", "9")
    monkeypatch.setenv("GLANCE_API_KEY", "k")
    assert set(problems_of(write(tmp_path, "[kafka]\nlinger_ms = -1\n"))) == {"kafka.linger_ms"}


def test_a_bad_value_and_no_partner_says_both(tmp_path: Path) -> None:
    path = write(tmp_path, "[kafka]\nlinger_ms = -1\n")
    found = problems_of(path)
    assert found["partners"] == ("no partner configured: set GLANCE_PARTNER_ID or [[partners]]")
    assert set(found) == {"kafka.linger_ms", "partners"}
    assert set(problems_of(path, need_credentials=False)) == {"kafka.linger_ms"}
    bad_list = write(tmp_path, "partners = 3\n")
    assert "partners" in problems_of(bad_list)


def test_a_partner_from_the_environment_replaces_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLANCE_PARTNER_ID", "9")
    monkeypatch.setenv("GLANCE_API_KEY", "k")
    config = load_config(write(tmp_path, "[[partners]]\nid = 3\n"))
    assert [p.id for p in config.partners] == [9]


@pytest.mark.parametrize(
    ("toml", "key", "message"),
    [
        ('[reconcile]\nbucket = "2d"\nhorizon = "1d"\n', "reconcile.bucket", "must not be"),
        (
            '[reconcile]\nhorizon = "5m"\n[completed]\noverlap = "5m"\n',
            "reconcile.horizon",
            "must be longer than completed.overlap",
        ),
        ('[events]\npii = "hash"\n', "events.pii_salt", "required when events.pii = 'hash'"),
    ],
)
def test_settings_that_contradict_each_other_are_refused(
    tmp_path: Path, toml: str, key: str, message: str
) -> None:
    found = problems_of(write(tmp_path, toml), need_credentials=False)
    assert key in found and found[key].startswith(message)


def test_equal_bucket_and_horizon_are_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, '[reconcile]\nbucket = "1d"\nhorizon = "1d"\n')
    assert load_config(path, need_credentials=False).settings.reconcile.bucket == 86400.0


def test_the_answer_cap_follows_the_page_size_unless_set() -> None:
    assert GlanceSettings().answer_cap() == 8 << 20
    assert GlanceSettings(page_size=1000).answer_cap() == 8 << 20
    assert GlanceSettings(page_size=1000, max_answer_bytes=2048).answer_cap() == 2048
    assert GlanceSettings(max_answer_bytes=1024).answer_cap() == 1024


def test_plain_environment_names_are_used_only_when_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GLANCE_BASE_URL", "")
    monkeypatch.setenv("POLLER_STATE_PATH", str(tmp_path / "s.db"))
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "user")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pass-word")
    settings = load_config(None, need_credentials=False).settings
    assert settings.glance.base_url == "https://www.glance.net"
    assert settings.state.path == tmp_path / "s.db"
    assert settings.kafka.sasl_username == "user"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "pass-word"
    assert load_config(None, need_credentials=False).partners == ()


def test_partners_without_credentials_have_empty_keys_and_unique_ids(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[[partners]]\nid = 3\n[[partners]]\nid = 4\n")
    config = load_config(path, need_credentials=False)
    assert [(p.id, p.api_key.get_secret_value()) for p in config.partners] == [(3, ""), (4, "")]
    twice = write(tmp_path, "[[partners]]\nid = 3\n[[partners]]\nid = 3\n")
    assert problems_of(twice, need_credentials=False) == {"partners[1].id": "duplicate id 3"}


def test_an_empty_salt_is_no_salt_for_the_hash_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example shows `pii_salt = ""`: uncommented with pii = "hash", it must be refused
    # here (exit code 2, by key), not when the daemon builds its first partner.
    written = write(tmp_path, '[events]\npii = "hash"\npii_salt = ""\n')
    assert problems_of(written, need_credentials=False) == {
        "events.pii_salt": "required when events.pii = 'hash'"
    }
    monkeypatch.setenv("POLLER_EVENTS__PII", "hash")
    monkeypatch.setenv("POLLER_EVENTS__PII_SALT", "")
    assert problems_of(None, need_credentials=False) == {
        "events.pii_salt": "required when events.pii = 'hash'"
    }
    monkeypatch.setenv("POLLER_EVENTS__PII_SALT", "pepper-123")
    assert load_config(None, need_credentials=False).secrets() == ["pepper-123"]


def test_a_config_file_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads any file: the refusal a non-root daemon would meet is made on demand."""
    path = write(tmp_path, "")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patched:
        patched.setattr(Path, "open", denied)
        with pytest.raises(ConfigError) as caught:
            load_config(path, need_credentials=False)
    assert [(p.key, p.message) for p in caught.value.problems] == [
        ("--config", f"cannot read {path}: permission denied")
    ]
    assert caught.value.exit_code == 2


def test_a_base_url_keeps_everything_but_its_trailing_slashes(tmp_path: Path) -> None:
    path = write(tmp_path, '[glance]\nbase_url = "https://h.example/region/PHX/"\n')
    assert load_config(path, need_credentials=False).settings.glance.base_url == (
        "https://h.example/region/PHX"
    )


def test_an_unknown_section_or_key_is_named_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, "[Xtra]\na = 1\n[kafka]\nXlinger = 1\n")
    assert set(problems_of(path, need_credentials=False)) == {"Xtra", "kafka.Xlinger"}


def test_a_listed_partner_that_is_invalid_is_not_called_missing(tmp_path: Path) -> None:
    path = write(tmp_path, '[[partners]]\nid = "x"\n')
    assert set(problems_of(path)) == {"partners[0].id"}
    assert problems_of(None) == {
        "partners": "no partner configured: set GLANCE_PARTNER_ID or [[partners]]"
    }


def test_the_config_says_which_file_it_was_read_from(tmp_path: Path) -> None:
    path = write(tmp_path, "[[partners]]\nid = 3\n")
    assert load_config(path, need_credentials=False).source == path
    assert load_config(None, need_credentials=False).source is None


@pytest.mark.parametrize("partner_id", ["9223372036854775808", "99999999999999999999"])
def test_a_partner_id_the_state_cannot_hold_is_refused(
    partner_id: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Partner ids are stored as SQLite integers (signed 64 bits): refused by key, not a crash
    # on the first commit.
    monkeypatch.setenv("GLANCE_PARTNER_ID", partner_id)
    monkeypatch.setenv("GLANCE_API_KEY", "a-key-of-some-length")
    monkeypatch.setenv("POLLER_STATE_PATH", str(tmp_path / "s.db"))
    with pytest.raises(ConfigError) as caught:
        load_config(None)
    assert any(problem.key.startswith("partners") for problem in caught.value.problems)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("name", ["POLLER_COMPLETE__INTERVAL", "POLLER_KAFAK__SASL_PASSWORD"])
def test_a_variable_for_a_section_that_does_not_exist_is_refused_by_name(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A misspelled section was silently ignored (its setting not applied), while a misspelled
    # key under a real section was refused. The value is never echoed: it may be a secret.
    monkeypatch.setenv("GLANCE_PARTNER_ID", "12345")
    monkeypatch.setenv("GLANCE_API_KEY", "a-key-of-some-length")
    monkeypatch.setenv("POLLER_STATE_PATH", str(tmp_path / "s.db"))
    monkeypatch.setenv(name, "secret-looking-value")
    with pytest.raises(ConfigError) as caught:
        load_config(None)
    (problem,) = caught.value.problems
    assert problem.key == name and "secret-looking-value" not in str(caught.value)
    section = name.removeprefix("POLLER_").partition("__")[0].lower()
    assert problem.message.startswith(f"no section {section!r}: the sections are glance, ")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "name", ["bad topic name!", "", ".", "..", "a" * 250, "glance/session", "sessions\u00e9"]
)
def test_a_topic_name_kafka_cannot_hold_is_a_configuration_error(tmp_path: Path, name: str) -> None:
    """Found by an adversary: "bad topic name!" passed both checks, then the daemon retried
    the topic for ever while /readyz blamed Kafka."""
    path = write(tmp_path, f'[topics]\ncompleted = "{name}"\n')
    assert "not a Kafka topic name" in problems_of(path, need_credentials=False)["topics.completed"]


def test_topic_names_kafka_takes_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path, '[topics]\ncompleted = "glance.Session_completed-2"\n')
    topics = load_config(path, need_credentials=False).settings.topics
    assert topics.completed == "glance.Session_completed-2"


@pytest.mark.parametrize(
    "servers", ["127.0.0.1:notaport", "host", "host:0", "host:65536", "a:9092,,b:9092", ":9092"]
)
def test_bootstrap_servers_must_each_be_a_host_and_port(tmp_path: Path, servers: str) -> None:
    path = write(tmp_path, f'[kafka]\nbootstrap_servers = "{servers}"\n')
    assert "host:port" in problems_of(path, need_credentials=False)["kafka.bootstrap_servers"]


def test_bootstrap_servers_with_hosts_and_ports_are_kept(tmp_path: Path) -> None:
    servers = "broker-1.example:9092, 10.0.0.7:19092,[::1]:9093,lowest:1,highest:65535"
    path = write(tmp_path, f'[kafka]\nbootstrap_servers = "{servers}"\n')
    assert load_config(path, need_credentials=False).settings.kafka.bootstrap_servers == servers
