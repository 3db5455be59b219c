"""The stack's own images a target builds and pushes: only what an enabled backend runs."""

from __future__ import annotations

import pulumi

from infra.backends import registry
from infra.backends.description import Paths
from infra.config import StackConfig
from infra.images import Build, StackImages, StackImagesArgs


def own_images(cfg: StackConfig, registry_server: pulumi.Input[str]) -> dict[tuple[str, str], pulumi.Output[str]]:
    s = cfg.settings
    needed = dict.fromkeys(
        image for backend in registry.enabled(s.backends, Paths(secrets="/")) for image in backend.own_images
    )
    if not needed:
        return {}
    images = StackImages(
        f"slm-{cfg.stack}-images",
        StackImagesArgs(
            registry=registry_server,
            mode=s.images.build,
            builds=tuple(Build(name, variant) for name, variant in needed),
            entra_login=s.is_azure,
        ),
    )
    return images.refs
