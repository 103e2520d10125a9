"""A real single-node Apache Kafka broker (KRaft) on loopback, for tests, demos and benchmarks.

The official broker jars come from Maven Central (``make kafka-jars`` runs
``mvn dependency:copy-dependencies`` on ``tools/kafka/pom.xml`` into ``tools/kafka/jars``).
A broker gets free loopback ports and a throw-away data folder, is formatted with
``kafka.tools.StorageTool format`` and started with ``kafka.Kafka server.properties``.
It can be stopped (``stop``: SIGTERM, a controlled shutdown; ``kill``: SIGKILL, a crash) and
started again on the same ports and data (to test outages), and is removed at the end.

With ``sasl_users`` the broker also gets a ``SASL_PLAINTEXT`` listener that accepts PLAIN,
SCRAM-SHA-256 and SCRAM-SHA-512 for those users (to test a client's SASL settings); the
PLAINTEXT listener stays, for admin and verification.

    python tools/kafka/local_broker.py run      # start one, print its address, stop on Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_JARS = HERE / "jars"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SCRAM_ITERATIONS = 4096  # the minimum Kafka accepts for both SCRAM mechanisms
# Kept to characters that need no escaping in a JAAS option name (user_<name>), in a
# StorageTool --add-scram argument (split on "," and "=") or in SCRAM's own username encoding.
_SASL_USERNAME = re.compile(r"[A-Za-z0-9_.-]+")


class BrokerFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerFailed("no java on PATH (Kafka 4 needs Java 17 or later)")
    return found


def _check_sasl_users(users: dict[str, str]) -> None:
    if not users:
        raise ValueError("sasl_users must name at least one user")
    for name, password in users.items():
        if not _SASL_USERNAME.fullmatch(name):
            raise ValueError(f"SASL username {name!r} must match {_SASL_USERNAME.pattern}")
        # A newline would end the JAAS quoted string (and the properties line) early.
        if not password or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in password):
            raise ValueError(f"the SASL password of {name!r} is empty or has control characters")


def _jaas_quoted(value: str) -> str:
    """A JAAS option value: Kafka's JaasConfig tokenizer unescapes backslashes in quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _properties_value(value: str) -> str:
    """Escape for java.util.Properties, which Kafka loads as ISO-8859-1 with backslash escapes."""
    out = []
    for ch in value.replace("\\", "\\\\"):
        if ord(ch) < 0x80:
            out.append(ch)
        else:
            units = ch.encode("utf-16-be")
            out.extend(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
    return "".join(out)


def _scram_credential(mechanism: str, name: str, password: str) -> str:
    """A StorageTool ``--add-scram`` argument carrying the salted password, not the password.

    ``password=...`` would work too, but would put the password on a command line (visible
    in ``ps``), StorageTool echoes a malformed argument in its error, and its parser splits
    on ``,`` so such a password would not survive. SCRAM's SaltedPassword is PBKDF2 with the
    mechanism's hash (RFC 5802), which is what Kafka's ScramFormatter computes from a password.
    """
    digest = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, SCRAM_ITERATIONS)
    return (
        f"{mechanism}=[name={name},iterations={SCRAM_ITERATIONS},"
        f"salt={base64.b64encode(salt).decode()},saltedpassword={base64.b64encode(salted).decode()}]"
    )


async def _accepts_metadata(bootstrap: str) -> bool:
    import logging

    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    # Refused connections are expected while the broker boots: not worth a log line each.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.bootstrap()
        return True
    except KafkaError:
        return False
    finally:
        await client.close()


class LocalBroker:
    def __init__(
        self,
        jars: Path = DEFAULT_JARS,
        heap: str = "512m",
        sasl_users: dict[str, str] | None = None,
        workdir: Path | None = None,
    ) -> None:
        """``sasl_users`` (username -> password) adds a SASL_PLAINTEXT listener for them.

        ``properties``: broker settings that replace the defaults at the next ``start``
        (``advertised.listeners`` behind a proxy, ``auto.create.topics.enable`` off...).

        ``workdir``: a folder of the caller's for the broker's data, configuration and log,
        instead of a throw-away one; ``cleanup`` then removes the data only, so the log stays
        to be read.
        """
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise BrokerFailed(f"no Kafka jars in {jars}: run `make kafka-jars` first")
        if sasl_users is not None:
            _check_sasl_users(sasl_users)
        self.jars = jars
        self.heap = heap
        self.sasl_users = dict(sasl_users) if sasl_users is not None else None
        self._own_workdir = workdir is None
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="glance-kafka-"))
        else:
            workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = workdir
        self.port = free_port()
        self.controller_port = free_port()
        # Chosen once, like the others, so a restart on the same data keeps every address.
        self.sasl_port = free_port() if self.sasl_users is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self.properties: dict[str, str] = {}
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)."""
        if self.sasl_port is None:
            raise BrokerFailed("this broker has no SASL listener: pass sasl_users")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def _write_properties(self) -> Path:
        path = self.workdir / "server.properties"
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.sasl_port is not None:
            listeners.append(f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}")
            protocols.append("SASL_PLAINTEXT:SASL_PLAINTEXT")
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": ",".join([*listeners, f"CONTROLLER://127.0.0.1:{self.controller_port}"]),
            "advertised.listeners": ",".join(listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            **self._sasl_properties(),
            **self.properties,
        }
        path.write_text("".join(f"{k}={_properties_value(v)}\n" for k, v in lines.items()))
        return path

    def _sasl_properties(self) -> dict[str, str]:
        """The SASL listener's settings; SCRAM users live in the metadata log (see ``start``).

        PLAIN checks the passwords in its JAAS options, so they are in ``server.properties``
        (in the private work folder): Kafka does not log a ``sasl.jaas.config`` value, and
        the broker logs at WARN, where it logs no configuration values at all.
        """
        if self.sasl_users is None:
            return {}
        prefix = "listener.name.sasl_plaintext"
        plain_users = " ".join(
            f"user_{name}={_jaas_quoted(password)}" for name, password in self.sasl_users.items()
        )
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return {
            "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
            f"{prefix}.plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
            ),
            f"{prefix}.scram-sha-256.sasl.jaas.config": scram,
            f"{prefix}.scram-sha-512.sasl.jaas.config": scram,
        }

    def _format_command(self, properties: Path) -> list[str]:
        """StorageTool format; SCRAM credentials can only be seeded here, before the first start.

        (The default release version, 4.1-IV1, is past 3.5-IV2, which SCRAM in KRaft needs.)
        """
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        args = ["format", f"--cluster-id={cluster_id}", "-c", str(properties)]
        for name, password in (self.sasl_users or {}).items():
            for mechanism in SASL_MECHANISMS[1:]:
                args += ["--add-scram", _scram_credential(mechanism, name, password)]
        return self._java_command("kafka.tools.StorageTool", *args)

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
            "-Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info",
            "-cp",
            f"{self.jars}/*",
            main_class,
            *args,
        ]

    def start(self, timeout: float = 90.0) -> None:
        """Start (formatting on first start) and return once it answers metadata requests."""
        properties = self._write_properties()
        if not self._formatted:
            formatted = subprocess.run(
                self._format_command(properties),
                capture_output=True,
                text=True,
                check=False,
            )
            if formatted.returncode != 0:
                raise BrokerFailed(f"formatting the data folder failed:\n{formatted.stderr}")
            self._formatted = True
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self._java_command("kafka.Kafka", str(properties)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerFailed(f"the broker exited early:\n{self.log_tail()}")
            if asyncio.run(_accepts_metadata(self.bootstrap)):
                return
            time.sleep(0.3)
        self.stop()
        raise BrokerFailed(f"the broker did not answer within {timeout:g}s:\n{self.log_tail()}")

    def stop(self, grace: float = 20.0) -> None:
        """Stop the process, keeping the data folder (``start`` again resumes it)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no controlled shutdown), keeping its data folder."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            shutil.rmtree(self.workdir / "data", ignore_errors=True)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no broker log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--jars", type=Path, default=DEFAULT_JARS)
    parser.add_argument("--address-file", type=Path, help="write host:port here once ready")
    args = parser.parse_args()
    broker = LocalBroker(args.jars)
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        broker.start()
        print(f"kafka broker ready at {broker.bootstrap} (data in {broker.workdir})", flush=True)
        if args.address_file:
            args.address_file.write_text(broker.bootstrap)
        while not stop and broker.process is not None and broker.process.poll() is None:
            time.sleep(0.5)
    except BrokerFailed as exc:
        print(f"kafka broker failed: {exc}", file=sys.stderr)
        return 1
    finally:
        broker.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
