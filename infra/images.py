"""Every image the stack runs: the upstream ones pinned by release, and our own with the tags they
are referenced by.

A tag is a hash of the image's build context, so a change to the code is a new tag (never `latest`)
and an unchanged tree keeps its tag across deploys.
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_command as command
import pulumi_docker_build as docker_build

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Upstream images, pinned by release (the same pins on Kubernetes and on the VM).
VLLM = "vllm/vllm-openai:v0.12.0"
VLLM_CPU = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.12.0"
OLLAMA = "ollama/ollama:0.13.5"
OPEN_WEBUI = "ghcr.io/open-webui/open-webui:v0.6.36"
CADDY = "caddy:2.10.2-alpine"
BUSYBOX = "busybox:1.37.0"
PROMETHEUS = "prom/prometheus:v2.53.2"
ALERTMANAGER = "prom/alertmanager:v0.28.1"
GRAFANA = "grafana/grafana:11.2.2"
NODE_EXPORTER = "prom/node-exporter:v1.8.2"
DCGM_EXPORTER = "nvcr.io/nvidia/k8s/dcgm-exporter:3.3.8-3.6.0-ubuntu22.04"

# Image name -> the paths (relative to the project root) its Dockerfile copies.
IMAGE_CONTEXTS: dict[str, tuple[str, ...]] = {
    "converter": ("images/converter", "convert"),
    "onnx-server": ("images/onnx-server",),
}
_IGNORED = {"__pycache__", ".pytest_cache"}


def context_tag(paths: tuple[str, ...], root: Path = PROJECT_ROOT) -> str:
    digest = hashlib.sha256()
    for relative in paths:
        base = root / relative
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not _IGNORED & set(p.parts)):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def image_ref(registry: str, name: str, variant: str = "cpu") -> str:
    """`<registry>/slm-serving/<name>:<context hash>`; the CUDA build (`--build-arg VARIANT=cuda`) adds `-cuda`."""
    suffix = "" if variant == "cpu" else f"-{variant}"
    return f"{registry}/slm-serving/{name}:{context_tag(IMAGE_CONTEXTS[name])}{suffix}"


# --- builds and pushes ------------------------------------------------------------------------------

# Entra ID's placeholder user for an ACR access token (`az acr login --expose-token`).
ACR_TOKEN_USER = "00000000-0000-0000-0000-000000000000"  # noqa: S105 (a fixed user name)
PLATFORM = "linux/amd64"


@dataclass(frozen=True)
class Build:
    name: str  # a key of IMAGE_CONTEXTS
    variant: str = "cpu"


@dataclass(frozen=True)
class StackImagesArgs:
    registry: pulumi.Input[str]  # login server (ACR) or host[:port]
    mode: str  # local | remote | none
    builds: Sequence[Build]
    # Log in with the deployer's Entra identity (ACR): no admin user, no stored password.
    entra_login: bool = False


def repository(registry: str, name: str) -> str:
    return f"{registry}/slm-serving/{name}"


def acr_build_command(registry: str, build: Build) -> str:
    """ACR Tasks: upload the context, build and push in the registry; print only the digest."""
    name = registry.split(".", 1)[0]
    image = f"slm-serving/{build.name}:{image_ref(registry, build.name, build.variant).rsplit(':', 1)[1]}"
    return (
        f"az acr build --registry {name} --image {image} --file images/{build.name}/Dockerfile "
        f"--build-arg VARIANT={build.variant} --platform {PLATFORM} --no-logs . >&2 && "
        f"az acr repository show --name {name} --image {image} --query digest --output tsv"
    )


class StackImages(pulumi.ComponentResource):
    """Builds and pushes the stack's images; `refs[(name, variant)]` is what workloads run: pinned by
    digest once pushed (never `latest`), by build-context tag in mode none."""

    refs: dict[tuple[str, str], pulumi.Output[str]]

    def __init__(self, name: str, args: StackImagesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:images:StackImages", name, None, opts)
        registry = pulumi.Output.from_input(args.registry)
        self.refs = {}
        token: pulumi.Output[str] | None = None
        if args.mode == "local" and args.entra_login:
            login = command.local.run_output(
                command=registry.apply(
                    lambda r: (
                        f"az acr login --name {r.split('.', 1)[0]} --expose-token --output tsv --query accessToken"
                    )
                ),
                opts=pulumi.InvokeOutputOptions(parent=self),
            )
            token = pulumi.Output.secret(login.stdout.apply(str.strip))
        for build in args.builds:
            key = (build.name, build.variant)
            tagged = registry.apply(lambda r, b=build: image_ref(r, b.name, b.variant))
            child = f"{name}-{build.name}-{build.variant}"
            if args.mode == "none":
                self.refs[key] = tagged
            elif args.mode == "remote":
                built = command.local.Command(
                    child,
                    create=registry.apply(lambda r, b=build: acr_build_command(r, b)),
                    dir=str(PROJECT_ROOT),
                    # A new build only when the context (and so the tag) changes.
                    triggers=[tagged],
                    opts=pulumi.ResourceOptions(parent=self),
                )
                self.refs[key] = pulumi.Output.all(registry, built.stdout).apply(
                    lambda parts, b=build: f"{repository(parts[0], b.name)}@{parts[1].strip()}"
                )
            else:
                cache = registry.apply(lambda r, b=build: f"{repository(r, b.name)}:buildcache-{b.variant}")
                credentials: list[docker_build.RegistryArgsDict] = []
                if token is not None:
                    credentials.append({"address": registry, "username": ACR_TOKEN_USER, "password": token})
                image = docker_build.Image(
                    child,
                    context={"location": str(PROJECT_ROOT)},
                    dockerfile={"location": str(PROJECT_ROOT / "images" / build.name / "Dockerfile")},
                    build_args={"VARIANT": build.variant},
                    platforms=[docker_build.Platform.LINUX_AMD64],
                    tags=[tagged],
                    push=True,
                    # Previews (every pull request) plan the build; `up` builds and pushes.
                    build_on_preview=False,
                    # Layers cached in the registry: another machine (CI) reuses them.
                    cache_from=[{"registry": {"ref": cache}}],
                    cache_to=[{"registry": {"ref": cache, "mode": docker_build.CacheMode.MAX, "image_manifest": True}}],
                    registries=credentials,
                    opts=pulumi.ResourceOptions(parent=self),
                )
                # `ref` is the pushed tag with its digest: what the cluster pulls.
                self.refs[key] = image.ref
        self.register_outputs({"refs": {f"{n}-{v}": ref for (n, v), ref in self.refs.items()}})
