"""Built-in Azure role ids and a role assignment helper (least privilege: one role, one scope)."""

import pulumi
from pulumi_azure_native import authorization

# Built-in role definition ids (stable across tenants).
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"


def assign_role(
    name: str,
    *,
    subscription_id: pulumi.Input[str],
    role_id: str,
    principal_id: pulumi.Input[str],
    scope: pulumi.Input[str],
    principal_type: str | None = "ServicePrincipal",
    parent: pulumi.Resource,
) -> authorization.RoleAssignment:
    return authorization.RoleAssignment(
        name,
        principal_id=principal_id,
        principal_type=principal_type,
        role_definition_id=pulumi.Output.concat(
            "/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role_id
        ),
        scope=scope,
        opts=pulumi.ResourceOptions(parent=parent),
    )
