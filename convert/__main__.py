"""`python -m convert --model SOURCE --target TARGET --out DIR`: one line per error, non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from convert import errors, interrupt, telemetry
from convert.targets import DEFAULT_TARGET, TARGETS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert a Hugging Face causal LM into an onnxruntime-genai model folder.",
    )
    parser.add_argument("--model", help="hub id (e.g. microsoft/Phi-4-mini-instruct) or a local model folder")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit); default: main")
    parser.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"one of {', '.join(TARGETS)} (default {DEFAULT_TARGET})"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created atomically)")
    parser.add_argument("--method", default="olive", help="olive (default) or builder (onnxruntime-genai directly)")
    parser.add_argument("--block-size", type=int, default=32, help="int4 quantization block size (default 32)")
    parser.add_argument(
        "--accuracy-level", type=int, default=4, help="int4 MatMulNBits accuracy level (default 4: int8)"
    )
    parser.add_argument("--force", action="store_true", help="replace an output folder from a different conversion")
    parser.add_argument(
        "--prebuilt", help="fetch an already converted repository (hub id or folder) instead of converting"
    )
    parser.add_argument("--prebuilt-subfolder", help="sub-folder of the prebuilt repository (default: by target)")
    parser.add_argument("--no-compare", action="store_true", help="skip the logit comparison with the source model")
    parser.add_argument("--threads", type=int, help="intra-op threads for verification (default: CPUs available)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    interrupt.install()
    telemetry.disable()
    from convert.pipeline import Request, convert  # noqa: PLC0415 (after telemetry is off)

    request = Request(
        out=args.out,
        model=args.model,
        revision=args.revision,
        target=args.target,
        method=args.method,
        block_size=args.block_size,
        accuracy_level=args.accuracy_level,
        force=args.force,
        prebuilt=args.prebuilt,
        prebuilt_subfolder=args.prebuilt_subfolder,
        compare=not args.no_compare,
        threads=args.threads,
    )
    try:
        result = convert(request)
    except errors.ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(json.dumps({"status": result.status, "key": result.key, "out": str(result.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
