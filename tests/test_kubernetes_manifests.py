"""Rendered Kubernetes objects validate against the official schemas (offline)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from offline import recording
from tests.conftest import run_stack

# The minor version AKS runs in prod (Pulumi.prod.yaml: aks.kubernetesVersion).
KUBERNETES_VERSION = "1.33"


@pytest.mark.parametrize("stack", ["prod", "local"])
def test_objects_validate(stack: str) -> None:
    rec = run_stack(stack)
    # Custom resources have their own schemas (tests/test_serving_manifests.py).
    core = (
        "kubernetes:core/",
        "kubernetes:apps/",
        "kubernetes:batch/",
        "kubernetes:policy/",
        "kubernetes:networking.k8s.io/",
    )
    objects = [r for r in rec.resources if r.type.startswith(core) and r.custom]
    assert len(objects) > 10
    for reg in objects:
        manifest: dict[str, Any] = recording.redact(reg.inputs)
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_validation_is_live() -> None:
    bad = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labelz": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_workload_namespace_enforces_restricted_pods() -> None:
    labels = run_stack("local").one("kubernetes:core/v1:Namespace", "slm-local-ns").plain["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
