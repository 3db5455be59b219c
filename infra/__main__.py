"""The slm-serving Pulumi program: read the config, build the target's platform, run the workloads
on it (Kubernetes targets), export the endpoints.

`pulumi up` runs this file with sys.path[0] set to infra/ itself (DESIGN: known facts); the project
root goes first instead, so `infra.*` imports resolve and infra/azure never shadows another package.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = _ROOT
elif _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def main() -> None:
    # Imported here, once the project root is on the path.
    import pulumi

    from infra import config
    from infra.endpoints import export_endpoints
    from infra.k8s.workloads import workloads
    from infra.tags import stack_tags
    from infra.targets import aks, cluster, vm

    cfg = config.load()
    s = cfg.settings
    pulumi.export("target", s.target)
    build = {"aks": aks.build, "vm": vm.build, "cluster": cluster.build}[s.target]
    platform = build(cfg, stack_tags(s, cfg.project, cfg.stack))
    if platform.cluster is not None:
        endpoints = workloads(cfg, platform.cluster)
    else:
        assert platform.endpoints is not None, f"target {s.target} returned neither a cluster nor endpoints"
        endpoints = platform.endpoints
    export_endpoints(s, endpoints)


main()
