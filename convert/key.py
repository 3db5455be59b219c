"""The conversion key: a hash of everything that determines the converted output.

Imported by the Pulumi program (the Job's name carries it) as well as the converter, so it pulls in
nothing heavy. TOOLCHAIN must match convert/requirements.txt (a test checks the installed versions).
"""

import hashlib
import json
from dataclasses import asdict, dataclass

# olive-ai 0.13.0's ModelBuilder pass calls onnxruntime_genai's builder with the pre-0.15 signature
# (0.15.0 added the required `hf_details` argument) and imports `models.quantized_model`, so 0.14.1
# is the newest onnxruntime-genai that works with it. The server image uses the same runtime, so
# what we convert is what we serve.
TOOLCHAIN = {"olive-ai": "0.13.0", "onnxruntime-genai": "0.14.1"}
# Bump when the converter's own behaviour changes the output.
CONVERTER_VERSION = 2  # 2: CPU targets prune the LM head to the last position


@dataclass(frozen=True)
class ConversionSpec:
    source: str  # hub id or local folder
    revision: str  # hub commit/tag, or the sha256 of a local folder's files
    target: str
    method: str  # "olive", "builder" or "prebuilt"
    block_size: int
    accuracy_level: int
    prebuilt: str = ""  # repo[/subfolder] when method is "prebuilt"

    def key(self) -> str:
        payload = {**asdict(self), "toolchain": TOOLCHAIN, "converter": CONVERTER_VERSION}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:16]
