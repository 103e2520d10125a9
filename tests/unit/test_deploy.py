"""The Helm chart in deploy/helm/glance-poller, checked by the real tools, offline.

`helm lint` and `helm template` render the chart with several sets of values; kubeconform
checks every rendered manifest, strictly, against the Kubernetes API's JSON schemas and the
ServiceMonitor CRD's (vendored in deploy/schemas/, see the scripts there); then the tests read
the manifests for what matters to the daemon: one replica replaced with Recreate (the state is
one locked SQLite file), the probes on the served port, the non-root security context, the
state path on the claim, the API keys from the Secret, and a configuration that
glance-poller's own loader accepts, in the container's environment.

helm and kubeconform come from `make deploy-tools` (.tools/bin). A missing tool fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from poller.errors import ConfigError
from poller.settings import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "glance-poller"
SCHEMAS = ROOT / "deploy" / "schemas"
TOOLS = ROOT / ".tools" / "bin"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
RELEASE, NAMESPACE = "feed", "monitoring"
UID = 10001
# The benchmark's peak RSS target (bench/README.md): the memory request must cover it.
PEAK_RSS_TARGET_BYTES = 150 * 1000**2


def tool(name: str) -> str:
    found = TOOLS / name
    if found.is_file():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"{name} is not installed: run `make deploy-tools`", pytrace=False)
    return on_path


def run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def helm_template(tmp_path: Path, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return run(
        [
            tool("helm"),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBERNETES_VERSIONS[0],
            "--values",
            str(values_file(tmp_path, values)),
        ]
    )


def render(tmp_path: Path, values: dict[str, Any]) -> str:
    result = helm_template(tmp_path, values)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return result.stdout


def documents(manifest: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


# The value combinations every check runs on.
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "service-monitor": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}
    },
    "keys-as-files": {
        "apiKeys": {"existingSecret": "glance-keys", "mountAsFile": True},
        "partners": [
            {"id": 12345, "secretKey": "main"},
            {"id": 987654321012, "secretKey": "other"},
        ],
    },
    "keys-in-env-two-partners": {
        "apiKeys": {"existingSecret": "glance-keys"},
        "partners": [{"id": 12345, "secretKey": "main"}, {"id": 777, "secretKey": "other"}],
    },
    "own-port-and-claim": {
        "server": {"port": 9800},
        "persistence": {"existingClaim": "poller-state", "mountPath": "/data"},
        "config": {
            "glance": {"base_url": "https://glance.example.net", "page_size": 500},
            "kafka": {"bootstrap_servers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
            "completed": {"interval": "10s", "overlap": "2m"},
            "health": {"stale_after_intervals": 2.5},
            "started": {"enabled": False},
            "log": {"format": "json", "level": "debug"},
        },
    },
    "no-persistence": {"persistence": {"enabled": False}},
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp_path = tmp_path_factory.mktemp("helm")
    return {name: render(tmp_path, values) for name, values in SCENARIOS.items()}


def scenario_values(name: str) -> dict[str, Any]:
    """The chart's values.yaml with the scenario's values merged over it, as helm does."""
    merged: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(into: dict[str, Any], over: dict[str, Any]) -> None:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(merged, SCENARIOS[name])
    return merged


# -- helm lint and kubeconform -------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint_passes(scenario: str, tmp_path: Path) -> None:
    result = run(
        [
            tool("helm"),
            "lint",
            "--strict",
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBERNETES_VERSIONS[0],
            "--values",
            str(values_file(tmp_path, SCENARIOS[scenario])),
        ]
    )
    assert result.returncode == 0, f"helm lint:\n{result.stdout}\n{result.stderr}"
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def kubeconform(manifest: str, kubernetes_version: str) -> subprocess.CompletedProcess[str]:
    builtin = SCHEMAS / "kubernetes" / "{{ .NormalizedKubernetesVersion }}-standalone-strict"
    crds = SCHEMAS / "crds" / "{{ .Group }}" / "{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"
    return run(
        [
            tool("kubeconform"),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-verbose",
            "-kubernetes-version",
            kubernetes_version,
            "-schema-location",
            f"{builtin}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
            "-schema-location",
            str(crds),
            "-",
        ],
        stdin=manifest,
    )


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_manifests_follow_the_kubernetes_schemas(
    rendered: dict[str, str], scenario: str, kubernetes_version: str
) -> None:
    manifest = rendered[scenario]
    result = kubeconform(manifest, kubernetes_version)
    report = json.loads(result.stdout)
    statuses = {f"{r['kind']}/{r['name']}": r["status"] for r in report["resources"]}
    assert result.returncode == 0, f"kubeconform: {json.dumps(report['resources'], indent=1)}"
    assert set(statuses.values()) == {"statusValid"}, statuses
    # Every rendered resource was checked against a schema: none skipped for lack of one.
    assert len(statuses) == len(documents(manifest)), (statuses, kinds(documents(manifest)))


def test_kubeconform_refuses_a_misspelt_field(rendered: dict[str, str]) -> None:
    # The checks above are worth something only if the schemas can say no.
    docs = documents(rendered["service-monitor"])
    one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["scrapeTimout"] = "10s"
    result = kubeconform(yaml.safe_dump_all(docs), KUBERNETES_VERSIONS[-1])
    assert result.returncode == 1
    invalid = {r["kind"]: r["msg"] for r in json.loads(result.stdout)["resources"]}
    assert "readinesProbe" in invalid["Deployment"], invalid
    assert "scrapeTimout" in invalid["ServiceMonitor"], invalid


# -- the workload --------------------------------------------------------------------------------


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = pod_spec(docs)["containers"]
    assert isinstance(only, dict)
    return only


def env_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(docs).get("env", [])}


def mounted_volume(docs: list[dict[str, Any]], mount_path: str) -> dict[str, Any]:
    """The pod volume mounted at mount_path (the mount's fields under "mount")."""
    mounts = [m for m in container(docs)["volumeMounts"] if m["mountPath"] == mount_path]
    assert len(mounts) == 1, f"one volume should be mounted at {mount_path}: {mounts}"
    (volume,) = [v for v in pod_spec(docs)["volumes"] if v["name"] == mounts[0]["name"]]
    return {**volume, "mount": mounts[0]}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_one_replica_replaced_with_recreate(rendered: dict[str, str], scenario: str) -> None:
    deployment = one(documents(rendered[scenario]), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, (
        "a rolling update would start a second daemon on the locked state file"
    )


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_probes_ask_healthz_and_readyz_on_the_served_port(
    rendered: dict[str, str], scenario: str
) -> None:
    docs = documents(rendered[scenario])
    port = scenario_values(scenario)["server"]["port"]
    app = container(docs)
    ports = {p["name"]: p["containerPort"] for p in app["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http_get = app[probe]["httpGet"]
        assert http_get["path"] == path, f"{probe} asks {http_get['path']}"
        target = http_get["port"]
        assert ports.get(target, target) == port, f"{probe} asks port {target}, served: {port}"
    assert settings_of(docs)["server"]["port"] == port, "the daemon would serve another port"
    service = one(docs, "Service")
    (service_port,) = service["spec"]["ports"]
    assert ports[service_port["targetPort"]] == port
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items(), "the Service selects no pod"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_runs_as_a_non_root_user_with_nothing_writable_but_its_volumes(
    rendered: dict[str, str], scenario: str
) -> None:
    docs = documents(rendered[scenario])
    pod = pod_spec(docs)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == UID
    assert pod["fsGroup"] == UID, "the state volume must be writable by the daemon's group"
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    app = container(docs)["securityContext"]
    assert app["runAsNonRoot"] is True
    assert app["runAsUser"] == UID
    assert app["readOnlyRootFilesystem"] is True
    assert app["allowPrivilegeEscalation"] is False
    assert app["capabilities"] == {"drop": ["ALL"]}
    assert app["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod_spec(docs)["automountServiceAccountToken"] is False


def quantity_bytes(quantity: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?", quantity)
    assert match, f"not a memory quantity: {quantity}"
    factor = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1e3, "M": 1e6, "G": 1e9}
    return float(match.group(1)) * factor.get(match.group(2) or "", 1)


def test_resources_are_sized_from_the_benchmark(rendered: dict[str, str]) -> None:
    resources = container(documents(rendered["default"]))["resources"]
    request = quantity_bytes(resources["requests"]["memory"])
    limit = quantity_bytes(resources["limits"]["memory"])
    assert request >= PEAK_RSS_TARGET_BYTES, "the request should cover the peak RSS target"
    assert limit >= 2 * request, "the limit should leave room above the request"
    assert resources["requests"]["cpu"] == "100m"
    assert "cpu" not in resources["limits"], "a CPU limit would only throttle backfills"


# -- the state -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", "own-port-and-claim"])
def test_state_file_is_on_the_claim(rendered: dict[str, str], scenario: str) -> None:
    docs = documents(rendered[scenario])
    state_path = PurePosixPath(env_of(docs)["POLLER_STATE_PATH"]["value"])
    volume = mounted_volume(docs, str(state_path.parent))
    assert not volume["mount"].get("readOnly"), "the state directory must be writable"
    claim = volume["persistentVolumeClaim"]["claimName"]
    existing = scenario_values(scenario)["persistence"]["existingClaim"]
    claims = [doc for doc in docs if doc["kind"] == "PersistentVolumeClaim"]
    if existing:
        assert claim == existing
        assert claims == [], "an existing claim is used, not a new one"
    else:
        (pvc,) = claims
        assert pvc["metadata"]["name"] == claim
        assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep", (
            "helm uninstall should not delete the state"
        )


def test_without_persistence_the_state_is_in_an_empty_dir(rendered: dict[str, str]) -> None:
    docs = documents(rendered["no-persistence"])
    state_path = PurePosixPath(env_of(docs)["POLLER_STATE_PATH"]["value"])
    assert "emptyDir" in mounted_volume(docs, str(state_path.parent))
    assert "PersistentVolumeClaim" not in kinds(docs)


# -- configuration and keys ----------------------------------------------------------------------


def settings_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = one(docs, "ConfigMap")
    return tomllib.loads(config_map["data"]["poller.toml"])


@pytest.fixture
def container_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith(("POLLER_", "GLANCE_", "KAFKA_")):
            monkeypatch.delenv(name)
    yield monkeypatch


def load_in_container(
    docs: list[dict[str, Any]],
    secret: dict[str, str],
    root: Path,
    patch: pytest.MonkeyPatch,
) -> Config:
    """glance-poller's load_config as the container runs it: the ConfigMap and the Secret
    mounted where the pod mounts them (under root), the pod's environment set."""

    def on_host(path: str) -> Path:
        return root / path.lstrip("/")

    spec = pod_spec(docs)
    for volume in spec["volumes"]:
        mounts = [m for m in container(docs)["volumeMounts"] if m["name"] == volume["name"]]
        for mount in mounts:
            if "configMap" in volume:
                assert volume["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
                data = one(docs, "ConfigMap")["data"]
                target = on_host(mount["mountPath"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[mount["subPath"]])
            if "secret" in volume:
                assert mount.get("readOnly") is True, "the API keys should be mounted read-only"
                for key, value in secret.items():
                    target = on_host(mount["mountPath"]) / key
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(value)
            if "persistentVolumeClaim" in volume or "emptyDir" in volume:
                on_host(mount["mountPath"]).mkdir(parents=True, exist_ok=True)
    for name, entry in env_of(docs).items():
        if "value" in entry:
            value = entry["value"]
            if value.startswith("/"):
                value = str(on_host(value))
            patch.setenv(name, value)
        else:
            reference = entry["valueFrom"]["secretKeyRef"]
            patch.setenv(name, secret[reference["key"]])
    config_path = Path(os.environ["POLLER_CONFIG"])
    # Paths the configuration names are inside the container: make them the host's copies.
    mount_root = secret_mount_path(docs)
    if mount_root:
        text = config_path.read_text()
        config_path.write_text(text.replace(f'"{mount_root}/', f'"{on_host(mount_root)}/'))
    try:
        return load_config(config_path, need_credentials=True)
    except ConfigError as exc:
        pytest.fail(f"the pod's glance-poller would exit with code 2: {exc}", pytrace=False)


def secret_mount_path(docs: list[dict[str, Any]]) -> str | None:
    for volume in pod_spec(docs)["volumes"]:
        if "secret" in volume:
            (mount,) = [m for m in container(docs)["volumeMounts"] if m["name"] == volume["name"]]
            return str(mount["mountPath"])
    return None


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_configuration_is_accepted_by_glance_poller_in_the_pod(
    rendered: dict[str, str],
    scenario: str,
    tmp_path: Path,
    container_environment: pytest.MonkeyPatch,
) -> None:
    docs = documents(rendered[scenario])
    values = scenario_values(scenario)
    keys = {p["secretKey"]: f"key-of-{p['id']}-{p['secretKey']}" for p in values["partners"]}
    config = load_in_container(docs, keys, tmp_path, container_environment)
    # Each partner has its own key, read from its own entry of the Secret.
    assert {p.id: p.api_key.get_secret_value() for p in config.partners} == {
        p["id"]: keys[p["secretKey"]] for p in values["partners"]
    }
    settings = config.settings
    assert settings.server.port == values["server"]["port"]
    assert settings.server.host == "0.0.0.0", "the kubelet's probes come from outside the pod"
    state = Path(settings.state.path)
    mount = values["persistence"]["mountPath"]
    assert state == tmp_path / mount.lstrip("/") / values["persistence"]["fileName"]
    # Whatever the values' config says reaches the daemon.
    for section, entries in values["config"].items():
        model = getattr(settings, section)
        for key, value in entries.items():
            expected = getattr(type(model)(**{key: value}), key)
            assert getattr(model, key) == expected, f"config.{section}.{key}"


@pytest.mark.parametrize("scenario", ["default", "keys-in-env-two-partners"])
def test_api_keys_come_from_the_existing_secret_in_the_environment(
    rendered: dict[str, str], scenario: str
) -> None:
    docs = documents(rendered[scenario])
    values = scenario_values(scenario)
    env = env_of(docs)
    assert env["GLANCE_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": values["apiKeys"]["existingSecret"],
        "key": values["partners"][0]["secretKey"],
    }
    references = [e["valueFrom"]["secretKeyRef"] for e in env.values() if "valueFrom" in e]
    assert len(references) == len(values["partners"])
    assert {r["name"] for r in references} == {values["apiKeys"]["existingSecret"]}
    assert not any("secret" in v for v in pod_spec(docs)["volumes"]), "no key file is mounted"
    assert "Secret" not in kinds(docs), "the chart must never hold a key itself"


def test_api_keys_as_files_from_the_mounted_secret(rendered: dict[str, str]) -> None:
    docs = documents(rendered["keys-as-files"])
    values = scenario_values("keys-as-files")
    env = env_of(docs)
    mount_path = values["apiKeys"]["mountPath"]
    volume = mounted_volume(docs, mount_path)
    assert volume["secret"]["secretName"] == "glance-keys"
    assert volume["mount"]["readOnly"] is True
    first = values["partners"][0]["secretKey"]
    assert env["GLANCE_API_KEY_FILE"]["value"] == f"{mount_path}/{first}"
    assert not [e for e in env.values() if "valueFrom" in e], "no key in the environment"
    partners = settings_of(docs)["partners"]
    assert partners[1]["api_key_file"] == f"{mount_path}/{values['partners'][1]['secretKey']}"
    assert "Secret" not in kinds(docs)


def test_the_config_map_change_rolls_the_pod(tmp_path: Path) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(documents(render(tmp_path, values)), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) != checksum({"config": {"log": {"level": "debug"}}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"partners": []}, "/partners"),
        ({"partners": [{"secretKey": "k"}]}, "'id'"),
        ({"partners": [{"id": 1}]}, "'secretKey'"),
        ({"apiKeys": {"existingSecret": ""}}, "/apiKeys/existingSecret"),
        ({"server": {"port": 0}}, "/server/port"),
        ({"config": {"glance": {"tls": {"verify": True}}}}, "config.glance.tls"),
        ({"config": {"partners": [{"id": 1}]}}, "/config"),
        # Misspelt or made-up keys would otherwise be ignored without a word.
        ({"serviceMonitor": {"enable": True}}, "'enable'"),
        ({"replicaCount": 2}, "'replicaCount'"),
    ],
)
def test_values_the_daemon_cannot_run_with_are_refused(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    result = helm_template(tmp_path, values)
    assert result.returncode != 0, "helm template accepted values the daemon cannot run with"
    assert message in result.stderr, result.stderr


# -- the ServiceMonitor --------------------------------------------------------------------------


def test_service_monitor_only_when_enabled(rendered: dict[str, str]) -> None:
    assert "ServiceMonitor" not in kinds(documents(rendered["default"]))
    docs = documents(rendered["service-monitor"])
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    # A daemon that is not ready is the one whose metrics matter.
    assert service["spec"]["publishNotReadyAddresses"] is True
