"""Tags every Azure resource carries: who owns it, which stack, and when a test stack expires."""

from infra.config import StackSettings

REQUIRED_TAGS = ("env", "owner", "project", "stack", "managed-by")


def stack_tags(settings: StackSettings, project: str, stack: str) -> dict[str, str]:
    tags = {
        "env": settings.environment,
        "owner": settings.owner,
        "project": project,
        "stack": stack,
        "managed-by": "pulumi",
    }
    if settings.expires_on is not None:
        tags["expires-on"] = settings.expires_on.isoformat()
    return tags
