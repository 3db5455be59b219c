"""The Kubernetes provider for a cluster we did not create (`target: cluster`): a platform team's own,
or a local kind/k3d/Docker Desktop cluster. No Azure anywhere on this path."""

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s


@dataclass(frozen=True)
class ExistingClusterArgs:
    # From secret config; None reads ~/.kube/config (or $KUBECONFIG) at deploy time.
    kubeconfig: pulumi.Output[str] | None
    context: str | None


class ExistingCluster(pulumi.ComponentResource):
    provider: k8s.Provider

    def __init__(self, name: str, args: ExistingClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:k8s:ExistingCluster", name, None, opts)
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=args.kubeconfig,
            context=args.context,
            # A rotated kubeconfig must update the provider, not replace every object it manages.
            cluster_identifier=args.context or name,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({})
