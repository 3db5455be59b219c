"""The one issuer of the stack's generated credentials (client API keys, passwords, session keys),
the same on every target."""

from __future__ import annotations

import pulumi
import pulumi_random as random

from infra.conventions import API_KEY_LENGTH


def issue(resource_name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """A random key of letters and digits (never needs quoting in a header, a shell or a file)."""
    return random.RandomPassword(
        resource_name, length=API_KEY_LENGTH, special=False, opts=pulumi.ResourceOptions(parent=parent)
    ).result
