"""Regenerate the vendored Kubernetes JSON schemas that kubeconform checks the chart against.

kubeconform wants one self-contained ("standalone") schema per kind, in its strict form
(additionalProperties false, so a misspelt field is an error). The PyPI package
kubernetes-validate ships the Kubernetes API's schemas per version in a "local-strict" form:
one file per kind whose $refs point into a shared _definitions.json. This script takes the few
kinds the chart renders and writes each as one file holding the definitions it needs under
$defs, its $refs rewritten to point there: the standalone-strict form, named as kubeconform's
default schema location names them ({kind}{-group}-{version}.json).

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv
    python deploy/schemas/vendor_kubernetes.py /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl

The output is committed (deploy/schemas/kubernetes/), so that validating the chart needs no
network. Run it again to add a kind or a Kubernetes version.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "kubernetes"
VERSIONS = ("v1.29.0", "v1.37.0")
KINDS = (
    "configmap-v1",
    "deployment-apps-v1",
    "persistentvolumeclaim-v1",
    "secret-v1",
    "service-v1",
    "serviceaccount-v1",
)
SHARED = "/api/_definitions.json#/$defs/"


def rewrite(node: Any, needed: set[str]) -> Any:
    """The node with shared-definition refs made local; the names referred to added to needed."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                for prefix in (SHARED, "#/$defs/"):
                    if value.startswith(prefix):
                        name = value[len(prefix) :]
                        needed.add(name)
                        value = "#/$defs/" + name
                        break
                else:
                    raise ValueError(f"unexpected $ref {value!r}")
            out[key] = rewrite(value, needed)
        return out
    if isinstance(node, list):
        return [rewrite(item, needed) for item in node]
    return node


def standalone(kind_schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    needed: set[str] = set()
    schema = rewrite(kind_schema, needed)
    schema.pop("$id", None)
    defs: dict[str, Any] = {}
    pending = sorted(needed)
    while pending:
        name = pending.pop()
        if name in defs:
            continue
        found: set[str] = set()
        defs[name] = rewrite(definitions[name], found)
        pending.extend(sorted(found - defs.keys()))
    schema["$defs"] = dict(sorted(defs.items()))
    return schema


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        root = "kubernetes_validate/kubernetes-json-schema"
        for version in VERSIONS:
            source = f"{root}/{version}-local-strict"
            definitions = json.loads(archive.read(f"{source}/_definitions.json"))["$defs"]
            target = OUT / f"{version}-standalone-strict"
            target.mkdir(parents=True, exist_ok=True)
            for kind in KINDS:
                schema = standalone(json.loads(archive.read(f"{source}/{kind}.json")), definitions)
                (target / f"{kind}.json").write_text(json.dumps(schema, indent=1) + "\n")
                print(f"{target.relative_to(HERE)}/{kind}.json")


if __name__ == "__main__":
    main(sys.argv[1])
