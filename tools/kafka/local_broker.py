"""A real single-node Apache Kafka broker (KRaft) on loopback, for tests, demos and benchmarks.

The official broker jars come from Maven Central (``make kafka-jars`` runs
``mvn dependency:copy-dependencies`` on ``tools/kafka/pom.xml`` into ``tools/kafka/jars``).
A broker gets free loopback ports and a throw-away data folder, is formatted with
``kafka.tools.StorageTool format`` and started with ``kafka.Kafka server.properties``.
It can be stopped and started again on the same data (to test outages), and is removed
at the end.

    python tools/kafka/local_broker.py run      # start one, print its address, stop on Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
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
    def __init__(self, jars: Path = DEFAULT_JARS, heap: str = "512m") -> None:
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise BrokerFailed(f"no Kafka jars in {jars}: run `make kafka-jars` first")
        self.jars = jars
        self.heap = heap
        self.workdir = Path(tempfile.mkdtemp(prefix="glance-kafka-"))
        self.port = free_port()
        self.controller_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def _write_properties(self) -> Path:
        path = self.workdir / "server.properties"
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
        }
        path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
        return path

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
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            formatted = subprocess.run(
                self._java_command(
                    "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(properties)
                ),
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

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

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
