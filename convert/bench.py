"""Conversion benchmark: `python -m convert.bench [--hidden 512 --layers 8] [--methods olive,builder]`.

Builds a random Phi3 test model, converts it to every CPU target with each method, and prints wall
time, output size, size against fp32, load time, top-1 agreement and max logit difference against
PyTorch (all measured in this one run).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from convert import telemetry
from convert.targets import TARGETS
from convert.tiny_model import TinySpec, build

CPU_TARGETS = [name for name, target in TARGETS.items() if target.device == "cpu"]


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m convert.bench", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--methods", default="olive,builder")
    args = parser.parse_args()
    telemetry.disable()
    from convert.pipeline import Request, convert  # noqa: PLC0415 (after telemetry is off)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        spec = TinySpec(
            hidden=args.hidden,
            layers=args.layers,
            heads=args.heads,
            kv_heads=args.heads // 2,
            intermediate=args.hidden * 2,
        )
        source = build(root / "source", spec)
        rows = []
        for method in args.methods.split(","):
            for target in CPU_TARGETS:
                out = root / f"{method}-{target}"
                started = time.perf_counter()
                # The in-process builder prints progress on stdout; keep the table clean.
                with contextlib.redirect_stdout(sys.stderr):
                    result = convert(
                        Request(out=out, model=str(source), target=target, method=method), log=lambda _: None
                    )
                wall = time.perf_counter() - started
                checks = result.manifest["verification"]
                rows.append((method, target, wall, _size(out), checks["load_seconds"], checks["comparison"]))
        fp32 = {m: size for m, t, _, size, _, _ in rows if t == "cpu-fp32"}
        print(
            f"test model: Phi3 hidden {spec.hidden} x {spec.layers} layers, heads {spec.heads}/{spec.kv_heads}, "
            f"source {_size(source) / 2**20:.1f} MiB"
        )
        print(
            f"{'method':8} {'target':9} {'wall s':>7} {'size MiB':>9} {'vs fp32':>8} "
            f"{'load s':>7} {'top-1':>7} {'max |dlogit|':>13}"
        )
        for method, target, wall, size, load, comparison in rows:
            print(
                f"{method:8} {target:9} {wall:7.1f} {size / 2**20:9.2f} {size / fp32[method]:8.2f} {load:7.3f} "
                f"{comparison['top1_agreement']:7.3f} {comparison['max_logit_diff']:13.2e}"
            )


if __name__ == "__main__":
    main()
