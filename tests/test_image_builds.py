"""The stack's own images: built and pushed by the stack (docker-build locally, ACR Tasks remotely),
tagged by their build context, cached in the registry, pushed without the ACR admin user, and run by
digest."""

from __future__ import annotations

import re
from typing import Any

import pytest

from infra.config import ConfigError
from infra.images import image_ref
from offline.recording import Secret
from tests.conftest import run_stack, stack_value
from tests.test_serving_manifests import one

DIGEST_REF = re.compile(r"^[a-z0-9.:-]+/slm-serving/(converter|onnx-server):[0-9a-f]{16}(-cuda)?@sha256:[0-9a-f]{64}$")


def _images(rec: Any) -> dict[str, Any]:
    return {r.name: r for r in rec.resources if r.type == "docker-build:index:Image"}


def test_local_builds_push_by_context_tag_with_a_registry_cache(rendered: Any) -> None:
    rec = rendered("prod")
    images = _images(rec)
    assert set(images) == {"slm-prod-images-converter-cpu", "slm-prod-images-onnx-server-cpu"}
    converter = images["slm-prod-images-converter-cpu"].plain
    assert converter["tags"] == [image_ref("slmprod.azurecr.io", "converter")]
    assert converter["push"] is True and converter["buildArgs"] == {"VARIANT": "cpu"}
    assert converter["buildOnPreview"] is False
    assert converter["dockerfile"]["location"].endswith("images/converter/Dockerfile")
    cache = converter["cacheTo"][0]["registry"]
    assert cache["ref"] == "slmprod.azurecr.io/slm-serving/converter:buildcache-cpu" and cache["mode"] == "max"
    assert converter["cacheFrom"][0]["registry"]["ref"] == cache["ref"]
    assert "latest" not in str(converter["tags"])


def test_azure_pushes_with_an_entra_token_never_the_admin_user(rendered: Any) -> None:
    rec = rendered("prod")
    image = _images(rec)["slm-prod-images-onnx-server-cpu"]
    registry = image.inputs["registries"][0]
    assert registry["username"] == "00000000-0000-0000-0000-000000000000"
    assert isinstance(registry["password"], Secret)
    acr = rec.one("azure-native:containerregistry:Registry").plain
    assert acr["adminUserEnabled"] is False


def test_workloads_run_the_pushed_digest(rendered: Any) -> None:
    rec = rendered("prod")
    deployment = one(rec, "Deployment", "onnx")["spec"]["template"]["spec"]["containers"][0]
    assert DIGEST_REF.match(deployment["image"]), deployment["image"]
    job = next(r for r in rec.resources if r.type == "kubernetes:batch/v1:Job" and "onnx" in r.name).plain
    assert DIGEST_REF.match(job["spec"]["template"]["spec"]["containers"][0]["image"])


def test_the_vm_pulls_the_pushed_digest(rendered: Any) -> None:
    from tests.test_vm import _compose  # pyright: ignore[reportPrivateUsage]

    services = _compose(rendered("dev"))["services"]
    assert DIGEST_REF.match(services["onnx"]["image"]) and DIGEST_REF.match(services["convert"]["image"])


def test_gpu_onnx_backend_builds_the_cuda_variant() -> None:
    rec = run_stack(
        "prod", overrides={"backends": {"onnx": {"enabled": True, "device": "gpu"}, "vllm": {"enabled": False}}}
    )
    image = _images(rec)["slm-prod-images-onnx-server-cuda"].plain
    assert image["buildArgs"] == {"VARIANT": "cuda"} and image["tags"][0].endswith("-cuda")


def test_remote_builds_use_acr_tasks_and_reference_the_digest() -> None:
    rec = run_stack("prod", overrides={"images": {"build": "remote"}})
    assert not _images(rec)
    builds = {r.name: r.plain for r in rec.resources if r.type == "command:local:Command"}
    create = builds["slm-prod-images-onnx-server-cpu"]["create"]
    assert create.startswith("az acr build --registry slmprod --image slm-serving/onnx-server:")
    assert "--file images/onnx-server/Dockerfile --build-arg VARIANT=cpu" in create
    assert builds["slm-prod-images-onnx-server-cpu"]["triggers"] == [image_ref("slmprod.azurecr.io", "onnx-server")]
    image = one(rec, "Deployment", "onnx")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert re.match(r"^slmprod\.azurecr\.io/slm-serving/onnx-server@sha256:[0-9a-f]{64}$", image), image


def test_cluster_stacks_push_to_the_configured_registry_with_their_own_login(rendered: Any) -> None:
    images = _images(rendered("local"))
    assert {i.plain["tags"][0].split("/")[0] for i in images.values()} == {"localhost:5001"}
    assert all(not i.plain.get("registries") for i in images.values())


def test_none_references_the_tags_and_remote_needs_azure() -> None:
    rec = run_stack("local", overrides={"images": {"build": "none"}})
    assert not _images(rec)
    image = one(rec, "Deployment", "onnx")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == image_ref("localhost:5001", "onnx-server")
    with pytest.raises(ConfigError, match=r"images\.build"):
        run_stack("local", overrides={"images": {"build": "remote"}})


def test_no_image_is_built_without_the_onnx_backend() -> None:
    # local's Ollama (sized for the laptop node) instead of its ONNX backend.
    ollama = {**stack_value("local", "backends")["ollama"], "enabled": True}
    rec = run_stack("local", overrides={"backends": {"ollama": ollama}})
    assert not _images(rec)
