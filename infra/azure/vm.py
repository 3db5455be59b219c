"""One Linux VM (GPU or CPU) that runs the backends with Docker Compose.

SSH keys only; its managed identity pulls from the registry and reads the Hugging Face token from
Key Vault. The model cache lives on its own managed disk, which outlives a replaced VM.
"""

import base64
import gzip
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls
from pulumi_azure_native import compute, network

from infra.azure import roles
from infra.config import VmConfig
from infra.vm.cloud_init import CloudInitArgs, cloud_config

# Azure caps custom data at 64 KiB (base64); cloud-init reads gzip-compressed user data as is.
CUSTOM_DATA_LIMIT = 65535


def encode_custom_data(document: str) -> str:
    encoded = base64.b64encode(gzip.compress(document.encode(), mtime=0)).decode()
    if len(encoded) > CUSTOM_DATA_LIMIT:
        raise ValueError(f"cloud-init user data is {len(encoded)} bytes compressed; Azure allows {CUSTOM_DATA_LIMIT}")
    return encoded


def decode_custom_data(encoded: str) -> str:
    return gzip.decompress(base64.b64decode(encoded)).decode()


NVIDIA_DRIVER_EXTENSION = {
    "publisher": "Microsoft.HpcCompute",
    "type": "NvidiaGpuDriverLinux",
    "type_handler_version": "1.6",
}


@dataclass(frozen=True)
class ServingVmArgs:
    resource_group_name: pulumi.Input[str]
    location: str
    vm: VmConfig
    subnet_id: pulumi.Input[str]
    registry_id: pulumi.Input[str]
    key_vault_id: pulumi.Input[str]
    key_vault_uri: pulumi.Input[str]
    # Key Vault secret name -> file name in the VM's tmpfs secrets folder.
    secrets: tuple[tuple[str, str], ...]
    # Data-disk folders the boot creates, with their owners.
    data_folders: tuple[tuple[str, int], ...]
    registry_login_server: pulumi.Input[str]
    subscription_id: pulumi.Input[str]
    compose_yaml: pulumi.Input[str]
    encryption_at_host: bool
    tags: Mapping[str, str]
    protect: bool
    # Azure DNS label for the public IP: <label>.<region>.cloudapp.azure.com.
    dns_label: str | None = None


class ServingVm(pulumi.ComponentResource):
    public_ip: pulumi.Output[str]
    admin_username: str
    ssh_private_key: pulumi.Output[str] | None

    def __init__(self, name: str, args: ServingVmArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("slm:azure:ServingVm", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cfg = args.vm
        tags = dict(args.tags)

        if cfg.ssh_public_key is None:
            key = tls.PrivateKey(f"{name}-ssh", algorithm="ED25519", opts=child)
            public_key: pulumi.Input[str] = key.public_key_openssh
            self.ssh_private_key = pulumi.Output.secret(key.private_key_openssh)
        else:
            public_key = cfg.ssh_public_key.strip()
            self.ssh_private_key = None

        ip = network.PublicIPAddress(
            f"{name}-ip",
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku={"name": "Standard", "tier": "Regional"},
            public_ip_allocation_method="Static",
            # A stable DNS name: the proxy's certificate names it.
            dns_settings={"domain_name_label": args.dns_label},
            tags=tags,
            opts=child,
        )
        nic = network.NetworkInterface(
            f"{name}-nic",
            resource_group_name=args.resource_group_name,
            location=args.location,
            ip_configurations=[
                {
                    "name": "primary",
                    "subnet": {"id": args.subnet_id},
                    "public_ip_address": {"id": ip.id},
                    "private_ip_allocation_method": "Dynamic",
                }
            ],
            tags=tags,
            opts=child,
        )
        data_disk = compute.Disk(
            f"{name}-models",
            resource_group_name=args.resource_group_name,
            location=args.location,
            creation_data={"create_option": "Empty"},
            disk_size_gb=cfg.data_disk_size_gb,
            sku={"name": "Premium_LRS"},
            encryption={"type": "EncryptionAtRestWithPlatformKey"},
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        user_data = pulumi.Output.all(
            uri=args.key_vault_uri, registry=args.registry_login_server, compose=args.compose_yaml
        ).apply(
            lambda v: encode_custom_data(
                cloud_config(
                    CloudInitArgs(
                        compose_yaml=v["compose"],
                        gpu=cfg.has_gpu,
                        key_vault_uri=v["uri"],
                        secrets=args.secrets,
                        registry_login_server=v["registry"],
                        data_folders=args.data_folders,
                    )
                )
            )
        )
        vm = compute.VirtualMachine(
            f"{name}-vm",
            resource_group_name=args.resource_group_name,
            location=args.location,
            hardware_profile={"vm_size": cfg.size},
            identity={"type": compute.ResourceIdentityType.SYSTEM_ASSIGNED},
            os_profile={
                "computer_name": name,
                "admin_username": cfg.admin_username,
                "custom_data": user_data,
                # Extensions only where the NVIDIA driver needs one.
                "allow_extension_operations": cfg.has_gpu,
                "linux_configuration": {
                    "disable_password_authentication": True,
                    "provision_vm_agent": True,
                    "ssh": {
                        "public_keys": [
                            {
                                "path": f"/home/{cfg.admin_username}/.ssh/authorized_keys",
                                "key_data": public_key,
                            }
                        ]
                    },
                    "patch_settings": {"patch_mode": "ImageDefault"},
                },
            },
            storage_profile={
                "image_reference": {
                    "publisher": "Canonical",
                    "offer": "ubuntu-24_04-lts",
                    "sku": "server",
                    "version": "latest",
                },
                "os_disk": {
                    "create_option": "FromImage",
                    "disk_size_gb": cfg.os_disk_size_gb,
                    "managed_disk": {"storage_account_type": "Premium_LRS"},
                    "delete_option": "Delete",
                },
                "data_disks": [
                    {
                        "lun": 0,
                        "create_option": "Attach",
                        "managed_disk": {"id": data_disk.id},
                        "delete_option": "Detach",
                    }
                ],
            },
            network_profile={"network_interfaces": [{"id": nic.id, "primary": True, "delete_option": "Delete"}]},
            diagnostics_profile={"boot_diagnostics": {"enabled": True}},
            security_profile={"encryption_at_host": args.encryption_at_host},
            priority="Spot" if cfg.spot else "Regular",
            eviction_policy="Deallocate" if cfg.spot else None,
            tags=tags,
            opts=child,
        )
        if cfg.has_gpu:
            compute.VirtualMachineExtension(
                f"{name}-nvidia-driver",
                resource_group_name=args.resource_group_name,
                vm_name=vm.name,
                location=args.location,
                auto_upgrade_minor_version=True,
                publisher=NVIDIA_DRIVER_EXTENSION["publisher"],
                type=NVIDIA_DRIVER_EXTENSION["type"],
                type_handler_version=NVIDIA_DRIVER_EXTENSION["type_handler_version"],
                tags=tags,
                opts=child,
            )
        principal_id = vm.identity.apply(lambda i: (i.principal_id if i else None) or "")
        roles.assign_role(
            f"{name}-acr-pull",
            subscription_id=args.subscription_id,
            role_id=roles.ACR_PULL,
            principal_id=principal_id,
            scope=args.registry_id,
            parent=self,
        )
        roles.assign_role(
            f"{name}-kv-secrets-user",
            subscription_id=args.subscription_id,
            role_id=roles.KEY_VAULT_SECRETS_USER,
            principal_id=principal_id,
            scope=args.key_vault_id,
            parent=self,
        )
        self.public_ip = ip.ip_address.apply(lambda a: a or "")
        self.admin_username = cfg.admin_username
        self.register_outputs({"public_ip": self.public_ip, "admin_username": self.admin_username})
