"""Regenerate the vendored JSON schemas of the Prometheus Operator's ServiceMonitor.

kubeconform knows only the built-in kinds; a custom resource is checked against a schema
made from its CustomResourceDefinition's openAPIV3Schema. The CRDs come from the
prometheus-operator Go API module, through controller-gen (both Go modules):

    go install sigs.k8s.io/controller-tools/cmd/controller-gen@v0.20.0
    mkdir /tmp/crdgen && cd /tmp/crdgen && go mod init crdgen
    printf 'package crdgen\\nimport _ "%s"\\n' \\
        github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1 > tools.go
    go get github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring@v0.95.2
    go mod tidy
    controller-gen crd:crdVersions=v1,allowDangerousTypes=true \\
        paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1 \\
        output:crd:dir=out
    python deploy/schemas/vendor_crds.py /tmp/crdgen/out/monitoring.coreos.com_servicemonitors.yaml

The conversion is kubeconform's own (scripts/openapi2jsonschema.py of yannh/kubeconform):
every object with properties gets additionalProperties false unless it says otherwise (the
root too, so a misspelt top-level key is an error), and int-or-string fields become
oneOf string/integer. The output is named as kubeconform's CRD schema locations name it:
crds/{group}/{kind}_{version}.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parent / "crds"


def additional_properties(node: Any) -> Any:
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            additional_properties(value)
    elif isinstance(node, list):
        for item in node:
            additional_properties(item)
    return node


def replace_int_or_string(node: Any) -> Any:
    if isinstance(node, dict):
        if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
            return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        return {key: replace_int_or_string(value) for key, value in node.items()}
    if isinstance(node, list):
        return [replace_int_or_string(item) for item in node]
    return node


def main(paths: list[str]) -> None:
    for path in paths:
        crd = yaml.safe_load(Path(path).read_text())
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = replace_int_or_string(
                additional_properties(version["schema"]["openAPIV3Schema"])
            )
            target = OUT / group / f"{kind.lower()}_{version['name']}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(schema, indent=1) + "\n")
            print(target.relative_to(OUT.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
