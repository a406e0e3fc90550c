"""LoRA merging: the weight change equals up @ down * alpha/rank * strength (computed here with numpy from the file,
read independently with safetensors.numpy), and unapplying restores every weight bit-exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from gpu_executor.diffusion.models.convert import UNetKeyMap
from gpu_executor.diffusion.models.detection import detect_architecture
from gpu_executor.diffusion.models.ldm_layout import unet_layout
from gpu_executor.diffusion.models.loader import LoadedCheckpoint, build_unet
from gpu_executor.diffusion.models.lora import LoraPatcher, load_lora, lora_info
from gpu_executor.diffusion.models.testing import fill_layout, make_tiny_lora, tiny_sd1_unet_config

pytestmark = pytest.mark.unit

# LoRA base name → (module, parameter), written out by hand from the two naming schemes.
EXPECTED_TARGETS = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (
        "unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"),
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k": (
        "unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_attn2_to_out_0": (
        "unet", "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0.weight"),
    "lora_unet_input_blocks_1_1_proj_in": ("unet", "down_blocks.0.attentions.0.proj_in.weight"),  # 1x1 conv
    "lora_unet_input_blocks_1_0_in_layers_2": ("unet", "down_blocks.0.resnets.0.conv1.weight"),  # 3x3 conv
    "lora_te_text_model_encoder_layers_11_mlp_fc2": ("l", "encoder.layers.11.mlp.fc2.weight"),
    "lora_te_text_model_encoder_layers_0_self_attn_v_proj": ("l", "encoder.layers.0.self_attn.v_proj.weight"),
}  # fmt: skip


def _expected_delta(raw: dict[str, np.ndarray], base: str, shape: tuple[int, ...], strength: float) -> np.ndarray:
    up = raw[f"{base}.lora_up.weight"].astype(np.float32)
    down = raw[f"{base}.lora_down.weight"].astype(np.float32)
    rank = down.shape[0]
    alpha = float(raw[f"{base}.alpha"])
    delta = up.reshape(up.shape[0], rank) @ down.reshape(rank, -1) * (alpha / rank) * strength
    return np.asarray(delta, dtype=np.float32).reshape(shape)


def _snapshot(ck: LoadedCheckpoint) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.clone() for k, v in ck.unet.state_dict().items()}
    out.update({f"l.{k}": v.clone() for k, v in ck.text_encoders["l"].state_dict().items()})
    return out


@pytest.mark.slow
def test_lora_changes_weights_by_the_expected_delta_and_unapply_restores(
    tiny_sd1: LoadedCheckpoint, tiny_sd1_path: Path, tmp_path: Path
) -> None:
    path = make_tiny_lora(tmp_path / "style.safetensors", tiny_sd1_path, rank=4, seed=1)
    raw = load_numpy(str(path))
    original = _snapshot(tiny_sd1)
    patcher = LoraPatcher.for_checkpoint(tiny_sd1)
    modules = {"unet": tiny_sd1.unet, "l": tiny_sd1.text_encoders["l"]}
    try:
        report = patcher.apply(path, strength_model=0.7, strength_clip=0.4)
        n_entries = len({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in raw})
        assert report.unmatched == [] and report.applied == n_entries == 46
        for base, (target, param) in EXPECTED_TARGETS.items():
            before = original[f"{target}.{param}"].numpy()
            after = modules[target].state_dict()[param].numpy()
            delta = _expected_delta(raw, base, before.shape, 0.7 if target == "unet" else 0.4)
            assert np.abs(delta).max() > 1e-4
            np.testing.assert_allclose(after, before + delta, rtol=1e-6, atol=1e-6)
        untouched = "down_blocks.0.resnets.0.conv2.weight"
        assert torch.equal(tiny_sd1.unet.state_dict()[untouched], original[f"unet.{untouched}"])

        # A second LoRA adds on top; both are recomputed from the original weight.
        second = make_tiny_lora(tmp_path / "second.safetensors", tiny_sd1_path, rank=2, seed=2, alpha=1.0)
        patcher.apply(second, strength_model=-0.5, strength_clip=0.0)
        raw2 = load_numpy(str(second))
        base, (target, param) = next(iter(EXPECTED_TARGETS.items()))
        before = original[f"{target}.{param}"].numpy()
        both = _expected_delta(raw, base, before.shape, 0.7) + _expected_delta(raw2, base, before.shape, -0.5)
        np.testing.assert_allclose(modules[target].state_dict()[param].numpy(), before + both, rtol=1e-6, atol=1e-6)
    finally:
        patcher.unapply()
    restored = _snapshot(tiny_sd1)
    assert all(torch.equal(restored[k], v) for k, v in original.items())
    assert patcher.patched_parameters == []


@pytest.mark.slow
def test_lora_info(tiny_sd1_path: Path, tmp_path: Path) -> None:
    info = lora_info(make_tiny_lora(tmp_path / "l.safetensors", tiny_sd1_path, rank=8, seed=0))
    assert (info.base, info.rank, info.ranks, info.formats) == ("sd1", 8, (8,), ("kohya",))
    assert info.text_encoder_modules == 12 and info.unet_modules == 34
    assert info.metadata["ss_network_dim"] == "8"


def _small_clip(hidden: int, projection: bool = False) -> torch.nn.Module:
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden)  # fmt: skip
    model: torch.nn.Module = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    return model.eval()


def test_key_layouts_comfyui_accepts_resolve_to_the_same_weights() -> None:
    cfg = tiny_sd1_unet_config(1)
    arch = detect_architecture({"model.diffusion_model." + k: v for k, v in unet_layout(cfg).items()})
    unet, key_map = build_unet(arch, fill_layout(unet_layout(cfg), 0), device="cpu", dtype=torch.float32)
    patcher = LoraPatcher({"unet": unet, "l": _small_clip(64), "g": _small_clip(96, projection=True)}, key_map)
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    out0 = "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0"
    lora = load_lora(
        {
            "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, 2),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 1),
            f"unet.{q}.lora_A.weight": torch.zeros(2, 320),
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": torch.zeros(1),
            "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor.to_out.lora.up.weight": torch.zeros(1),
            "diffusion_model.output_blocks.1.1.transformer_blocks.0.attn2.to_out.0.diff": torch.zeros(1),
            "lycoris_down_blocks_0_resnets_0_conv1.lora_up.weight": torch.zeros(1),
            "lora_te1_text_model_encoder_layers_1_self_attn_k_proj.lora_up.weight": torch.zeros(1),
            "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": torch.zeros(1),
            "lora_te2_text_model_encoder_layers_1_mlp_fc2.lora_up.weight": torch.zeros(1),
            "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(1),
            "lora_te2_text_projection.lora_up.weight": torch.zeros(1),
            "lora_unet_no_such_layer.lora_up.weight": torch.zeros(1),
            "lora_unet_down_blocks_0_resnets_0_conv2.hada_w1_a": torch.zeros(1),
        }
    )
    found, unmatched = patcher.resolve(lora)
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert found[base] == found["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"] == ("unet", q)
    assert found[f"unet.{q}"] == found["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q"]
    assert found["up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor.to_out"] == ("unet", out0)
    assert found["diffusion_model.output_blocks.1.1.transformer_blocks.0.attn2.to_out.0"] == ("unet", out0)
    assert found["lycoris_down_blocks_0_resnets_0_conv1"] == ("unet", "down_blocks.0.resnets.0.conv1")
    assert found["lora_te1_text_model_encoder_layers_1_self_attn_k_proj"][0] == "l"
    assert found["text_encoder.text_model.encoder.layers.0.mlp.fc1"][0] == "l"
    assert found["lora_te2_text_model_encoder_layers_1_mlp_fc2"][0] == "g"
    assert found["text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj"][0] == "g"
    assert found["lora_te2_text_projection"] == ("g", "text_projection")
    assert unmatched == ["lora_unet_no_such_layer"]
    assert lora.entries["lora_unet_down_blocks_0_resnets_0_conv2"].unsupported == {"loha"}
    assert UNetKeyMap(cfg).to_ldm(q + ".weight") == "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
