"""Models through Envoy: REST uploads (a small file as the client stream's JSON array on `POST /v1/models:upload`, a
large one by the presigned flow whose bytes go to the object store, not the gateway), reads, download URLs, typed
refusals and deletion over REST, and a gRPC stream upload through the gateway."""

from __future__ import annotations

import base64
import hashlib
import io
import pickle
import secrets
from collections.abc import Iterator

import httpx
import pytest

from comfymesh.model.v1 import model_service_pb2 as pb
from comfymesh.model.v1 import model_service_pb2_grpc
from launcher.platform import Endpoints
from services.model.testing import safetensors_bytes
from tests.fixtures.auth import authed_channel, bearer_headers

pytestmark = pytest.mark.e2e


def _http(endpoints: Endpoints) -> httpx.Client:
    return httpx.Client(base_url=f"http://{endpoints.gateway}", timeout=60, trust_env=False,
                        headers=bearer_headers(endpoints.admin_key))


def _lora(rank: int, tag: str) -> bytes:
    layout: dict[str, tuple[int, ...]] = {}
    for name, (cout, cin) in {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768),
                              "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)}.items():
        layout[f"{name}.lora_down.weight"] = (rank, cin)
        layout[f"{name}.lora_up.weight"] = (cout, rank)
    return safetensors_bytes(layout, metadata={"ss_network_dim": str(rank), "tag": tag}, fill="random")


def test_rest_upload_of_a_small_file_as_the_streams_json_array(endpoints: Endpoints) -> None:
    data = _lora(8, secrets.token_hex(4))
    body = [{"metadata": {"name": f"rest/{secrets.token_hex(4)}.safetensors", "kind": "MODEL_KIND_LORA",
                          "size_bytes": str(len(data))}},
            {"chunk": base64.b64encode(data[:1000]).decode()},
            {"chunk": base64.b64encode(data[1000:]).decode()}]
    with _http(endpoints) as http:
        response = http.post("/v1/models:upload", json=body)
        assert response.status_code == 200, response.text
        model = response.json()
        assert (model["architecture"], model["lora_rank"], model["supported_by_builtin_engine"]) == (
            "MODEL_ARCHITECTURE_SD1", 8, True)
        assert model["sha256"] == hashlib.sha256(data).hexdigest()
        assert model["file_metadata"]["ss_network_dim"] == "8"
        got = http.get(f"/v1/models/{model['model_id']}").json()
        assert got["name"] == model["name"]
        listed = http.get("/v1/models", params={"kind": "MODEL_KIND_LORA", "name_contains": model["name"]}).json()
        assert [m["model_id"] for m in listed["models"]] == [model["model_id"]]
        link = http.get(f"/v1/models/{model['model_id']}:downloadUrl").json()
        assert httpx.get(link["url"], timeout=60, trust_env=False).content == data
        assert http.delete(f"/v1/models/{model['model_id']}").status_code == 200
        gone = http.get(f"/v1/models/{model['model_id']}")
        assert (gone.status_code, gone.json()["details"][0]["reason"]) == (404, "MODEL_NOT_FOUND")


def test_rest_presigned_upload_of_a_large_file(endpoints: Endpoints) -> None:
    data = safetensors_bytes({"emb_params": (40_000, 768)}, metadata={"t": secrets.token_hex(4)}, fill="random")
    assert len(data) > 32 << 20  # beyond the gateway's body limit: the bytes go straight to the object store
    name = f"rest/{secrets.token_hex(4)}.safetensors"
    with _http(endpoints) as http:
        created = http.post("/v1/modelUploads", json={"metadata": {
            "name": name, "kind": "MODEL_KIND_EMBEDDING", "size_bytes": str(len(data)),
            "sha256": hashlib.sha256(data).hexdigest()}})
        assert created.status_code == 200, created.text
        upload = created.json()
        urls = [(0, len(data), upload["upload_url"])] if upload.get("upload_url") else [
            (int(p["offset"]), int(p["size_bytes"]), p["upload_url"]) for p in upload["parts"]]
        for offset, size, url in urls:
            put = httpx.put(url, content=data[offset:offset + size], timeout=120, trust_env=False)
            assert put.status_code == 200, put.text
        completed = http.post(f"/v1/modelUploads/{upload['upload_id']}:complete", json={})
        assert completed.status_code == 200, completed.text
        model = completed.json()
        assert (model["name"], model["architecture"], int(model["size_bytes"])) == (
            name, "MODEL_ARCHITECTURE_SD1", len(data))


def test_rest_refusals_are_typed(endpoints: Endpoints) -> None:
    buffer = io.BytesIO()
    pickle.dump({"state_dict": {"w": [0.0] * 64}}, buffer, protocol=4)
    body = [{"metadata": {"name": "evil.safetensors", "kind": "MODEL_KIND_CHECKPOINT"}},
            {"chunk": base64.b64encode(buffer.getvalue()).decode()}]
    with _http(endpoints) as http:
        response = http.post("/v1/models:upload", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["details"][0]["reason"] == "MODEL_FORMAT_UNSAFE"
        by_name = http.post("/v1/modelUploads", json={"metadata": {"name": "sd15.ckpt",
                                                                   "kind": "MODEL_KIND_CHECKPOINT"}})
        assert (by_name.status_code, by_name.json()["details"][0]["reason"]) == (400, "MODEL_FORMAT_UNSAFE")
        private = http.post("/v1/models:import", json={"name": "x.safetensors", "kind": "MODEL_KIND_LORA",
                                                       "url": "http://169.254.169.254/latest/meta-data"})
        assert (private.status_code, private.json()["details"][0]["reason"]) == (400, "URL_NOT_ALLOWED")
        missing = http.get(f"/v1/models/{'0' * 32}")
        assert (missing.status_code, missing.json()["details"][0]["reason"]) == (404, "MODEL_NOT_FOUND")


def test_grpc_stream_upload_through_the_gateway(endpoints: Endpoints) -> None:
    data = _lora(4, secrets.token_hex(4)) + b""
    name = f"grpc/{secrets.token_hex(4)}.safetensors"

    def requests() -> Iterator[pb.UploadModelRequest]:
        yield pb.UploadModelRequest(metadata=pb.UploadModelMetadata(name=name, kind=pb.MODEL_KIND_LORA))
        for i in range(0, len(data), 4096):
            yield pb.UploadModelRequest(chunk=data[i:i + 4096])

    with authed_channel(endpoints.gateway, endpoints.admin_key) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        model = stub.UploadModel(requests(), timeout=60)
        assert (model.name, model.lora_rank, model.architecture) == (name, 4, pb.MODEL_ARCHITECTURE_SD1)
        listed = stub.ListModels(pb.ListModelsRequest(name_contains=name), timeout=10)
        assert [m.model_id for m in listed.models] == [model.model_id]
