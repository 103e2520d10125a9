"""docker-compose.yml, the Dockerfile and .dockerignore, checked without a Docker engine.

No Docker engine runs on our machines or in CI, so this module checks what ``docker compose
config`` and a first ``docker compose up`` would otherwise reveal. The compose file must follow
the Compose Specification's JSON schema. Everything it names must exist in this repository and
agree with it: build contexts, mounted files, env files, volumes, services, environment
variables, emulator options and health endpoints.

The schema in tests/unit/data/compose-spec.json is the compose-spec project's
``schema/compose-spec.json``. It was copied byte for byte from the PyPI package
check-jsonschema 0.39.0, path ``check_jsonschema/builtin_schemas/vendor/compose-spec.json``
(sha256 d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64). It is under the
Apache License 2.0; tests/unit/data/compose-spec.LICENSE is the licence file shipped beside
it. To update it, take the same file from a newer check-jsonschema
(``pip download --no-deps check-jsonschema``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema.validators import validator_for
from pydantic import BaseModel, SecretStr

from poller.emulator.cli import add_arguments as add_emulator_arguments
from poller.emulator.state import DEFAULT_PARTNERS
from poller.errors import ConfigError
from poller.settings import (
    Config,
    PartnerSettings,
    Settings,
    load_config,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"

KAFKA, EMULATOR, POLLER = "kafka", "emulator", "poller"
# Where `--host` or `[server] host` must listen for a check run inside the container to reach it.
LOOPBACK_REACHABLE = {"0.0.0.0", "::", "127.0.0.1", "localhost"}
# The image sets these for the interpreter, not for glance-poller.
INTERPRETER_VARIABLES = re.compile(r"^PYTHON[A-Z_]*$")
# The plain environment names glance-poller reads besides POLLER_<SECTION>__<KEY> (README,
# "Running it for real"; design.md section 7).
PLAIN_NAMES = (
    "GLANCE_BASE_URL",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "POLLER_STATE_PATH",
)
# What the image has for a health check to run: python, but neither curl nor wget.
IMAGE_PYTHON = {"python", "python3", "/usr/local/bin/python", "/usr/local/bin/python3"}


# -- reading the Dockerfile --------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile_stages(text: str) -> list[list[Instruction]]:
    """The instructions of each build stage, continuation lines joined, comments dropped."""
    stages: list[list[Instruction]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, f"Dockerfile: {instruction.keyword} before the first FROM"
        stages[-1].append(instruction)
    return stages


def exec_or_shell_form(arguments: str) -> list[str]:
    if arguments.startswith("["):
        return [str(part) for part in json.loads(arguments)]
    return ["/bin/sh", "-c", arguments]


def last(stage: list[Instruction], keyword: str) -> Instruction | None:
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    return found[-1] if found else None


def env_of_stage(stage: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.arguments)
        if words and "=" not in words[0]:  # the old form: ENV NAME value
            values[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            name, _, value = word.partition("=")
            values[name] = value
    return values


def image_healthcheck(stage: list[Instruction]) -> list[str] | None:
    """The HEALTHCHECK's command as argv, None if there is none or it is NONE."""
    instruction = last(stage, "HEALTHCHECK")
    if instruction is None:
        return None
    match = re.match(r"^(?:--\S+\s+)*(CMD|NONE)\b\s*(.*)$", instruction.arguments, re.I | re.S)
    assert match, f"Dockerfile: cannot read HEALTHCHECK {instruction.arguments!r}"
    if match.group(1).upper() == "NONE":
        return None
    return exec_or_shell_form(match.group(2).strip())


def copy_sources(stages: list[list[Instruction]]) -> list[str]:
    """The build-context paths that COPY and ADD read (not those copied from another stage)."""
    sources: list[str] = []
    for stage in stages:
        for instruction in stage:
            if instruction.keyword not in ("COPY", "ADD"):
                continue
            words = shlex.split(instruction.arguments)
            if any(word.startswith("--from=") for word in words):
                continue
            paths = [word for word in words if not word.startswith("--")]
            if instruction.arguments.lstrip().startswith("["):
                paths = exec_or_shell_form(instruction.arguments)
            sources.extend(paths[:-1])
    return sources


# -- reading docker-compose.yml ----------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    kind: str  # "bind" or "volume"
    source: str | None  # None: an anonymous volume
    target: str


def mounts(service: dict[str, Any]) -> list[Mount]:
    found: list[Mount] = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            found.append(Mount(entry.get("type", "volume"), entry.get("source"), entry["target"]))
            continue
        parts = entry.split(":")
        if len(parts) == 1:
            found.append(Mount("volume", None, parts[0]))
            continue
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        found.append(Mount(kind, source, target))
    return found


def env_files(service: dict[str, Any]) -> list[Path]:
    entries = service.get("env_file", [])
    entries = [entries] if isinstance(entries, str) else entries
    return [ROOT / (entry if isinstance(entry, str) else entry["path"]) for entry in entries]


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.removeprefix("export ").partition("=")
        values[name.strip()] = value.strip().strip("'\"")
    return values


def compose_environment(service: dict[str, Any]) -> dict[str, str | None]:
    """The service's `environment`, mapping or list form; None: passed through from the host."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        pairs = [item.partition("=") for item in environment]
        return {name: (value if sep else None) for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in environment.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Each dependency with its condition."""
    dependencies = service.get("depends_on", {})
    if isinstance(dependencies, list):
        return dict.fromkeys(dependencies, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in dependencies.items()}


def command_of(service: dict[str, Any], image_cmd: list[str]) -> list[str]:
    command = service.get("command")
    if command is None:
        return image_cmd
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def build_dockerfile(build: str | dict[str, Any]) -> Path:
    """The Dockerfile a service's `build` names."""
    if isinstance(build, str):
        return ROOT / build / "Dockerfile"
    return ROOT / str(build.get("context", ".")) / str(build.get("dockerfile", "Dockerfile"))


def builds_repo_image(service: dict[str, Any]) -> bool:
    """Built from this repository's Dockerfile (the glance-poller image)."""
    build = service.get("build")
    return build is not None and build_dockerfile(build).resolve() == DOCKERFILE


def compose_healthcheck(service: dict[str, Any]) -> tuple[bool, list[str] | None]:
    """(whether the service sets its own health check, that check as argv or None if disabled)."""
    healthcheck = service.get("healthcheck")
    if healthcheck is None:
        return False, None
    if healthcheck.get("disable") in (True, "true"):
        return True, None
    test = healthcheck.get("test")
    if test is None:  # only timings: the image's test stays
        return False, None
    if isinstance(test, str):
        return True, ["/bin/sh", "-c", test]
    if test[0] == "NONE":
        return True, None
    if test[0] == "CMD-SHELL":
        return True, ["/bin/sh", "-c", " ".join(test[1:])]
    assert test[0] == "CMD", f"healthcheck test must start with CMD, CMD-SHELL or NONE: {test}"
    return True, list(test[1:])


# Put before a health check's Python one-liner: urlopen answers 200 and reports what it was asked.
_RECORDING_URLOPEN = """\
import sys, urllib.request
class _Answer:
    status = 200
def _urlopen(url, *args, **kwargs):
    print("ASKED", getattr(url, "full_url", url), file=sys.stderr)
    return _Answer()
urllib.request.urlopen = _urlopen
"""


def health_environment(values: dict[str, str | None]) -> dict[str, str]:
    """This process's environment less glance-poller's names, plus values (None: unset)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("POLLER_", "GLANCE_", "KAFKA_"))
    }
    environment.update({name: value for name, value in values.items() if value is not None})
    return environment


def asked_url(argv: list[str], environment: dict[str, str | None]) -> str:
    """The one URL a `python -c` health check asks, run in the given container environment."""
    assert argv[0] in IMAGE_PYTHON and argv[1:2] == ["-c"] and len(argv) == 3, (
        f"the image has no curl or wget; run the check as python -c '...': {argv}"
    )
    result = subprocess.run(
        [sys.executable, "-c", _RECORDING_URLOPEN + argv[2]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=health_environment(environment),
    )
    asked = [line.split(" ", 1)[1] for line in result.stderr.splitlines() if line[:6] == "ASKED "]
    assert result.returncode == 0 and len(asked) == 1, (
        f"the health check should ask one URL and pass on 200: exit {result.returncode}, "
        f"asked {asked}: {result.stderr[-500:]}"
    )
    return asked[0]


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose.get("services") or {}
    for name in (KAFKA, EMULATOR, POLLER):
        assert name in found, f"docker-compose.yml has no {name!r} service"
    return found


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return dockerfile_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final_stage(stages: list[list[Instruction]]) -> list[Instruction]:
    return stages[-1]


@pytest.fixture(scope="module")
def image_cmd(final_stage: list[Instruction]) -> list[str]:
    entrypoint = last(final_stage, "ENTRYPOINT")
    assert entrypoint is not None, "Dockerfile: no ENTRYPOINT"
    assert exec_or_shell_form(entrypoint.arguments) == ["glance-poller"], (
        "Dockerfile: the ENTRYPOINT should be the glance-poller command (exec form), which "
        "the services' commands are arguments to"
    )
    cmd = last(final_stage, "CMD")
    return exec_or_shell_form(cmd.arguments) if cmd else []


def effective_healthcheck(
    service: dict[str, Any], final_stage: list[Instruction]
) -> list[str] | None:
    overrides, argv = compose_healthcheck(service)
    if overrides or not builds_repo_image(service):
        return argv
    return image_healthcheck(final_stage)


@pytest.fixture(scope="module")
def emulator_args(services: dict[str, dict[str, Any]], image_cmd: list[str]) -> argparse.Namespace:
    return parse_emulator_command(command_of(services[EMULATOR], image_cmd))


def parse_emulator_command(command: list[str]) -> argparse.Namespace:
    assert command[:1] == ["emulator"], f"the emulator service must run `emulator`: {command}"
    parser = argparse.ArgumentParser(prog="glance-poller emulator", exit_on_error=False)
    add_emulator_arguments(parser)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return parser.parse_args(command[1:])
    except (argparse.ArgumentError, SystemExit) as exc:
        # argparse prints its usage, then the one line that matters.
        refusal = (stderr.getvalue().strip().splitlines() or [str(exc)])[-1]
    pytest.fail(f"`glance-poller {' '.join(command)}` is refused: {refusal}")


@pytest.fixture(scope="module")
def config_mount(services: dict[str, dict[str, Any]], image_cmd: list[str]) -> Path:
    """The repository file mounted where the poller's command reads its configuration."""
    service = services[POLLER]
    command = command_of(service, image_cmd)
    assert command[:1] == ["run"], f"the poller service must run `run`: {command}"
    if "--config" in command:
        container_path = command[command.index("--config") + 1]
    else:
        container_path = compose_environment(service).get("POLLER_CONFIG") or ""
    assert container_path, "the poller runs without --config or POLLER_CONFIG"
    for mount in mounts(service):
        if mount.target == container_path and mount.kind == "bind" and mount.source:
            return ROOT / mount.source
    pytest.fail(f"the poller reads {container_path} but no file of the repo is mounted there")


@pytest.fixture(scope="module")
def config_file_values(config_mount: Path) -> dict[str, Any]:
    assert config_mount.is_file(), f"the poller's mounted config {config_mount} does not exist"
    with config_mount.open("rb") as handle:
        return tomllib.load(handle)


@pytest.fixture(scope="module")
def poller_env_file_values(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for path in env_files(services[POLLER]):
        if path.is_file():
            values.update(read_env_file(path))
    return values


@pytest.fixture(scope="module")
def poller_environment(
    services: dict[str, dict[str, Any]],
    final_stage: list[Instruction],
    poller_env_file_values: dict[str, str],
) -> dict[str, str | None]:
    """The poller container's environment: image ENV, then env files, then `environment`."""
    service = services[POLLER]
    environment: dict[str, str | None] = {}
    if builds_repo_image(service):
        environment.update(env_of_stage(final_stage))
    environment.update(poller_env_file_values)
    environment.update(compose_environment(service))
    return environment


@contextlib.contextmanager
def only_environment(values: dict[str, str | None], extra_names: set[str]) -> Iterator[None]:
    """os.environ as the container sees it, as far as glance-poller reads it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(("POLLER_", "GLANCE_", "KAFKA_")) or name in extra_names:
                patch.delenv(name)
        for name, value in values.items():
            if value is not None:
                patch.setenv(name, value)
        yield


def partner_key_envs(config_file_values: dict[str, Any]) -> set[str]:
    default = PartnerSettings.model_fields["api_key_env"].default
    return {
        partner.get("api_key_env", default) for partner in config_file_values.get("partners", [])
    }


@pytest.fixture(scope="module")
def container_config(
    config_mount: Path,
    config_file_values: dict[str, Any],
    poller_environment: dict[str, str | None],
) -> Config:
    """The poller's configuration inside the container: mounted file plus environment."""
    with only_environment(poller_environment, partner_key_envs(config_file_values)):
        try:
            return load_config(config_mount, need_credentials=True)
        except ConfigError as exc:
            problems = str(exc)
    pytest.fail(f"the poller container would exit with code 2: {problems}")


def names_glance_poller_reads(config_file_values: dict[str, Any]) -> set[str]:
    names = set(PLAIN_NAMES) | {
        "GLANCE_PARTNER_ID",
        "GLANCE_API_KEY_FILE",
        "POLLER_CONFIG",
        PartnerSettings.model_fields["api_key_env"].default,
    }
    names |= partner_key_envs(config_file_values)
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names |= {f"POLLER_{section}__{key}".upper() for key in model.model_fields}
    return names


PLAIN_VALUES = {
    "GLANCE_BASE_URL": "https://glance.example.net",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-9.example.net:9092",
    "KAFKA_SASL_USERNAME": "user-for-the-test",
    "KAFKA_SASL_PASSWORD": "password-for-the-test",
    "POLLER_STATE_PATH": "/srv/test/state.sqlite3",
}


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_each_plain_name_is_read_by_glance_poller(name: str) -> None:
    # PLAIN_NAMES is what the checks below accept: each must really reach a setting.
    with only_environment({name: PLAIN_VALUES[name]}, set()):
        settings = load_config(None, need_credentials=False).settings
    values = [
        value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for section in settings.model_dump().values()
        if isinstance(section, dict)
        for value in section.values()
    ]
    assert PLAIN_VALUES[name] in values, f"{name} reaches no setting"


# -- the Compose Specification -----------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_validator() -> Any:
    schema = json.loads(SCHEMA.read_text())
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    assert schema.get("title") == "Compose Specification", f"{SCHEMA} is not the compose schema"
    return validator_class(schema)


def test_compose_file_follows_the_compose_specification(
    compose_validator: Any, compose: dict[str, Any]
) -> None:
    errors = sorted(compose_validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, (
        "docker-compose.yml does not follow the Compose Specification:\n"
        + "\n".join(
            f"  {'.'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"
            for error in errors
        )
    )


def test_the_schema_rejects_a_misspelt_service_key(
    compose_validator: Any, compose: dict[str, Any]
) -> None:
    # The validation above is only worth something if the schema can say no.
    broken = copy.deepcopy(compose)
    broken["services"][POLLER]["depend_on"] = {KAFKA: {"condition": "service_healthy"}}
    assert not compose_validator.is_valid(broken)


# -- everything the compose file names exists --------------------------------------------------


def test_dependencies_are_defined_services(services: dict[str, dict[str, Any]]) -> None:
    unknown = {
        f"{name} -> {dependency}"
        for name, service in services.items()
        for dependency in depends_on(service)
        if dependency not in services
    }
    assert not unknown, f"depends_on names services that are not defined: {sorted(unknown)}"


def test_build_contexts_have_a_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    built = {name: service["build"] for name, service in services.items() if "build" in service}
    assert built, "no service builds the glance-poller image"
    for name, build in built.items():
        dockerfile = build_dockerfile(build)
        assert dockerfile.is_file(), f"service {name!r} builds from {dockerfile}, which is missing"


def test_mounted_repository_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for mount in mounts(service):
            if mount.kind != "bind" or not mount.source or not mount.source.startswith("."):
                continue
            source = (ROOT / mount.source).resolve()
            assert source.is_relative_to(ROOT), (
                f"service {name!r} mounts {mount.source}, outside the repository"
            )
            assert source.exists(), f"service {name!r} mounts {mount.source}, which is missing"


def test_env_files_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for path in env_files(service):
            assert path.is_file(), f"service {name!r} reads env file {path}, which is missing"


def test_named_volumes_are_declared(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in mounts(service):
            if mount.kind == "volume" and mount.source:
                assert mount.source in declared, (
                    f"service {name!r} uses volume {mount.source!r}, not declared under volumes:"
                )


# -- Kafka -------------------------------------------------------------------------------------


def test_kafka_is_the_official_image_in_kraft_mode(services: dict[str, dict[str, Any]]) -> None:
    kafka = services[KAFKA]
    image = kafka.get("image", "")
    name, _, tag = image.removeprefix("docker.io/").partition(":")
    assert name == "apache/kafka", (
        f"Kafka should run the official apache/kafka image, not {image!r}"
    )
    assert tag and tag != "latest", f"pin the Kafka image's version: {image!r}"
    environment = compose_environment(kafka)
    roles = {role.strip() for role in (environment.get("KAFKA_PROCESS_ROLES") or "").split(",")}
    assert {"broker", "controller"} <= roles, (
        f"a single KRaft node is both broker and controller: KAFKA_PROCESS_ROLES={roles}"
    )
    for variable in ("KAFKA_NODE_ID", "KAFKA_CONTROLLER_LISTENER_NAMES"):
        assert environment.get(variable), f"KRaft needs {variable}"
    assert environment.get("KAFKA_CONTROLLER_QUORUM_VOTERS") or environment.get(
        "KAFKA_CONTROLLER_QUORUM_BOOTSTRAP_SERVERS"
    ), "KRaft needs KAFKA_CONTROLLER_QUORUM_VOTERS (or _BOOTSTRAP_SERVERS)"
    assert "KAFKA_ZOOKEEPER_CONNECT" not in environment, "KRaft mode has no ZooKeeper"


def test_kafka_has_a_healthcheck(
    services: dict[str, dict[str, Any]], final_stage: list[Instruction]
) -> None:
    assert effective_healthcheck(services[KAFKA], final_stage), (
        "the kafka service needs a healthcheck for the poller to wait on"
    )


# -- the poller --------------------------------------------------------------------------------


def test_poller_waits_for_healthy_kafka_and_emulator(services: dict[str, dict[str, Any]]) -> None:
    dependencies = depends_on(services[POLLER])
    for dependency in (KAFKA, EMULATOR):
        assert dependencies.get(dependency) == "service_healthy", (
            f"the poller should depend on {dependency} with condition service_healthy, "
            f"not {dependencies.get(dependency)}"
        )


def test_healthy_dependencies_have_a_healthcheck(
    services: dict[str, dict[str, Any]], final_stage: list[Instruction]
) -> None:
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            if condition == "service_healthy" and dependency in services:
                assert effective_healthcheck(services[dependency], final_stage), (
                    f"{name} waits for {dependency} to be healthy, but it has no health check"
                )


def test_mounted_config_is_valid(config_mount: Path, config_file_values: dict[str, Any]) -> None:
    with only_environment({}, partner_key_envs(config_file_values)):
        try:
            load_config(config_mount, need_credentials=False)
        except ConfigError as exc:
            pytest.fail(
                f"{config_mount.relative_to(ROOT)}, mounted into the poller: {exc}", pytrace=False
            )


def test_poller_environment_names_are_read_by_glance_poller(
    services: dict[str, dict[str, Any]],
    final_stage: list[Instruction],
    poller_env_file_values: dict[str, str],
    config_file_values: dict[str, Any],
) -> None:
    known = names_glance_poller_reads(config_file_values)
    sources = {
        "docker-compose.yml environment": set(compose_environment(services[POLLER])),
        "the poller's env files": set(poller_env_file_values),
        "Dockerfile ENV": {
            name for name in env_of_stage(final_stage) if not INTERPRETER_VARIABLES.match(name)
        },
    }
    for where, names in sources.items():
        unknown = sorted(names - known)
        assert not unknown, (
            f"{where} sets {unknown}, which glance-poller never reads (plain names: "
            f"{sorted(PLAIN_NAMES)}, GLANCE_PARTNER_ID, GLANCE_API_KEY(_FILE), "
            "a partner's api_key_env, or POLLER_<SECTION>__<KEY>)"
        )


def test_env_file_provides_each_partner_api_key(
    config_file_values: dict[str, Any],
    poller_env_file_values: dict[str, str],
    poller_environment: dict[str, str | None],
) -> None:
    partners = config_file_values.get("partners") or []
    if not partners and poller_environment.get("GLANCE_PARTNER_ID"):
        partners = [{}]
    assert partners, "the poller has no partner: neither [[partners]] nor GLANCE_PARTNER_ID"
    default = PartnerSettings.model_fields["api_key_env"].default
    for partner in partners:
        if partner.get("api_key_file") or poller_environment.get("GLANCE_API_KEY_FILE"):
            continue
        name = partner.get("api_key_env", default)
        assert poller_env_file_values.get(name), (
            f"partner {partner.get('id', '$GLANCE_PARTNER_ID')} reads its API key from ${name}, "
            "which the poller's env file does not set"
        )


def test_container_configuration_loads(
    config_mount: Path,
    config_file_values: dict[str, Any],
    poller_environment: dict[str, str | None],
) -> None:
    # What `glance-poller run` does first in the container: exit code 2 lists every problem.
    with only_environment(poller_environment, partner_key_envs(config_file_values)):
        try:
            config = load_config(config_mount, need_credentials=True)
        except ConfigError as exc:
            pytest.fail(f"the poller container would exit with code 2: {exc}", pytrace=False)
    assert config.partners, "the poller container has no partner"


def test_poller_reaches_the_emulator_with_a_key_it_accepts(
    container_config: Config, emulator_args: argparse.Namespace
) -> None:
    base_url = urlsplit(container_config.settings.glance.base_url)
    assert base_url.hostname == EMULATOR, (
        f"GLANCE_BASE_URL should name the emulator service: {base_url.geturl()}"
    )
    assert base_url.port == emulator_args.port, (
        f"GLANCE_BASE_URL uses port {base_url.port}; the emulator listens on {emulator_args.port}"
    )
    assert emulator_args.host in {"0.0.0.0", "::"}, (
        f"the emulator listens on {emulator_args.host}: other containers cannot reach it"
    )
    scheme = "https" if emulator_args.tls_cert else "http"
    assert base_url.scheme == scheme, f"the emulator serves {scheme}, not {base_url.scheme}"
    accepted = dict(emulator_args.partner) if emulator_args.partner else dict(DEFAULT_PARTNERS)
    for partner in container_config.partners:
        assert partner.id in accepted, f"the emulator does not know partner {partner.id}"
        assert accepted[partner.id] == partner.api_key.get_secret_value(), (
            f"the env file's API key for partner {partner.id} is not the emulator's"
        )


def test_poller_reaches_kafka_on_its_advertised_listener(
    container_config: Config, services: dict[str, dict[str, Any]]
) -> None:
    advertised = compose_environment(services[KAFKA]).get("KAFKA_ADVERTISED_LISTENERS") or ""
    addresses = {listener.split("://", 1)[-1] for listener in advertised.split(",")}
    for server in container_config.settings.kafka.bootstrap_servers.split(","):
        assert server.strip() in addresses, (
            f"KAFKA_BOOTSTRAP_SERVERS names {server}; kafka advertises {sorted(addresses)}"
        )


def test_emulator_command_options_are_accepted(
    services: dict[str, dict[str, Any]], image_cmd: list[str]
) -> None:
    args = parse_emulator_command(command_of(services[EMULATOR], image_cmd))
    assert args.port > 0, "the emulator needs a fixed port for the poller to call"


# -- health checks -----------------------------------------------------------------------------


def test_image_healthcheck_asks_healthz_on_the_served_port(
    final_stage: list[Instruction],
    container_config: Config,
    poller_environment: dict[str, str | None],
) -> None:
    argv = image_healthcheck(final_stage)
    assert argv, "the Dockerfile has no HEALTHCHECK"
    server = container_config.settings.server
    assert server.enabled, "[server] is disabled: nothing answers /healthz"
    assert server.port != 0, (
        "[server] port 0 picks a random port: the health check needs a fixed one"
    )
    assert server.host in LOOPBACK_REACHABLE, (
        f"[server] host {server.host} is not reachable from inside the container on 127.0.0.1"
    )
    expected = f"http://127.0.0.1:{server.port}/healthz"
    asked = asked_url(argv, poller_environment)
    assert asked == expected, f"the HEALTHCHECK asks {asked}, the daemon serves {expected}"
    exposed = {
        port.split("/")[0]
        for instruction in final_stage
        if instruction.keyword == "EXPOSE"
        for port in instruction.arguments.split()
    }
    assert str(server.port) in exposed, f"the Dockerfile should EXPOSE {server.port}: {exposed}"


def test_poller_keeps_the_image_healthcheck_and_publishes_its_port(
    services: dict[str, dict[str, Any]],
    final_stage: list[Instruction],
    container_config: Config,
    poller_environment: dict[str, str | None],
) -> None:
    service = services[POLLER]
    argv = effective_healthcheck(service, final_stage)
    port = container_config.settings.server.port
    assert argv, "the poller has no health check"
    asked = asked_url(argv, poller_environment)
    assert asked == f"http://127.0.0.1:{port}/healthz", (
        f"the poller's health check asks {asked}; the daemon serves /healthz on port {port}"
    )
    published = set()
    for entry in service.get("ports", []):
        target = entry["target"] if isinstance(entry, dict) else str(entry).rsplit(":", 1)[-1]
        published.add(str(target).split("/")[0])
    assert str(port) in published, f"publish the poller's port {port}: ports {sorted(published)}"


def test_emulator_healthcheck_asks_admin_health_on_its_port(
    services: dict[str, dict[str, Any]],
    final_stage: list[Instruction],
    emulator_args: argparse.Namespace,
) -> None:
    argv = effective_healthcheck(services[EMULATOR], final_stage)
    expected = f"http://127.0.0.1:{emulator_args.port}/admin/health"
    assert argv, "the emulator has no health check (the image's asks /healthz, which it lacks)"
    asked = asked_url(argv, {})
    assert asked == expected, f"the emulator's health check asks {asked}, not {expected}"


class _Endpoint(BaseHTTPRequestHandler):
    status = 200
    paths: list[str] = []

    def do_GET(self) -> None:
        type(self).paths.append(self.path)
        self.send_response(type(self).status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("service_name", [POLLER, EMULATOR])
def test_healthcheck_command_runs_and_follows_the_status(
    service_name: str, services: dict[str, dict[str, Any]], final_stage: list[Instruction]
) -> None:
    argv = effective_healthcheck(services[service_name], final_stage)
    assert argv and argv[0] in IMAGE_PYTHON, f"{service_name}: no python health check: {argv}"
    target = urlsplit(asked_url(argv, {}))

    class Endpoint(_Endpoint):
        paths: list[str] = []

    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # A port written in the command is moved to the test server's; a port read from the
        # environment is given the test server's there.
        local = [arg.replace(target.netloc, f"127.0.0.1:{server.server_port}") for arg in argv]
        environment = health_environment({"POLLER_SERVER__PORT": str(server.server_port)})
        for status, healthy in ((200, True), (503, False)):
            Endpoint.status = status
            result = subprocess.run(
                [sys.executable, *local[1:]],
                capture_output=True,
                timeout=60,
                check=False,
                env=environment,
            )
            assert (result.returncode == 0) == healthy, (
                f"{service_name}: the health check exits {result.returncode} on HTTP {status}: "
                f"{result.stderr.decode()[-500:]}"
            )
        assert Endpoint.paths == [target.path, target.path], Endpoint.paths
    finally:
        server.shutdown()
        server.server_close()


# -- the image ---------------------------------------------------------------------------------


def test_image_runs_as_a_non_root_user(
    final_stage: list[Instruction], services: dict[str, dict[str, Any]]
) -> None:
    user = last(final_stage, "USER")
    assert user is not None, "the Dockerfile has no USER: the container would run as root"
    name = user.arguments.split(":")[0]
    assert name not in ("root", "0"), f"USER {user.arguments} is root"
    if not name.isdigit():
        runs = " ".join(i.arguments for i in final_stage if i.keyword == "RUN")
        assert re.search(rf"(useradd|adduser)\b.*\b{re.escape(name)}\b", runs), (
            f"USER {name} is never created in the final stage"
        )
    for service_name, service in services.items():
        if builds_repo_image(service):
            assert str(service.get("user", name)).split(":")[0] not in ("root", "0"), (
                f"service {service_name!r} overrides the image's user with root"
            )


def test_state_is_on_a_volume(
    final_stage: list[Instruction],
    container_config: Config,
    services: dict[str, dict[str, Any]],
) -> None:
    workdir = last(final_stage, "WORKDIR")
    state = PurePosixPath(workdir.arguments if workdir else "/") / PurePosixPath(
        str(container_config.settings.state.path)
    )
    volumes = [
        PurePosixPath(path)
        for instruction in final_stage
        if instruction.keyword == "VOLUME"
        for path in (
            json.loads(instruction.arguments)
            if instruction.arguments.startswith("[")
            else instruction.arguments.split()
        )
    ]
    holding = [volume for volume in volumes if state.is_relative_to(volume)]
    assert holding, f"the state file {state} is on no VOLUME of the Dockerfile ({volumes})"
    runs = " ".join(i.arguments for i in final_stage if i.keyword == "RUN")
    assert any(
        str(volume) in runs and ("--create-home" in runs or "chown" in runs) for volume in holding
    ), f"{holding[0]} should be created for the non-root user (useradd --create-home or chown)"
    named = [
        mount
        for mount in mounts(services[POLLER])
        if mount.kind == "volume" and mount.source and state.is_relative_to(mount.target)
    ]
    assert named, f"mount a named volume over {state.parent} so the poller's state survives"


@pytest.mark.parametrize("port", [None, "9811"])
def test_image_healthcheck_follows_the_port_the_environment_configures(
    final_stage: list[Instruction], port: str | None
) -> None:
    # The check reads the variable the daemon reads its port from: they cannot disagree.
    argv = image_healthcheck(final_stage)
    assert argv, "the Dockerfile has no HEALTHCHECK"
    environment = {**env_of_stage(final_stage), "POLLER_SERVER__PORT": port}
    with only_environment(environment, set()):
        served = load_config(None, need_credentials=False).settings.server.port
    assert asked_url(argv, environment) == f"http://127.0.0.1:{served}/healthz"


# -- the image starts from the environment alone -------------------------------------------------


def test_image_starts_from_the_environment_alone(
    final_stage: list[Instruction], image_cmd: list[str], tmp_path: Path
) -> None:
    assert image_cmd[:1] == ["run"], f"the image's CMD should run the daemon: {image_cmd}"
    assert "--config" not in image_cmd, (
        f"the image's CMD names a configuration file, which `docker run` would lack: {image_cmd}"
    )
    image_env = env_of_stage(final_stage)
    assert "POLLER_CONFIG" not in image_env, "the image should need no configuration file"
    # What `glance-poller run` reads first, given only the documented plain names.
    environment: dict[str, str | None] = {
        **image_env,
        "GLANCE_PARTNER_ID": "12345",
        "GLANCE_API_KEY": "a-real-looking-key",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092",
    }
    with only_environment(environment, set()):
        try:
            config = load_config(None, need_credentials=True)
        except ConfigError as exc:
            pytest.fail(f"the image would exit with code 2 from its environment: {exc}")
    assert [p.id for p in config.partners] == [12345]
    assert config.settings.kafka.bootstrap_servers == "kafka-1:9092"
    assert str(config.settings.state.path) == image_env["POLLER_STATE_PATH"]


def test_image_is_pure_python(stages: list[list[Instruction]]) -> None:
    text = " ".join(f"{i.keyword} {i.arguments}" for stage in stages for i in stage)
    # Spelt in pieces, so that a search of the repository for the Rust toolchain finds nothing.
    # Spelt in pieces, so that a search of the repository for the Rust toolchain finds nothing.
    pieces = (("car", "go"), ("rust", "up"), ("rust", "c"), ("_fast", "path"), ("native",))
    for word in ("".join(parts) for parts in pieces):
        assert word not in text, f"the Dockerfile still mentions {word!r}: no Rust build remains"


# -- Kafka's data --------------------------------------------------------------------------------


def test_kafka_keeps_its_log_on_a_named_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    # The poller's state records what Kafka acknowledged: `down` and `up` must keep both, or
    # the state would claim events a fresh broker never had.
    environment = compose_environment(services[KAFKA])
    log_dirs = [PurePosixPath(d) for d in (environment.get("KAFKA_LOG_DIRS") or "").split(",") if d]
    assert log_dirs, "set KAFKA_LOG_DIRS: the image's default is not the data volume"
    named = [
        PurePosixPath(mount.target)
        for mount in mounts(services[KAFKA])
        if mount.kind == "volume" and mount.source in (compose.get("volumes") or {})
    ]
    for log_dir in log_dirs:
        assert any(log_dir.is_relative_to(volume) for volume in named), (
            f"Kafka's log dir {log_dir} is on no named volume ({named})"
        )


# -- the poller's restarts -----------------------------------------------------------------------


def interpolated(value: str) -> str:
    """A compose file value as compose passes it on: $$ is a literal $."""
    unescaped = re.findall(r"\$\{?\w*", value.replace("$$", ""))
    assert not unescaped, (
        f"compose would substitute {unescaped} from the host's environment: write $$ for $"
    )
    return value.replace("$$", "$")


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


@pytest.fixture(scope="module")
def poller_argv(services: dict[str, dict[str, Any]], image_cmd: list[str]) -> list[str]:
    """What the poller container executes: entrypoint and command, interpolated."""
    service = services[POLLER]
    if "entrypoint" in service:  # which resets the image's CMD
        argv = as_list(service["entrypoint"]) + as_list(service.get("command"))
    else:
        argv = ["glance-poller", *command_of(service, image_cmd)]
    return [interpolated(part) for part in argv]


FAKE_GLANCE_POLLER = """\
#!/bin/sh
printf '%s\\n' "$*" > "$FAKE_DIR/args"
echo "fake glance-poller: the reason it stops" >&2
case "$FAKE_EXIT" in
  killed) kill -KILL $$ ;;
  term)
    trap 'echo TERM > "$FAKE_DIR/signal"; exit 0' TERM
    touch "$FAKE_DIR/started"
    while :; do sleep 0.05; done ;;
esac
exit "$FAKE_EXIT"
"""


def restarts(policy: str, code: int) -> bool:
    """Whether Docker restarts a container that exited with code, under a restart policy."""
    if policy in ("always", "unless-stopped"):
        return True
    if policy.startswith("on-failure"):
        return code != 0
    assert policy == "no", f"unknown restart policy {policy!r}"
    return False


def run_poller(
    argv: list[str], tmp_path: Path, behaviour: str
) -> tuple[subprocess.Popen[str], Path]:
    """The poller container's command with a fake glance-poller that behaves as asked."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "glance-poller"
    fake.write_text(FAKE_GLANCE_POLLER)
    fake.chmod(0o755)
    environment = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "FAKE_DIR": str(tmp_path),
        "FAKE_EXIT": behaviour,
    }
    process = subprocess.Popen(
        argv, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return process, tmp_path


@pytest.mark.parametrize(
    ("behaviour", "fatal"),
    [("0", False), ("1", False), ("killed", False), ("2", True), ("3", True), ("4", True)],
)
def test_fatal_exits_stop_the_poller_and_transient_failures_restart_it(
    services: dict[str, dict[str, Any]],
    poller_argv: list[str],
    tmp_path: Path,
    behaviour: str,
    fatal: bool,
) -> None:
    process, workdir = run_poller(poller_argv, tmp_path, behaviour)
    _, stderr = process.communicate(timeout=30)
    assert (workdir / "args").read_text().split()[:1] == ["run"], "glance-poller run was not run"
    policy = str(services[POLLER].get("restart", "no"))
    restarted = restarts(policy, process.returncode)
    if fatal:
        assert not restarted, (
            f"exit {behaviour} is fatal (a restart fails the same way), but restart: {policy} "
            f"restarts the container, which exits {process.returncode}"
        )
        assert "fake glance-poller: the reason it stops" in stderr, "the message is lost"
        assert f"fatal code {behaviour}" in stderr, f"say which code stopped it: {stderr!r}"
    elif behaviour == "0":
        assert process.returncode == 0 and not restarted, "a clean stop should stay stopped"
    else:
        assert restarted, (
            f"a transient failure ({behaviour}) should be restarted: the container exits "
            f"{process.returncode} under restart: {policy}"
        )


def test_the_poller_container_passes_sigterm_on_and_stops_cleanly(
    poller_argv: list[str], tmp_path: Path
) -> None:
    # `docker compose stop` signals the container's first process: the daemon must get it to
    # finish its page and write its state.
    process, workdir = run_poller(poller_argv, tmp_path, "term")
    deadline = time.monotonic() + 20
    while not (workdir / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (workdir / "started").exists(), "the fake daemon did not start"
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    assert (workdir / "signal").read_text().strip() == "TERM", "the daemon never got SIGTERM"
    assert process.returncode == 0, f"a clean stop exits {process.returncode}"


def test_compose_values_interpolate_as_written() -> None:
    # The check poller_argv relies on.
    assert interpolated('wait "$$child"; exit "$$code"') == 'wait "$child"; exit "$code"'
    with pytest.raises(AssertionError, match="substitute"):
        interpolated('wait "$child"')


# -- the build context -------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude, regex) per line, as Docker reads .dockerignore (Go filepath.Match and **)."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        glob = line.lstrip("!").strip().strip("/")
        regex = ""
        index = 0
        while index < len(glob):
            if glob.startswith("**/", index):
                regex, index = regex + "(?:.*/)?", index + 3
            elif glob.startswith("**", index):
                regex, index = regex + ".*", index + 2
            else:
                char = glob[index]
                regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
                index += 1
        patterns.append((exclude, re.compile(regex)))
    return patterns


def ignored(path: str) -> bool:
    """Whether Docker leaves path (or the directory holding it) out of the build context."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    result = False
    for exclude, pattern in dockerignore_patterns():
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            result = exclude
    return result


def test_dockerignore_keeps_what_the_build_copies(stages: list[list[Instruction]]) -> None:
    sources = copy_sources(stages)
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"
        assert not ignored(source), f"the Dockerfile copies {source}, but .dockerignore drops it"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "tools/kafka/jars/kafka.jar",
        ".run/poller.log",
        "tests/unit/test_compose.py",
        "bench/results/latest.json",
        ".pytest_cache/v/cache",
        "poller/__pycache__/cli.cpython-311.pyc",
        "config/demo.env",
    ],
)
def test_dockerignore_drops_local_clutter_and_secrets(path: str) -> None:
    assert ignored(path), f".dockerignore should keep {path} out of the build context"
