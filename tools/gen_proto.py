"""Regenerates everything under gen/ from proto/ (`make proto`).

Outputs, all committed:
- gen/comfymesh/**/_pb2.py, _pb2_grpc.py: messages and gRPC stubs (grpcio-tools);
- gen/comfymesh/**/_pb2.pyi, _pb2_grpc.pyi: type stubs (mypy-protobuf);
- gen/descriptor/comfymesh.binpb: the FileDescriptorSet Envoy's transcoder loads, with every import
  (google/api, google/rpc including error_details for `convert_grpc_status`) and source info.

It also refreshes third_party/googleapis (ignored by git) from the pinned googleapis-common-protos, so buf can
lint and check breaking changes offline. googleapis' own _pb2 modules come from that package at run time; they are
never generated here (duplicate registrations otherwise).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = ROOT / "gen"
DESCRIPTOR = GEN_DIR / "descriptor" / "comfymesh.binpb"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
GOOGLEAPIS_FILES = ("google/api", "google/rpc", "google/type")
# Compiled into the descriptor set even though no ComfyMesh proto imports it: Envoy needs it to render
# ErrorInfo / BadRequest details as JSON.
EXTRA_DESCRIPTOR_FILES = ("google/rpc/error_details.proto",)


def googleapis_root() -> Path:
    root = Path(sysconfig.get_paths()["purelib"])
    if not (root / "google" / "api" / "annotations.proto").exists():
        sys.exit("googleapis-common-protos is not installed in this environment (pip install -e '.[dev]')")
    return root


def vendor_googleapis(src_root: Path) -> None:
    """Copies googleapis .proto files for buf, which cannot fetch modules offline."""
    if THIRD_PARTY.exists():
        shutil.rmtree(THIRD_PARTY)
    for sub in GOOGLEAPIS_FILES:
        for proto in sorted((src_root / sub).glob("*.proto")):
            target = THIRD_PARTY / proto.relative_to(src_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(proto, target)


def protoc(args: list[str]) -> None:
    bin_dir = Path(sys.executable).parent
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
           f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}", *args]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"protoc failed:\n{result.stderr}")


def main() -> None:
    api_root = googleapis_root()
    vendor_googleapis(api_root)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    if GEN_DIR.exists():
        shutil.rmtree(GEN_DIR)
    DESCRIPTOR.parent.mkdir(parents=True)
    includes = [f"-I{PROTO_DIR}", f"-I{THIRD_PARTY}"]
    protoc([*includes, f"--python_out={GEN_DIR}", f"--grpc_python_out={GEN_DIR}",
            f"--mypy_out={GEN_DIR}", f"--mypy_grpc_out={GEN_DIR}", *protos])
    protoc([*includes, "--include_imports", "--include_source_info", f"--descriptor_set_out={DESCRIPTOR}",
            *protos, *EXTRA_DESCRIPTOR_FILES])
    # Typed, importable packages: `comfymesh` stays a namespace package (the SDK shares it); below it, regular ones.
    for directory in sorted(p for p in (GEN_DIR / "comfymesh").rglob("*") if p.is_dir()):
        (directory / "__init__.py").touch()
    (GEN_DIR / "comfymesh" / "py.typed").touch()
    print(f"generated {len(protos)} protos into {GEN_DIR.relative_to(ROOT)}/ and {DESCRIPTOR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
