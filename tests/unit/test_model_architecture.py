"""Header-only model description (services/model/architecture.py): the control plane's detection agrees with the
executor's loader detection (gpu_executor/diffusion/models/detection.py) on every layout the executor's own tests
use, and LoRAs, VAEs, ControlNets, embeddings and text encoders are described from their real key names."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping

import pytest

torch = pytest.importorskip("torch")

from gpu_executor.diffusion.models import testing as executor_models  # noqa: E402
from gpu_executor.diffusion.models.convert import UNetKeyMap  # noqa: E402
from gpu_executor.diffusion.models.detection import SD2_V_PROBE_KEY, detect_architecture  # noqa: E402
from gpu_executor.diffusion.models.ldm_layout import (  # noqa: E402
    CLIP_L,
    clip_transformers_layout,
    controlnet_layout,
    prefixed,
    unet_layout,
    vae_layout,
)
from services.model.architecture import (  # noqa: E402
    OTHER_FAMILIES,
    content_kind,
    describe,
    detect_diffusion_model,
    sd2_probe_keys,
)
from services.model.domain import Architecture, ModelKind  # noqa: E402
from services.model.safetensors_header import SafetensorsHeader, TensorInfo  # noqa: E402

pytestmark = pytest.mark.unit
Layout = Mapping[str, tuple[int, ...]]
SIZES = {"F16": 2, "F32": 4, "BF16": 2, "F8_E8M0": 1}


def header(layout: Layout, *, dtype: str = "F16", metadata: Mapping[str, str] | None = None) -> SafetensorsHeader:
    tensors, offset = {}, 0
    for name in sorted(layout):
        size = SIZES[dtype]
        for d in layout[name]:
            size *= d
        tensors[name] = TensorInfo(dtype, tuple(layout[name]), offset, offset + size)
        offset += size
    return SafetensorsHeader(header_size=0, tensors=tensors, metadata=dict(metadata or {}), data_size=offset)


def _same(layout: Layout) -> None:
    theirs = detect_architecture(layout)
    ours = detect_diffusion_model(layout)
    assert (ours.family, ours.supported, ours.variant) == (theirs.family, theirs.supported, theirs.variant)
    assert ours.prediction == theirs.prediction
    assert ours.text_encoders[:len(theirs.text_encoder_names)] == theirs.text_encoder_names
    if theirs.unet is not None:
        assert ours.unet is not None
        assert (ours.unet.model_channels, ours.unet.context_dim, ours.unet.adm_in_channels,
                ours.unet.channel_mult) == (theirs.unet.model_channels, theirs.unet.context_dim,
                                            theirs.unet.adm_in_channels, theirs.unet.channel_mult)


@pytest.mark.parametrize("name", sorted(executor_models.SHAPE_LAYOUTS))
def test_full_size_checkpoints_are_detected_as_the_executor_detects_them(name: str) -> None:
    _same(executor_models.shape_layout(name))


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_tiny_checkpoints_are_detected_as_the_executor_detects_them(name: str) -> None:
    builders: dict[str, Callable[[], Layout]] = {
        "sd1": executor_models.tiny_sd1_layout, "sd2": executor_models.tiny_sd2_layout,
        "sdxl": executor_models.tiny_sdxl_layout, "sdxl_refiner": lambda: executor_models.tiny_sdxl_layout(True)}
    layout = builders[name]()
    _same(layout)


@pytest.mark.parametrize(("name", "architecture", "supported"), [
    ("sd1", Architecture.SD1, True), ("sdxl", Architecture.SDXL, True),
    ("sdxl_refiner", Architecture.SDXL_REFINER, True), ("sd3", Architecture.SD3, False),
    ("flux", Architecture.FLUX, False), ("flux_schnell", Architecture.FLUX, False),
])
def test_checkpoint_descriptions(name: str, architecture: Architecture, supported: bool) -> None:
    description = describe(ModelKind.CHECKPOINT, header(executor_models.shape_layout(name)))
    assert (description.architecture, description.supported) == (architecture, supported)
    assert description.properties["detected_kind"] == "checkpoint"
    if not supported:
        assert "not supported by the built-in engine" in description.properties["unsupported_reason"]
    if name == "flux":
        assert description.properties["variant"] == "dev"
        assert description.properties["dit_depth"] == 19


def test_the_diffusers_layout_is_detected_too() -> None:
    cfg = executor_models.tiny_sd1_unet_config()
    diffusers = UNetKeyMap(cfg).convert(unet_layout(cfg))
    _same(diffusers)
    assert detect_diffusion_model(diffusers).layout == "diffusers"


@pytest.mark.parametrize("v", [True, False])
def test_sd2_v_prediction_is_read_from_the_probe_bytes(v: bool) -> None:
    layout = executor_models.tiny_sd2_layout()
    probe = executor_models.sd2_v_probe(v)
    (key, tensor), = probe.items()
    assert key == "model.diffusion_model." + SD2_V_PROBE_KEY
    file_header = header(layout)
    assert sd2_probe_keys(file_header) == [key]
    data = tensor.to(torch.float16).numpy().tobytes()
    description = describe(ModelKind.CHECKPOINT, file_header, {key: data})
    assert description.architecture == (Architecture.SD2_V if v else Architecture.SD2)
    assert description.properties["prediction"] == ("v" if v else "eps")
    theirs = detect_architecture(layout, get_tensor=lambda k: probe[k])
    assert theirs.prediction == description.properties["prediction"]
    # Without the probe's bytes SD2 is still SD2, its prediction unknown (as the executor says without tensors).
    assert describe(ModelKind.CHECKPOINT, file_header).properties["prediction"] == "unknown"


def test_bf16_probe_bytes_decode() -> None:
    layout = executor_models.tiny_sd2_layout()
    (key, tensor), = executor_models.sd2_v_probe(True).items()
    data = tensor.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    description = describe(ModelKind.CHECKPOINT, header(layout, dtype="BF16"), {key: data})
    assert description.architecture == Architecture.SD2_V


@pytest.mark.parametrize(("family", "marker", "_prediction"), OTHER_FAMILIES)
def test_other_families_are_recognised_not_misdetected(family: str, marker: str, _prediction: str) -> None:
    layout = {"model.diffusion_model." + marker: (8, 8), "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3)}
    theirs, ours = detect_architecture(layout), detect_diffusion_model(layout)
    assert (ours.family, ours.supported) == (theirs.family, False)
    assert ours.architecture != Architecture.UNSPECIFIED


def test_a_bare_unet_is_a_diffusion_model() -> None:
    layout = unet_layout(executor_models.tiny_sd1_unet_config())
    assert content_kind(layout) == "diffusion_model"
    description = describe(ModelKind.DIFFUSION_MODEL, header(layout))
    assert (description.architecture, description.supported) == (Architecture.SD1, True)


def test_no_model_in_a_checkpoint_is_unspecified() -> None:
    description = describe(ModelKind.CHECKPOINT, header({"something.else": (3, 3)}))
    assert (description.architecture, description.supported) == (Architecture.UNSPECIFIED, False)


# -- LoRA ---------------------------------------------------------------------------------------------------------


def test_a_kohya_lora_made_for_the_tiny_sd1_checkpoint(tmp_path: object) -> None:
    from safetensors import safe_open

    checkpoint = executor_models.make_tiny_sd1_checkpoint()
    path = executor_models.make_tiny_lora(f"{tmp_path}/lora.safetensors", checkpoint, rank=8)
    with safe_open(str(path), "pt") as f:
        layout = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        metadata = f.metadata()
    assert content_kind(layout) == "lora"
    description = describe(ModelKind.LORA, header(layout, metadata=metadata))
    assert (description.architecture, description.lora_rank, description.supported) == (Architecture.SD1, 8, True)
    assert description.file_metadata["ss_network_dim"] == "8"
    assert set(description.properties["lora_targets"]) == {"unet", "text_encoder"}


def _kohya(pairs: Mapping[str, tuple[int, int]], rank: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for name, (cout, cin) in pairs.items():
        out[f"{name}.lora_down.weight"] = (rank, cin)
        out[f"{name}.lora_up.weight"] = (cout, rank)
        out[f"{name}.alpha"] = ()
    return out


@pytest.mark.parametrize(("layout", "architecture", "rank", "supported"), [
    (_kohya({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k": (640, 2048),
             "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
             "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280)}, 16),
     Architecture.SDXL, 16, True),
    (_kohya({"lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
             "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280)}, 4),
     Architecture.SDXL, 4, True),
    ({"unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (32, 1024),
      "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (640, 32)},
     Architecture.SD2, 32, True),
    (_kohya({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (1024, 1024)}, 8), Architecture.SD2, 8, True),
    ({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (16, 3072),
      "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": (3072, 16)}, Architecture.FLUX, 16, False),
    (_kohya({"lora_unet_double_blocks_0_img_attn_qkv": (9216, 3072)}, 64), Architecture.FLUX, 64, False),
    (_kohya({"lora_unet_joint_blocks_0_x_block_attn_qkv": (4608, 1536)}, 8), Architecture.SD3, 8, False),
    ({"lora_unet_input_blocks_4_1_proj_in.hada_w1_a": (320, 8), "lora_unet_input_blocks_4_1_proj_in.hada_w1_b":
      (8, 320), "lora_unet_input_blocks_4_1_proj_in.hada_w2_a": (320, 8),
      "lora_unet_input_blocks_4_1_proj_in.hada_w2_b": (8, 320)}, Architecture.UNSPECIFIED, 8, False),
])
def test_lora_base_architecture_and_rank(layout: Layout, architecture: Architecture, rank: int,
                                         supported: bool) -> None:
    description = describe(ModelKind.LORA, header(layout))
    assert (description.architecture, description.lora_rank, description.supported) == (architecture, rank,
                                                                                          supported)


def test_lora_base_from_training_metadata_when_keys_cannot_tell() -> None:
    layout = _kohya({"lora_unet_middle_block_1_proj_in": (1280, 1280)}, 4)
    description = describe(ModelKind.LORA, header(layout, metadata={"ss_base_model_version": "sdxl_base_v1-0"}))
    assert description.architecture == Architecture.SDXL


# -- other kinds --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("z", "prefix", "architecture", "supported"), [
    (4, "", Architecture.UNSPECIFIED, True), (4, "first_stage_model.", Architecture.UNSPECIFIED, True),
    (16, "", Architecture.OTHER, False),
])
def test_vaes(z: int, prefix: str, architecture: Architecture, supported: bool) -> None:
    layout = prefixed(vae_layout(z_channels=z), prefix)
    assert content_kind(layout) == "vae"
    description = describe(ModelKind.VAE, header(layout))
    assert (description.architecture, description.supported, description.properties["latent_channels"]) == (
        architecture, supported, z)


def test_controlnets() -> None:
    cfg = executor_models.tiny_sd1_unet_config()
    layout = prefixed(controlnet_layout(cfg), "control_model.")
    assert content_kind(layout) == "controlnet"
    description = describe(ModelKind.CONTROLNET, header(layout))
    assert (description.architecture, description.supported) == (Architecture.SD1, True)
    dit = describe(ModelKind.CONTROLNET, header({"controlnet_blocks.0.weight": (3072, 3072),
                                                 "controlnet_single_blocks.0.weight": (3072, 3072)}))
    assert (dit.architecture, dit.supported) == (Architecture.FLUX, False)
    union = describe(ModelKind.CONTROLNET, header({**layout, "control_add_embedding.linear_1.weight": (1280, 256)}))
    assert union.supported is False


def test_embeddings_and_text_encoders() -> None:
    sd1 = describe(ModelKind.EMBEDDING, header({"emb_params": (4, 768)}))
    assert (sd1.architecture, sd1.properties["vectors"]) == (Architecture.SD1, 4)
    sdxl = describe(ModelKind.EMBEDDING, header({"clip_l": (2, 768), "clip_g": (2, 1280)}))
    assert sdxl.architecture == Architecture.SDXL
    clip = describe(ModelKind.TEXT_ENCODER, header(clip_transformers_layout(CLIP_L)))
    assert (clip.properties["text_encoder"], clip.supported) == ("clip_l", True)
    t5 = describe(ModelKind.TEXT_ENCODER, header({"encoder.block.0.layer.0.SelfAttention.q.weight": (64, 64),
                                                  "shared.weight": (100, 64)}))
    assert (t5.properties["text_encoder"], t5.supported) == ("t5", False)


def test_parameters_dtypes_and_unsupported_dtypes() -> None:
    layout = {"emb_params": (4, 768)}
    description = describe(ModelKind.EMBEDDING, header(layout, dtype="F32"))
    assert (description.parameter_count, description.dtypes) == (4 * 768, ("F32",))
    lora = _kohya({"lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)}, 4)
    odd = describe(ModelKind.LORA, header(lora, dtype="F8_E8M0"))
    assert odd.supported is False
    assert odd.properties["unsupported_dtypes"] == ["F8_E8M0"]


def test_struct_decoding_matches_torch() -> None:
    from services.model.architecture import decode_floats

    values = torch.tensor([0.5, -1.25, 3.0])
    assert decode_floats("F16", values.half().numpy().tobytes()) == [0.5, -1.25, 3.0]
    assert decode_floats("F32", values.numpy().tobytes()) == [0.5, -1.25, 3.0]
    assert decode_floats("BF16", values.bfloat16().view(torch.int16).numpy().tobytes()) == [0.5, -1.25, 3.0]
    assert decode_floats("I8", struct.pack("<3b", 1, 2, 3)) is None
