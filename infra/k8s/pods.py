"""Pod and container settings every workload of ours shares: the `restricted` Pod Security Standard,
tolerations from taint strings, and the labels that tie objects to their owner."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi_kubernetes as k8s

from infra.conventions import WORKLOAD_UID

__all__ = ["WORKLOAD_UID"]  # the uid every container of ours runs as
# Pods that serve a model carry this label: the gateway and Prometheus policies select it.
SERVING_LABEL = "slm-serving/serving"
# Pods that may reach the internet on 443 to download a model.
DOWNLOADS_LABEL = "slm-serving/downloads-models"
# On a backend's Service: its value becomes the scrape job (`slm-vllm`, `slm-onnx`), the same job
# names the VM's Prometheus uses, so one set of rules and dashboards fits both.
JOB_LABEL = "slm-serving/job"


def toleration(taint: str) -> k8s.core.v1.TolerationArgsDict:
    """A toleration for a taint written as `key=value:Effect`."""
    key_value, effect = taint.rsplit(":", 1)
    key, _, value = key_value.partition("=")
    return {"key": key, "operator": "Equal", "value": value, "effect": effect}


def tolerations(taints: Sequence[str]) -> list[k8s.core.v1.TolerationArgsDict]:
    return [toleration(t) for t in taints]


def restricted_container() -> k8s.core.v1.SecurityContextArgsDict:
    return {
        "allow_privilege_escalation": False,
        "read_only_root_filesystem": True,
        "run_as_non_root": True,
        "capabilities": {"drop": ["ALL"]},
    }


def restricted_pod(uid: int = WORKLOAD_UID) -> k8s.core.v1.PodSecurityContextArgsDict:
    return {
        "run_as_non_root": True,
        "run_as_user": uid,
        "run_as_group": uid,
        "fs_group": uid,
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


# Checks we deliberately do not meet, with the reason, as checkov reads them from an object's annotations.
SCANNER_EXCEPTIONS = {
    "CKV_K8S_15": "images are pinned by release tag or content-hash tag, so IfNotPresent never runs stale code "
    "and a restart does not re-pull gigabytes",
    "CKV_K8S_43": "upstream images are pinned by release tag; our own images by content-hash tag until the "
    "stack pushes them and references the digest",
}


def scanner_annotations() -> dict[str, str]:
    return {
        f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason) in enumerate(SCANNER_EXCEPTIONS.items(), 1)
    }
