"""Run infra/ the way `pulumi up` does, without the engine: cwd is the project root, config arrives
in PULUMI_CONFIG, sys.path[0] is the main folder itself (the project root is NOT on the path), and
the program runs through runpy.run_path(main, run_name="__main__"). Prints what was registered.

Deliberately self-contained: importing anything from the project here would hide the import problem
this exists to catch.
"""

import asyncio
import base64
import json
import os
import runpy
import sys
from pathlib import Path

from pulumi.runtime import mocks, settings
from pulumi.runtime.stack import run_in_stack

ROOT = Path.cwd()
MAIN = ROOT / "infra"
KUBECONFIG = base64.b64encode(b"apiVersion: v1\nkind: Config\nusers: []\n").decode()


class Mocks(mocks.Mocks):
    def __init__(self) -> None:
        self.registered: list[str] = []

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str, dict]:
        self.registered.append(args.typ)
        return "", dict(args.inputs)

    def call(self, args: mocks.MockCallArgs) -> tuple[dict, list]:
        ids = "00000000-0000-0000-0000-000000000000"
        answers = {
            "azure-native:authorization:getClientConfig": {
                "clientId": ids,
                "objectId": ids,
                "subscriptionId": ids,
                "tenantId": ids,
            },
            "azure-native:containerservice:listManagedClusterUserCredentials": {
                "kubeconfigs": [{"name": "clusterUser", "value": KUBECONFIG}]
            },
        }
        return answers[args.token], []


def main() -> int:
    if str(ROOT) in sys.path or "" in sys.path:
        print("project root is on sys.path: this would not test what pulumi does", file=sys.stderr)
        return 3
    sys.path[0] = str(MAIN)
    stack = os.environ["PULUMI_STACK"]
    the_mocks = Mocks()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    # Preview of a new stack, the first thing a user runs: provider-computed outputs are unknown.
    mocks.set_mocks(the_mocks, project="slm-serving", stack=stack, preview=True)
    settings.ROOT.set(None)
    exports: dict[str, object] = {}

    def program() -> None:
        runpy.run_path(str(MAIN), run_name="__main__")
        root = settings.get_root_resource()
        exports.update(getattr(root, "outputs", {}) or {})

    loop.run_until_complete(run_in_stack(program))
    print(json.dumps({"resources": len(the_mocks.registered), "exports": sorted(exports)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
