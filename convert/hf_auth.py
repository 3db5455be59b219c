"""The Hugging Face token: from the file HF_TOKEN_PATH (a mounted Secret) or HF_TOKEN. Never logged."""

import os
from pathlib import Path


def hf_token() -> str | None:
    path = os.environ.get("HF_TOKEN_PATH")
    if path:
        token_file = Path(path)
        if token_file.is_file():
            token = token_file.read_text().strip()
            return token or None
    return os.environ.get("HF_TOKEN") or None
