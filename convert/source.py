"""Where the model comes from: a local folder or a Hugging Face hub id at a revision."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from convert import errors
from convert.hf_auth import hf_token

# Causal LMs the pinned onnxruntime-genai builder converts (its own table is longer: vision and
# speech models are left out). A test checks each name against the installed builder.
SUPPORTED_ARCHITECTURES = (
    "ChatGLMModel",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GemmaForCausalLM",
    "GraniteForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "NemotronForCausalLM",
    "OlmoForCausalLM",
    "Phi3ForCausalLM",
    "Phi3SmallForCausalLM",
    "PhiForCausalLM",
    "PhiMoEForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "SmolLM3ForCausalLM",
)


@dataclass(frozen=True)
class ModelSource:
    id: str  # what the user named
    revision: str  # resolved commit sha, or content hash of a local folder
    local: bool
    size_bytes: int  # weights on disk (local) or to download (hub)
    architecture: str


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _check_architecture(name: str, config: dict[str, object]) -> str:
    architectures = config.get("architectures") or []
    architecture = str(architectures[0]) if isinstance(architectures, list) and architectures else "unknown"
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise errors.UnsupportedArchitecture(
            f"{name}: architecture {architecture} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return architecture


def resolve_local(folder: Path) -> ModelSource:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise errors.ModelNotFound(f"{folder}: not a Hugging Face model folder (no config.json)")
    architecture = _check_architecture(str(folder), json.loads(config_path.read_text()))
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors")) or sum(
        p.stat().st_size for p in folder.rglob("*.bin")
    )
    return ModelSource(str(folder), folder_hash(folder), True, size, architecture)


def _hub_errors(name: str, error: Exception) -> errors.ConversionError:
    from huggingface_hub import errors as hub  # noqa: PLC0415 (only for hub sources)

    if isinstance(error, errors.ConversionError):
        return error
    if isinstance(error, hub.GatedRepoError):
        how = "the token has not been granted access" if hf_token() else "no token is set"
        return errors.GatedModel(
            f"{name} is gated and {how}: accept its license on the hub, then set HF_TOKEN_PATH or HF_TOKEN"
        )
    if isinstance(error, hub.RevisionNotFoundError):
        return errors.ModelNotFound(f"{name}: revision not found")
    if isinstance(error, (hub.RepositoryNotFoundError, hub.RemoteEntryNotFoundError)):
        return errors.ModelNotFound(
            f"{name}: model not found on the hub (check the id, or the token for a private one)"
        )
    if isinstance(error, hub.OfflineModeIsEnabled):
        return errors.ModelNotFound(f"{name}: not a local folder, and HF_HUB_OFFLINE is set")
    if isinstance(error, hub.HfHubHTTPError):
        return errors.ConversionError(f"{name}: the hub answered {type(error).__name__}")
    # Connection failures surface as the HTTP client's own exception types.
    return errors.ConversionError(f"{name}: cannot reach the Hugging Face hub ({type(error).__name__})")


def resolve_hub(repo_id: str, revision: str | None) -> ModelSource:
    """Look the model up without downloading weights: revision, size, architecture."""
    from huggingface_hub import HfApi, hf_hub_download  # noqa: PLC0415

    token = hf_token()
    try:
        info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
        config_path = hf_hub_download(repo_id, "config.json", revision=info.sha, token=token)
    except Exception as error:
        raise _hub_errors(repo_id, error) from None
    architecture = _check_architecture(repo_id, json.loads(Path(config_path).read_text()))
    size = sum((s.size or 0) for s in (info.siblings or []) if s.rfilename.endswith(".safetensors"))
    return ModelSource(repo_id, info.sha or revision or "main", False, size, architecture)


def download(source: ModelSource, into: Path, allow: list[str] | None = None) -> Path:
    """Fetch a hub model (weights, config, tokenizer) into `into`; local folders are used in place."""
    if source.local:
        return Path(source.id)
    from huggingface_hub import snapshot_download  # noqa: PLC0415

    try:
        path = snapshot_download(
            source.id,
            revision=source.revision,
            token=hf_token(),
            local_dir=into,
            allow_patterns=allow or ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja"],
        )
    except Exception as error:
        raise _hub_errors(source.id, error) from None
    return Path(path)


def resolve(name: str, revision: str | None) -> ModelSource:
    folder = Path(name)
    if folder.exists():
        if revision:
            raise errors.UsageError(f"--revision {revision} applies to hub models; {name} is a local folder")
        return resolve_local(folder)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise errors.ModelNotFound(f"{name}: no such folder")
    return resolve_hub(name, revision)
