"""Build tiny random test models in real single-file layouts (nothing is downloaded).

    tools/make_tiny_checkpoint.py checkpoint OUT.safetensors [--seed N] [--levels 1|2] [--dtype fp16|fp32|bf16]
    tools/make_tiny_checkpoint.py lora OUT.safetensors --checkpoint CKPT [--rank R] [--seed N] [--alpha A]
    tools/make_tiny_checkpoint.py controlnet OUT.safetensors [--checkpoint CKPT | --levels 1|2] [--layout ldm|diffusers]

``checkpoint`` writes an SD1.x single-file checkpoint (LDM keys: ``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.text_model.*``) with a small UNet (model_channels 320, context 768), a VAE with the
standard encoder and a narrow decoder, and a full-shape CLIP-L (~123M parameters). The file is built once per
parameter set into ``$COMFYMESH_TEST_MODEL_CACHE`` (default ``<repo>/.cache/test-models/``) and linked or copied to
OUT. See gpu_executor/diffusion/models/testing.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpu_executor.diffusion.models.safetensors_file import read_header  # noqa: E402
from gpu_executor.diffusion.models.testing import (  # noqa: E402
    make_tiny_controlnet,
    make_tiny_lora,
    make_tiny_sd1_checkpoint,
)


def _summary(path: Path) -> str:
    header = read_header(path)
    groups: dict[str, int] = {}
    for key, info in header.tensors.items():
        group = key.split(".")[0]
        groups[group] = groups.get(group, 0) + info.numel
    parts = ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in sorted(groups.items()) if v >= 100_000)
    return f"{path}: {len(header.tensors)} tensors, {path.stat().st_size / 1e6:.1f} MB ({parts})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    ck = sub.add_parser("checkpoint", help="a tiny SD1.x single-file checkpoint")
    ck.add_argument("out", type=Path)
    ck.add_argument("--seed", type=int, default=0)
    ck.add_argument("--levels", type=int, choices=(1, 2), default=1)
    ck.add_argument("--dtype", choices=("fp16", "fp32", "bf16"), default="fp16")
    lo = sub.add_parser("lora", help="a kohya-format LoRA for a checkpoint")
    lo.add_argument("out", type=Path)
    lo.add_argument("--checkpoint", type=Path, required=True)
    lo.add_argument("--rank", type=int, default=4)
    lo.add_argument("--seed", type=int, default=0)
    lo.add_argument("--alpha", type=float, default=None)
    cn = sub.add_parser("controlnet", help="a ControlNet for the tiny UNet (or a checkpoint's UNet)")
    cn.add_argument("out", type=Path)
    cn.add_argument("--checkpoint", type=Path, default=None)
    cn.add_argument("--levels", type=int, choices=(1, 2), default=1)
    cn.add_argument("--seed", type=int, default=0)
    cn.add_argument("--layout", choices=("ldm", "diffusers"), default="ldm")
    args = parser.parse_args(argv)

    if args.what == "checkpoint":
        path = make_tiny_sd1_checkpoint(args.out, args.seed, levels=args.levels, dtype=args.dtype)
    elif args.what == "lora":
        path = make_tiny_lora(args.out, args.checkpoint, rank=args.rank, seed=args.seed, alpha=args.alpha)
    else:
        path = make_tiny_controlnet(
            args.out, checkpoint_path=args.checkpoint, levels=args.levels, seed=args.seed, layout=args.layout
        )
    print(_summary(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
