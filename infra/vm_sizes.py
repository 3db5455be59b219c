"""Azure VM sizes the stack supports, with the facts that decide how each may be used.

GPU facts come from the Azure size documentation (per-GPU memory, CUDA compute capability).
`temp_disk_gib` is the local temporary disk: an ephemeral OS disk fits when the OS disk is no larger.
"""

from dataclasses import dataclass

# vLLM's CUDA kernels need compute capability 7.0 (Volta) or newer.
VLLM_MIN_COMPUTE_CAPABILITY = 7.0


@dataclass(frozen=True)
class GpuSize:
    gpu_model: str
    gpu_count: int
    gpu_memory_gib: int  # per GPU
    compute_capability: float
    vcpus: int
    memory_gib: int
    temp_disk_gib: int

    @property
    def meets_vllm_floor(self) -> bool:
        return self.compute_capability >= VLLM_MIN_COMPUTE_CAPABILITY


@dataclass(frozen=True)
class CpuSize:
    vcpus: int
    memory_gib: int
    temp_disk_gib: int


GPU_SIZES: dict[str, GpuSize] = {
    "Standard_NC4as_T4_v3": GpuSize("NVIDIA T4", 1, 16, 7.5, 4, 28, 180),
    "Standard_NC8as_T4_v3": GpuSize("NVIDIA T4", 1, 16, 7.5, 8, 56, 360),
    "Standard_NC16as_T4_v3": GpuSize("NVIDIA T4", 1, 16, 7.5, 16, 110, 360),
    "Standard_NC64as_T4_v3": GpuSize("NVIDIA T4", 4, 16, 7.5, 64, 440, 2880),
    "Standard_NC6s_v3": GpuSize("NVIDIA V100", 1, 16, 7.0, 6, 112, 736),
    "Standard_NC12s_v3": GpuSize("NVIDIA V100", 2, 16, 7.0, 12, 224, 1474),
    "Standard_NV36ads_A10_v5": GpuSize("NVIDIA A10", 1, 24, 8.6, 36, 440, 720),
    "Standard_NV72ads_A10_v5": GpuSize("NVIDIA A10", 2, 24, 8.6, 72, 880, 1400),
    "Standard_NC24ads_A100_v4": GpuSize("NVIDIA A100 80GB", 1, 80, 8.0, 24, 220, 64),
    "Standard_NC48ads_A100_v4": GpuSize("NVIDIA A100 80GB", 2, 80, 8.0, 48, 440, 128),
    "Standard_NC96ads_A100_v4": GpuSize("NVIDIA A100 80GB", 4, 80, 8.0, 96, 880, 256),
    "Standard_NC40ads_H100_v5": GpuSize("NVIDIA H100 NVL", 1, 94, 9.0, 40, 320, 128),
    # Maxwell: still offered in some regions, below vLLM's floor (Ollama and ONNX only).
    "Standard_NV12s_v3": GpuSize("NVIDIA M60", 1, 8, 5.2, 12, 112, 320),
}

CPU_SIZES: dict[str, CpuSize] = {
    "Standard_D2s_v5": CpuSize(2, 8, 0),
    "Standard_D4s_v5": CpuSize(4, 16, 0),
    "Standard_D8s_v5": CpuSize(8, 32, 0),
    "Standard_D16s_v5": CpuSize(16, 64, 0),
    "Standard_D4ds_v5": CpuSize(4, 16, 150),
    "Standard_D8ds_v5": CpuSize(8, 32, 300),
    "Standard_D16ds_v5": CpuSize(16, 64, 600),
    "Standard_D4as_v5": CpuSize(4, 16, 0),
    "Standard_D8as_v5": CpuSize(8, 32, 0),
    "Standard_E8s_v5": CpuSize(8, 64, 0),
    "Standard_E16s_v5": CpuSize(16, 128, 0),
}


def temp_disk_gib(vm_size: str) -> int:
    size = GPU_SIZES.get(vm_size) or CPU_SIZES.get(vm_size)
    return size.temp_disk_gib if size else 0


def ephemeral_os_disk_fits(vm_size: str, os_disk_gib: int) -> bool:
    return os_disk_gib <= temp_disk_gib(vm_size)
