"""``hfray export ARTIFACT --onnx [--int8]``: an artifact as ONNX (optionally int8) for CPU serving.

Flags are checked before anything is loaded; the work is :func:`hfray.artifacts.onnx_export.export_onnx`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hfray.errors import HfrayError


def add_export_parser(sub: Any) -> None:
    p = sub.add_parser("export", help="export an artifact to ONNX (--onnx), optionally int8-quantized (--int8)")
    p.add_argument("artifact", help="artifact dir or URI (printed at the end of hfray train)")
    p.add_argument("--onnx", action="store_true", help="export to ONNX (torch.onnx.export) for ONNX Runtime on CPU")
    p.add_argument("--int8", action="store_true", help="with --onnx: int8 weights (ONNX Runtime dynamic quantization)")
    p.add_argument("--out", default=None, help="where the new artifact goes (default: ARTIFACT-onnx[-int8])")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    if args.int8 and not args.onnx:
        raise HfrayError("--int8: quantization applies to the ONNX export; add --onnx")
    if not args.onnx:
        raise HfrayError("hfray export: name the format to export to: --onnx (optionally with --int8)")
    from hfray.artifacts.onnx_export import export_onnx

    manifest = export_onnx(args.artifact, out=args.out, int8=args.int8)
    keys = sorted(k for k in manifest["metrics"] if k.startswith(("validation_accuracy_", "max_abs_logit_diff")))
    print(json.dumps({"artifact": manifest["artifact"], **{k: manifest["metrics"][k] for k in keys}}, indent=2))
    print(f"[hfray] ONNX artifact written to {manifest['artifact']}; serve it with: hfray serve {manifest['artifact']}")
    return 0
