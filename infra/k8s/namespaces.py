"""The namespace the workloads live in, under the `restricted` Pod Security Standard."""

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

WORKLOAD_NAMESPACE = "slm-serving"


@dataclass(frozen=True)
class WorkloadNamespaceArgs:
    provider: k8s.Provider
    labels: Mapping[str, str]
    name: str = WORKLOAD_NAMESPACE


class WorkloadNamespace(pulumi.ComponentResource):
    name: pulumi.Output[str]

    def __init__(self, name: str, args: WorkloadNamespaceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:WorkloadNamespace", name, None, opts)
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={
                "name": args.name,
                "labels": {
                    **args.labels,
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider),
        )
        self.name = namespace.metadata.apply(lambda m: m.name or args.name)
        self.register_outputs({"name": self.name})
