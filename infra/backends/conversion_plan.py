"""What the stack asks the converter to do: its arguments and the key it will find the result under.
Shared by the Kubernetes Job and the VM's Compose service."""

from __future__ import annotations

from convert.key import ConversionSpec
from infra.config import ConversionConfig


def conversion_spec(conversion: ConversionConfig, target: str) -> ConversionSpec:
    quantized = target.endswith("int4")
    prebuilt = conversion.prebuilt
    return ConversionSpec(
        source=conversion.model,
        revision=conversion.revision,
        target=target,
        method="prebuilt" if prebuilt else conversion.method,
        block_size=conversion.block_size if quantized and not prebuilt else 0,
        accuracy_level=conversion.accuracy_level if quantized and not prebuilt else 0,
        prebuilt=f"{prebuilt}/{conversion.prebuilt_subfolder or ''}" if prebuilt else "",
    )


def converter_arguments(conversion: ConversionConfig, target: str, out: str) -> list[str]:
    """`python -m convert` arguments for a stack's conversion settings."""
    arguments = [
        "--model",
        conversion.model,
        "--revision",
        conversion.revision,
        "--target",
        target,
        "--method",
        conversion.method,
        "--block-size",
        str(conversion.block_size),
        "--accuracy-level",
        str(conversion.accuracy_level),
        "--out",
        out,
    ]
    if conversion.prebuilt:
        arguments += ["--prebuilt", conversion.prebuilt]
        if conversion.prebuilt_subfolder:
            arguments += ["--prebuilt-subfolder", conversion.prebuilt_subfolder]
    return arguments
