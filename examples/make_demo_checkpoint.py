"""Writes the demo checkpoint the txt2img and img2img examples load: `comfymesh-demo-sd15.safetensors`.

No model can be downloaded here, so the examples run on a tiny *random* SD1.x checkpoint in the real single-file
layout (gpu_executor/diffusion/models/testing.py builds it, once, into .cache/test-models/). Its images are noise
shaped by an untrained network: it shows the pipeline working, not a picture.

    python examples/make_demo_checkpoint.py                 # into the models dir `make run`'s executor reads
    python examples/make_demo_checkpoint.py --out DIR_OR_FILE
    python examples/make_demo_checkpoint.py --upload [--url http://127.0.0.1:8080] [--api-key KEY]

The default destination is `$COMFYMESH_MODELS_DIR/checkpoints/`, or `$COMFYMESH_HOME/models/checkpoints/`
(COMFYMESH_HOME defaults to ./.comfymesh). `--upload` also uploads the file through ModelService (the presigned
upload: the bytes go to the object store, not through the gateway), so executors on other machines find it by name
too; the API key defaults to $COMFYMESH_API_KEY, then the admin key file `$COMFYMESH_HOME/admin.key`. Uploading
again sends nothing: a model of that name with the same sha256 is already there.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gpu_executor.diffusion.models.testing import make_tiny_sd1_checkpoint  # noqa: E402

DEMO_CHECKPOINT = "comfymesh-demo-sd15.safetensors"
DEFAULT_URL = "http://127.0.0.1:8080"
# Fixed, so every machine builds the same bytes (and an upload deduplicates by sha256).
DEMO_SEED = 0
UPLOAD_TIMEOUT_SECONDS = 600.0


class DemoCheckpointError(Exception):
    """The checkpoint could not be delivered; `reason` is the platform's ErrorInfo reason when it answered one."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(f"{message} ({reason})" if reason else message)
        self.reason = reason


def comfymesh_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("COMFYMESH_HOME") or ".comfymesh")


def default_destination(env: Mapping[str, str]) -> Path:
    """Where `make run`'s executor looks for checkpoints (ComfyUI's folder layout)."""
    models = Path(env["COMFYMESH_MODELS_DIR"]) if env.get("COMFYMESH_MODELS_DIR") else comfymesh_home(env) / "models"
    return models / "checkpoints" / DEMO_CHECKPOINT


def resolve_destination(out: Path | None, env: Mapping[str, str]) -> Path:
    """`--out` may name the file or a directory to put it in; without it, the models dir of `make run`."""
    if out is None:
        return default_destination(env)
    return out / DEMO_CHECKPOINT if out.is_dir() else out


def write_checkpoint(destination: Path) -> Path:
    return make_tiny_sd1_checkpoint(destination, DEMO_SEED)


def default_api_key(env: Mapping[str, str]) -> str:
    if env.get("COMFYMESH_API_KEY"):
        return env["COMFYMESH_API_KEY"]
    key_file = comfymesh_home(env) / "admin.key"
    try:
        return key_file.read_text().strip()
    except FileNotFoundError:
        raise DemoCheckpointError(f"no API key: pass --api-key, set COMFYMESH_API_KEY, or start the platform "
                                  f"once so that {key_file} exists") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked(response: httpx.Response, action: str) -> dict[str, Any]:
    """The JSON body of a 2xx answer; otherwise the platform's google.rpc.Status as a DemoCheckpointError."""
    if response.is_success:
        body: dict[str, Any] = response.json()
        return body
    try:
        status = response.json()
    except ValueError:
        raise DemoCheckpointError(f"{action}: HTTP {response.status_code}: {response.text[:200]}") from None
    details = status.get("details") or [{}]
    raise DemoCheckpointError(f"{action}: HTTP {response.status_code}: {status.get('message', '')}",
                              str(details[0].get("reason", "")))


def _put_range(path: Path, offset: int, size: int, url: str) -> None:
    """PUTs `size` bytes from `offset` to a presigned URL (the object store's, so no API key goes with it)."""
    with path.open("rb") as file:
        file.seek(offset)
        data = file.read(size)
    response = httpx.put(url, content=data, timeout=UPLOAD_TIMEOUT_SECONDS, trust_env=False)
    if not response.is_success:
        raise DemoCheckpointError(f"PUT of bytes {offset}..{offset + size} failed: HTTP {response.status_code}")


def _stored(client: httpx.Client, name: str, sha256: str) -> dict[str, Any] | None:
    """The checkpoint model of that name when it already holds these bytes (so nothing needs sending again)."""
    listed = _checked(client.get("/v1/models", params={"kind": "MODEL_KIND_CHECKPOINT", "name_contains": name,
                                                       "page_size": 100}), "listing the models")
    return next((m for m in listed.get("models", []) if m["name"] == name and m.get("sha256") == sha256), None)


def gateway_url(value: str) -> str:
    """The gateway as a URL: `host:port` (what the comfymesh CLI and COMFYMESH_URL also take) means plain http."""
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"


def upload(path: Path, url: str, api_key: str, name: str = DEMO_CHECKPOINT) -> dict[str, Any]:
    """Uploads the checkpoint through ModelService's presigned flow (create → PUT → complete); returns the Model.

    A model of that name with the same sha256 is returned as it is; one with other bytes makes the service refuse
    the upload (ALREADY_EXISTS): delete it first or choose another --name."""
    size = path.stat().st_size
    sha256 = _sha256(path)
    metadata = {"name": name, "kind": "MODEL_KIND_CHECKPOINT", "size_bytes": str(size), "sha256": sha256}
    with httpx.Client(base_url=url, timeout=UPLOAD_TIMEOUT_SECONDS, trust_env=False,
                      headers={"authorization": f"Bearer {api_key}"}) as client:
        stored = _stored(client, name, sha256)
        if stored is not None:
            return stored
        created = _checked(client.post("/v1/modelUploads", json={"metadata": metadata}), "creating the upload")
        if created.get("upload_url"):
            _put_range(path, 0, size, created["upload_url"])
        for part in created.get("parts", []):
            _put_range(path, int(part["offset"]), int(part["size_bytes"]), part["upload_url"])
        return _checked(client.post(f"/v1/modelUploads/{created['upload_id']}:complete", json={}),
                        "completing the upload")


def main(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="the file to write, or a directory to write it in")
    parser.add_argument("--upload", action="store_true", help="also upload it through ModelService")
    parser.add_argument("--url", default=env.get("COMFYMESH_URL") or DEFAULT_URL, help="gateway: host:port or URL")
    parser.add_argument("--api-key", default=None, help="default: $COMFYMESH_API_KEY, then the admin key file")
    parser.add_argument("--name", default=DEMO_CHECKPOINT, help="the model name to upload it as")
    args = parser.parse_args(argv)
    try:
        path = write_checkpoint(resolve_destination(args.out, env))
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
        if args.upload:
            model = upload(path, gateway_url(args.url), args.api_key or default_api_key(env), args.name)
            print(f"uploaded {model['name']} as model {model['model_id']} ({model.get('architecture', '')})")
    except (DemoCheckpointError, httpx.HTTPError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
