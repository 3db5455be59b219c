"""Invalid config fails before any resource exists, listing every problem with key, value and choices."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from infra.config import ConfigError
from infra.vm_sizes import GPU_SIZES
from offline import recording
from offline.render import read_stack_config
from tests.conftest import run_stack, stack_value


def problems(stack: str, overrides: dict[str, Any] | None = None, remove: tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        run_stack(stack, overrides, remove)
    return [str(p) for p in caught.value.problems]


def prod_aks(**changes: Any) -> dict[str, Any]:
    aks = copy.deepcopy(stack_value("prod", "aks"))
    aks.update(changes)
    return aks


def one(found: list[str], key: str) -> str:
    matching = [p for p in found if p.startswith(key + ":")]
    assert len(matching) == 1, f"no single problem for {key}: {found}"
    return matching[0]


def test_unsupported_gpu_size_names_the_valid_ones() -> None:
    pools = prod_aks()["gpuPools"]
    pools[0]["vmSize"] = "Standard_NC6"
    message = one(problems("prod", {"aks": prod_aks(gpuPools=pools)}), "slm-serving:aks.gpuPools[0].vmSize")
    assert "'Standard_NC6'" in message
    for size in GPU_SIZES:
        assert size in message


def test_min_above_max() -> None:
    pools = prod_aks()["gpuPools"]
    pools[1].update(minCount=3, maxCount=2)
    message = one(problems("prod", {"aks": prod_aks(gpuPools=pools)}), "slm-serving:aks.gpuPools[1]")
    assert "minCount 3 is greater than maxCount 2" in message


def test_unknown_backend_lists_the_known_ones() -> None:
    backends = {**stack_value("prod", "backends"), "tgi": {"enabled": True}}
    message = one(problems("prod", {"backends": backends}), "slm-serving:backends.tgi")
    assert "unknown key 'tgi'" in message
    assert "vllm, ollama, onnx" in message


def test_missing_required_secret() -> None:
    # The stack file holds no secret; the render fills a placeholder, so remove it for this check.
    message = one(problems("dev", remove=("hfToken",)), "slm-serving:hfToken")
    assert "required secret" in message and "pulumi config set --secret hfToken" in message


def test_overlapping_cidrs() -> None:
    network = {"addressSpace": "10.0.0.0/16", "aksSubnet": "10.0.0.0/20", "serviceCidr": "10.0.8.0/22"}
    found = problems("prod", {"network": network})
    assert any("serviceCidr: 10.0.8.0/22 overlaps aksSubnet 10.0.0.0/20" in p for p in found), found
    assert any("dnsServiceIp: 10.41.0.10 is not inside serviceCidr 10.0.8.0/22" in p for p in found), found


def test_unknown_target_lists_valid_targets() -> None:
    message = one(problems("dev", {"target": "gke"}), "slm-serving:target")
    assert "'aks', 'vm' or 'cluster'" in message and "'gke'" in message


def test_wrong_types_are_not_coerced() -> None:
    pools = prod_aks()["gpuPools"]
    pools[0]["maxCount"] = "4"
    message = one(problems("prod", {"aks": prod_aks(gpuPools=pools)}), "slm-serving:aks.gpuPools[0].maxCount")
    assert "valid integer" in message and "'4'" in message


def test_every_problem_is_listed_at_once() -> None:
    vm = {**stack_value("dev", "vm"), "size": "Standard_X1", "adminUsername": "root", "dataDiskSizeGb": 1}
    found = problems("dev", {"vm": vm, "environment": "qa"})
    for key in ("vm.size", "vm.adminUsername", "vm.dataDiskSizeGb", "environment"):
        one(found, f"slm-serving:{key}")


def test_cross_key_problems_are_listed_together() -> None:
    found = problems("dev", {"allowedCidrs": ["0.0.0.0/0"], "owner": ""}, remove=("hfToken",))
    one(found, "slm-serving:allowedCidrs[0]")
    one(found, "slm-serving:owner")
    one(found, "slm-serving:hfToken")


def test_vllm_needs_a_gpu_that_meets_its_floor() -> None:
    vm = {**stack_value("dev", "vm"), "size": "Standard_NV12s_v3"}
    message = one(problems("dev", {"vm": vm}), "slm-serving:backends.vllm.device")
    assert "compute capability >= 7.0" in message and "M60" in message


def test_gpu_backend_needs_a_gpu_pool() -> None:
    message = one(problems("prod", {"aks": prod_aks(gpuPools=[])}), "slm-serving:backends.vllm.device")
    assert "aks.gpuPools" in message


def test_test_stacks_must_expire() -> None:
    one(problems("dev", {"environment": "test"}), "slm-serving:expiresOn")


def test_sections_of_other_targets_are_flagged() -> None:
    found = problems("local", {"aks": {"tier": "Free"}, "registry": {"sku": "Basic"}})
    one(found, "slm-serving:aks")
    one(found, "slm-serving:registry")


def test_explicit_zero_is_kept() -> None:
    pools = prod_aks()["gpuPools"]
    pools[0]["minCount"] = 0
    rec = run_stack("prod", {"aks": prod_aks(gpuPools=pools)})
    pool = rec.one("azure-native:containerservice:AgentPool", "gpu-a10")
    assert pool.plain["minCount"] == 0


def test_no_resource_is_created_when_config_is_invalid() -> None:
    stack_file = read_stack_config("dev")
    config = {**stack_file.config, "slm-serving:target": "nope"}
    rec = recording.Recording(stack="dev", preview=False)
    with pytest.raises(ConfigError):
        recording.run("dev", config, stack_file.secret_keys, into=rec)
    assert rec.resources == []


def test_key_problems_and_cross_key_problems_are_listed_together() -> None:
    vm = {**stack_value("dev", "vm"), "adminUsername": "root"}
    found = problems("dev", {"vm": vm, "owner": "", "environment": "test"})
    one(found, "slm-serving:vm.adminUsername")
    one(found, "slm-serving:owner")
    one(found, "slm-serving:expiresOn")


def test_a_section_that_failed_is_not_judged_again_by_cross_key_rules() -> None:
    # With gpuPools unreadable, "backends need a GPU pool" would be about the default (no pools).
    pools = prod_aks()["gpuPools"]
    pools[0]["vmSize"] = "Standard_NC6"
    found = problems("prod", {"aks": prod_aks(gpuPools=pools), "owner": ""})
    assert sorted(p.split(": ")[0] for p in found) == ["slm-serving:aks.gpuPools[0].vmSize", "slm-serving:owner"]


def test_an_unreadable_target_still_lets_the_other_rules_run() -> None:
    found = problems("local", {"target": "gke", "environment": "test"})
    one(found, "slm-serving:target")
    one(found, "slm-serving:expiresOn")
    assert len(found) == 2, found


def test_shared_types_refuse_a_value_the_same_way_everywhere() -> None:
    backends = copy.deepcopy(stack_value("prod", "backends"))
    for name in ("vllm", "ollama", "onnx"):
        backends[name]["resources"] = {"cpu": "lots", "memory": "32GB"}
    backends["vllm"]["model"] = "phi4"
    backends["onnx"]["conversion"] = {"cpu": "lots", "memory": "32GB", "model": "phi4"}
    found = problems(
        "prod",
        {"backends": backends, "gateway": {"acmeServer": "ftp://acme"}, "monitoring": {"prometheusUrl": "ftp://prom"}},
    )
    resources = [f"backends.{name}.resources" for name in ("vllm", "ollama", "onnx")]
    for kind, keys in (
        ("memory quantity", [*(f"{r}.memory" for r in resources), "backends.onnx.conversion.memory"]),
        ("CPU quantity", [*(f"{r}.cpu" for r in resources), "backends.onnx.conversion.cpu"]),
        ("Hugging Face model id", ["backends.vllm.model", "backends.onnx.conversion.model"]),
        ("http(s) URL", ["gateway.acmeServer", "monitoring.prometheusUrl"]),
    ):
        messages = {
            one(found, f"slm-serving:{key}").removeprefix(f"slm-serving:{key}: ").replace("ftp://prom", "ftp://acme")
            for key in keys
        }
        assert len(messages) == 1 and kind in messages.pop(), (kind, found)


# --- placement: a stack whose pods cannot be placed is refused (infra/placement.py) -------------------


def test_a_pod_larger_than_any_node_it_may_use_is_refused_with_what_fits() -> None:
    onnx = {**stack_value("prod", "backends")["onnx"], "resources": {"cpu": "4", "memory": "8Gi"}}
    backends = {**stack_value("prod", "backends"), "onnx": onnx}
    message = one(problems("prod", {"backends": backends}), "slm-serving:backends.onnx.resources.cpu")
    assert "requests 4 CPUs" in message
    assert "(system pool Standard_D4ds_v5) allocates 3.86 CPUs" in message
    assert "Request at most 3410m" in message


def test_a_job_that_tolerates_the_gpu_pools_is_judged_against_them_too() -> None:
    onnx = copy.deepcopy(stack_value("prod", "backends")["onnx"])
    onnx["conversion"] = {"memory": "500Gi"}
    backends = {**stack_value("prod", "backends"), "onnx": onnx}
    message = one(problems("prod", {"backends": backends}), "slm-serving:backends.onnx.conversion.memory")
    assert "(a10 pool Standard_NV36ads_A10_v5)" in message


def test_vm_backends_sharing_one_gpu_beyond_its_memory_are_refused() -> None:
    vllm = {**stack_value("dev", "backends")["vllm"], "gpuMemoryUtilization": 0.9}
    backends = {**stack_value("dev", "backends"), "vllm": vllm}
    message = one(problems("dev", {"backends": backends}), "slm-serving:backends.vllm.gpuMemoryUtilization")
    assert "share one 16GiB GPU on Standard_NC4as_T4_v3 and hold 18.9GiB" in message
    assert "vllm 14.4GiB" in message and "ollama 4.5GiB" in message


def test_vm_limits_above_the_vm_are_refused() -> None:
    backends = copy.deepcopy(stack_value("dev", "backends"))
    backends["vllm"]["resources"] = {"cpu": "8", "memory": "8Gi"}
    backends["onnx"]["conversion"]["memory"] = "32Gi"
    found = problems("dev", {"backends": backends})
    assert "at most 4" in one(found, "slm-serving:backends.vllm.resources.cpu")
    assert "after 3.0Gi for the OS" in one(found, "slm-serving:backends.onnx.conversion.memory")


def test_a_local_stack_larger_than_its_nodes_is_refused() -> None:
    backends = copy.deepcopy(stack_value("local", "backends"))
    backends["ollama"]["enabled"] = True
    message = one(problems("local", {"backends": backends}), "slm-serving:backends.onnx.resources.memory")
    assert "the stack and its add-ons request" in message
    assert "1 node(s) of 4 CPU / 8Gi" in message and "control plane" in message


def test_cluster_gpu_node_taints_are_checked_like_pool_taints() -> None:
    cluster = {"context": "kind-slm", "gpuNodes": {"taints": ["gpu"]}}
    message = one(problems("local", {"cluster": cluster}), "slm-serving:cluster.gpuNodes.taints")
    assert "is not 'key=value:Effect'" in message
