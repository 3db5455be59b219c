"""What a backend is, wherever it runs: one typed description per engine. The Kubernetes renderer
(infra/k8s) and the VM renderer (infra/vm) each turn descriptions into their own objects and never
name a backend; everything a target must know about an engine is here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from infra.config import BackendConfig
from infra.conventions import BACKEND_PORT
from infra.placement import GpuMemory


@dataclass(frozen=True)
class Paths:
    """What a target provides a backend: where its secret files appear, and which exist."""

    # The folder the backend's secret files (API keys, Hugging Face token) appear in.
    secrets: str
    # The stack has a Hugging Face token (always on Azure; optional on `cluster`).
    hf_token: bool = True


@dataclass(frozen=True)
class Image:
    """A pinned upstream reference, or one of the stack's own images as (name, variant)."""

    upstream: str | None = None
    own: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if (self.upstream is None) == (self.own is None):
            raise ValueError("an image is either upstream or one of the stack's own")


@dataclass(frozen=True)
class SecretFile:
    """A secret the backend reads as a file `<Paths.secrets>/<file>`."""

    file: str


@dataclass(frozen=True)
class Volume:
    """A persistent volume of the backend's (model cache or model store), shared by its replicas."""

    claim: str  # the claim's name on Kubernetes, the data-disk folder on the VM
    name: str  # the volume's name inside the pod
    mount: str
    # None: the stack's storage.sizeGb.
    size_gb: int | None = None
    # The server only reads it (a preparation step writes it).
    read_only: bool = False


@dataclass(frozen=True)
class Probes:
    """HTTP paths on the backend port that need no API key."""

    startup: str
    readiness: str
    liveness: str


def http_check(path: str, port: int = BACKEND_PORT) -> tuple[str, ...]:
    """A health command for images with python3 but maybe no curl: urlopen raises on a non-2xx answer."""
    url = f"http://127.0.0.1:{port}{path}"
    return ("python3", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)")


@dataclass(frozen=True)
class Metrics:
    """The backend's own Prometheus endpoint and the scrape job every target names it by."""

    job: str
    path: str = "/metrics"
    # The gauge of requests waiting in one replica (KEDA sums it over replicas); None: the engine
    # reports no queue, and its waiting requests are counted at the gateway (Backend.parallel).
    queue_metric: str | None = None


@dataclass(frozen=True)
class Route:
    """What clients reach through the gateway: https://<gw>/<prefix><path>/... or <prefix>.<domain>."""

    backend: str
    prefix: str
    # The names clients pass as `model`; the first is the base model.
    models: tuple[str, ...]
    # Path prefixes a client may call (each forwarded to the backend unchanged, without <prefix>).
    paths: tuple[str, ...] = ("/v1",)


@dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str
    # Limits above the request (a one-shot job that may burst); None: the request.
    cpu_limit: str | None = None
    memory_limit: str | None = None


@dataclass(frozen=True)
class Preparation:
    """A one-shot step that readies the model on the backend's first volume; the server starts once
    `ready_file` exists (written last, so a half-done step never counts)."""

    # The Job is `<name>-<key>` (a new key is a new run; an unchanged stack never reruns it).
    name: str
    key: str
    component: str
    image: Image
    args: tuple[str, ...]
    ready_file: str
    resources: Resources
    deadline_seconds: int
    retries: int
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: tuple[SecretFile, ...] = ()
    # File name -> content, mounted read-only at `files_mount` (Ollama's Modelfiles).
    files: Mapping[str, str] = field(default_factory=dict)
    files_mount: str | None = None
    uid: int | None = None
    # Converting a large model needs a large node: may run where the GPU pools' taints allow.
    tolerates_gpu_nodes: bool = False
    # Extra labels on the job's pod (the conversion key, for the alert that reads it).
    pod_labels: Mapping[str, str] = field(default_factory=dict)
    # The `backends.<name>` sub-key its resources come from (placement errors name it); None: fixed.
    resources_key: str | None = None


@dataclass(frozen=True)
class Backend:
    """One enabled backend, described for every target."""

    name: str
    config: BackendConfig
    image: Image
    args: tuple[str, ...]
    probes: Probes
    # Exits 0 once the server answers (for runtimes that check health by running a command: Compose).
    health_command: tuple[str, ...]
    route: Route
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = BACKEND_PORT
    volumes: tuple[Volume, ...] = ()
    secrets: tuple[SecretFile, ...] = ()
    # Size of an in-memory /dev/shm (PyTorch's worker processes share tensors through it).
    shm_size: str | None = None
    metrics: Metrics | None = None
    # Requests one replica runs at once, queueing the rest inside (OLLAMA_NUM_PARALLEL): for an engine
    # without a queue gauge, the requests in flight beyond this many per ready replica are waiting.
    parallel: int | None = None
    # Reaches the internet on 443 to download a model (the network policy allows it).
    downloads_models: bool = False
    preparation: Preparation | None = None
    # File name -> content, mounted read-only at `files_mount` (vLLM's chat template and tool parser).
    files: Mapping[str, str] = field(default_factory=dict)
    files_mount: str | None = None
    # The stack's own images it needs built: (name, variant).
    own_images: tuple[tuple[str, str], ...] = ()
    # What a GPU replica holds in GPU memory (checked where backends share a GPU); None: not estimated.
    gpu_memory: GpuMemory | None = None

    @property
    def gpu(self) -> bool:
        return self.config.device == "gpu"
