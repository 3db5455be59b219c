"""A recording mock engine: runs the Pulumi program with no CLI, no cloud and no cluster.

It captures every resource registration with its type, name, inputs, parent and options (the mock
monitor alone keeps none of the options), the stack exports, and URNs registered twice (which the
stock mock monitor silently accepts). Used by `offline.render` and by the tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import runpy
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.settings import reset_options
from pulumi.runtime.stack import run_in_stack

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROGRAM = PROJECT_ROOT / "infra"

_SIG = "4dabf18193072939515e22adb298388d"
_SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # noqa: S105 (Pulumi's wire signature)
_RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"

SUBSCRIPTION_ID = "00000000-0000-0000-0000-000000000000"
TENANT_ID = "11111111-1111-1111-1111-111111111111"
DEPLOYER_OBJECT_ID = "22222222-2222-2222-2222-222222222222"


@dataclass(frozen=True)
class Secret:
    """A value the program marked secret."""

    value: Any


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()


def _convert(value: Any) -> Any:
    """Wire form (JSON of the protobuf struct) -> Python, keeping secrets and unknowns visible."""
    if isinstance(value, dict):
        sig = value.get(_SIG)
        if sig == _SECRET_SIG:
            return Secret(_convert(value.get("value")))
        if sig == _RESOURCE_SIG:
            return value.get("urn")
        return {k: _convert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_convert(v) for v in value]
    if value == rpc.UNKNOWN:
        return UNKNOWN
    # The wire has only doubles; integral ones were ints in the program (replicas, ports, ids).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def unwrap(value: Any) -> Any:
    """Drop the Secret wrappers (for assertions on content)."""
    if isinstance(value, Secret):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def redact(value: Any, placeholder: str = "[secret]") -> Any:
    """Replace every secret with a placeholder and every unknown with a visible marker."""
    if isinstance(value, Secret):
        # Keep the shape (keys of a secret map) so the render still validates as a manifest.
        inner = value.value
        if isinstance(inner, dict):
            return {k: placeholder for k in inner}
        return placeholder
    if value is UNKNOWN:
        return "(known after apply)"
    if isinstance(value, dict):
        return {k: redact(v, placeholder) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, placeholder) for v in value]
    return value


def contains_secret(value: Any) -> bool:
    if isinstance(value, Secret):
        return True
    if isinstance(value, dict):
        return any(contains_secret(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_secret(v) for v in value)
    return False


@dataclass
class Registration:
    urn: str
    type: str
    name: str
    inputs: dict[str, Any]
    parent: str
    provider: str
    custom: bool
    protect: bool
    delete_before_replace: bool
    replace_on_changes: list[str]
    ignore_changes: list[str]
    additional_secret_outputs: list[str]
    depends_on: list[str]

    @property
    def plain(self) -> dict[str, Any]:
        """Inputs with secrets unwrapped."""
        return unwrap(self.inputs)


@dataclass
class Recording:
    stack: str
    preview: bool
    resources: list[Registration] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    exports: dict[str, Any] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name_contains: str = "") -> Registration:
        """The single resource of a type (optionally whose name contains a string); fails otherwise."""
        found = [r for r in self.of_type(type_) if name_contains in r.name]
        if len(found) != 1:
            names = [r.name for r in self.of_type(type_)]
            raise AssertionError(f"expected one {type_} named *{name_contains}*, found {len(found)}: {names}")
        return found[0]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.resources:
            counts[r.type] = counts.get(r.type, 0) + 1
        return dict(sorted(counts.items()))


def _fake_id(reg: Registration) -> str:
    digest = hashlib.sha256(reg.urn.encode()).hexdigest()[:8]
    return f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/mock/providers/{reg.type}/{reg.name}-{digest}"


def fake_kubeconfig(cluster: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster, "cluster": {"server": f"https://{cluster}.hcp.example.test:443"}}],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": "clusterUser"}}],
            "current-context": cluster,
            "users": [
                {
                    "name": "clusterUser",
                    "user": {
                        "exec": {
                            "apiVersion": "client.authentication.k8s.io/v1beta1",
                            "command": "kubelogin",
                            "args": ["get-token", "--login", "devicecode", "--server-id", "6dae42f8"],
                        }
                    },
                }
            ],
        }
    )


def _computed_outputs(reg: Registration) -> dict[str, Any]:
    """Outputs a real provider computes, for the 'known' run (preview leaves them unknown)."""
    i = reg.plain
    out: dict[str, Any] = {"id": _fake_id(reg)}
    if reg.type.startswith("azure-native:"):
        out["name"] = next((v for k, v in i.items() if k.endswith("Name") and k != "resourceGroupName"), reg.name)
        out["azureApiVersion"] = "mock"
    if reg.type == "azure-native:containerregistry:Registry":
        out["loginServer"] = f"{out['name']}.azurecr.io"
    elif reg.type == "azure-native:keyvault:Vault":
        out["properties"] = {**i.get("properties", {}), "vaultUri": f"https://{out['name']}.vault.azure.net/"}
    elif reg.type == "azure-native:containerservice:ManagedCluster":
        ident = {"objectId": "33333333-3333-3333-3333-333333333333", "clientId": "c1", "resourceId": "r1"}
        addons = dict(i.get("addonProfiles", {}))
        if "azureKeyvaultSecretsProvider" in addons:
            addons["azureKeyvaultSecretsProvider"] = {
                **addons["azureKeyvaultSecretsProvider"],
                "identity": {"objectId": "44444444-4444-4444-4444-444444444444", "clientId": "c2"},
            }
        out |= {
            "identityProfile": {"kubeletidentity": ident},
            "addonProfiles": addons,
            "oidcIssuerProfile": {"enabled": True, "issuerURL": "https://oidc.example.test/"},
            "fqdn": f"{reg.name}.hcp.example.test",
        }
    elif reg.type == "azure-native:network:PublicIPAddress":
        out["ipAddress"] = "198.51.100.7"
        label = (i.get("dnsSettings") or {}).get("domainNameLabel")
        if label:
            out["dnsSettings"] = {"domainNameLabel": label, "fqdn": f"{label}.{i.get('location')}.cloudapp.azure.com"}
    elif reg.type == "azure-native:compute:VirtualMachine":
        out["identity"] = {**i.get("identity", {}), "principalId": "55555555-5555-5555-5555-555555555555"}
    elif reg.type == "azure-native:managedidentity:UserAssignedIdentity":
        out |= {"principalId": "66666666-6666-6666-6666-666666666666", "clientId": "c3"}
    else:
        out |= _tool_outputs(reg, i)
    return out


def _tool_outputs(reg: Registration, i: dict[str, Any]) -> dict[str, Any]:
    """Outputs of the non-Azure providers (tls, random, docker-build, command)."""
    out: dict[str, Any] = {}
    if reg.type == "tls:index/privateKey:PrivateKey":
        out |= {
            "publicKeyOpenssh": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockMockMockMockMockMockMockMockMockMock mock\n",
            "privateKeyOpenssh": "-----BEGIN OPENSSH PRIVATE KEY-----\nmock\n-----END OPENSSH PRIVATE KEY-----\n",
        }
    elif reg.type == "docker-build:index:Image":
        digest = "sha256:" + hashlib.sha256(reg.urn.encode()).hexdigest()
        tag = (i.get("tags") or [reg.name])[0]
        out |= {"digest": digest, "ref": f"{tag}@{digest}"}
    elif reg.type == "command:local:Command":
        # What a build command prints: the pushed image's digest.
        out["stdout"] = "sha256:" + hashlib.sha256(reg.urn.encode()).hexdigest() + "\n"
    elif reg.type == "random:index/randomPassword:RandomPassword":
        out["result"] = "mock-" + hashlib.sha256(reg.urn.encode()).hexdigest()[:24]
    return out


class _Mocks(pulumi_mocks.Mocks):
    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        reg = next(r for r in reversed(self.recording.resources) if r.name == args.name and r.type == args.typ)
        state = dict(args.inputs)
        if self.recording.preview:
            return "", state
        outputs = _computed_outputs(reg)
        return outputs.pop("id"), state | outputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        answer = _INVOKE_ANSWERS.get(args.token)
        if answer is None:
            raise NotImplementedError(f"the recording mock has no answer for invoke {args.token}")
        return answer(args.args), []


def _client_config(_: dict[str, Any]) -> dict[str, Any]:
    return {
        "clientId": "deployer",
        "objectId": DEPLOYER_OBJECT_ID,
        "subscriptionId": SUBSCRIPTION_ID,
        "tenantId": TENANT_ID,
    }


def _user_credentials(args: dict[str, Any]) -> dict[str, Any]:
    value = base64.b64encode(fake_kubeconfig(str(args.get("resourceName"))).encode()).decode()
    return {"kubeconfigs": [{"name": "clusterUser", "value": value}]}


def _local_command(args: dict[str, Any]) -> dict[str, Any]:
    # `az acr login --expose-token`: an access token (never a real one here).
    return {"stdout": "mock-acr-access-token\n", "stderr": "", "command": args.get("command", "")}


_INVOKE_ANSWERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "azure-native:authorization:getClientConfig": _client_config,
    "azure-native:containerservice:listManagedClusterUserCredentials": _user_credentials,
    "command:local:run": _local_command,
}


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: _Mocks, recording: Recording) -> None:
        super().__init__(mocks)
        self.recording = recording

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        # As the engine does: children of the stack carry no "pulumi:pulumi:Stack$" type prefix.
        if parent and parent.split("::")[2] == "pulumi:pulumi:Stack":
            parent = ""
        return super().make_urn(parent, type_, name)

    def RegisterResource(self, request: Any) -> Any:
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type != "pulumi:pulumi:Stack":
            if urn in {r.urn for r in self.recording.resources}:
                self.recording.duplicates.append(urn)
            raw = json_format.MessageToDict(request.object, preserving_proto_field_name=True)
            self.recording.resources.append(
                Registration(
                    urn=urn,
                    type=request.type,
                    name=request.name,
                    inputs=_convert(raw),
                    parent=request.parent,
                    provider=request.provider,
                    custom=bool(request.custom),
                    protect=bool(request.protect),
                    delete_before_replace=bool(request.deleteBeforeReplace),
                    replace_on_changes=list(request.replaceOnChanges),
                    ignore_changes=list(request.ignoreChanges),
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                    depends_on=list(request.dependencies),
                )
            )
        return super().RegisterResource(request)

    def RegisterResourceOutputs(self, request: Any) -> Any:
        if request.urn.split("::")[2] == "pulumi:pulumi:Stack":
            # Two stacks finish (set_mocks' own, with no outputs, and the program's): merge.
            raw = json_format.MessageToDict(request.outputs, preserving_proto_field_name=True)
            self.recording.exports.update(_convert(raw))
        return super().RegisterResourceOutputs(request)


class _LogLines(logging.Handler):
    def __init__(self, recording: Recording) -> None:
        super().__init__(logging.DEBUG)
        self.recording = recording

    def emit(self, record: logging.LogRecord) -> None:
        self.recording.logs.append(record.getMessage())


@contextlib.contextmanager
def _program_import_path() -> Iterator[None]:
    """The CLI's language host runs main with sys.path[0] set to the main folder itself."""
    saved = list(sys.path)
    sys.path.insert(0, str(PROGRAM))
    try:
        yield
    finally:
        sys.path[:] = saved


def run(
    stack: str,
    config: dict[str, str],
    secret_keys: list[str],
    *,
    preview: bool = False,
    program: Callable[[], None] | None = None,
    project: str = "slm-serving",
    into: Recording | None = None,
) -> Recording:
    """Run the program (default: infra/__main__.py as the CLI runs it) and return what it registered.

    A fresh event loop and reset runtime settings for every run, so runs never leak into each other.
    `into` receives the registrations even when the program raises.
    """
    recording = into if into is not None else Recording(stack=stack, preview=preview)
    mocks = _Mocks(recording)
    reset_options()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        # The program's log lines (pulumi.log.*) are kept on the recording.
        logger = logging.getLogger(f"slm-serving.recording.{id(recording)}")
        logger.propagate = False
        logger.addHandler(_LogLines(recording))
        pulumi_mocks.set_mocks(
            mocks,
            project=project,
            stack=stack,
            preview=preview,
            monitor=_RecordingMonitor(mocks, recording),
            logger=logger,
        )
        set_all_config(config, secret_keys)
        # set_mocks made (and finished) a root stack of its own; the program's run makes the real one,
        # as the CLI's host does, so the stack's exports are registered when the program ends.
        pulumi_settings.ROOT.set(None)

        def main() -> None:
            if program is not None:
                program()
                return
            with _program_import_path():
                runpy.run_path(str(PROGRAM), run_name="__main__")

        loop.run_until_complete(run_in_stack(main))
    finally:
        loop.close()
        asyncio.set_event_loop(None)
        reset_options()
    return recording
