"""Loading the tiny SD1 checkpoint (real single-file layout, full-shape CLIP-L) and its parts as standalone files,
checked against diffusers' own single-file converters and an independent OpenCLIP reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import save_file
from transformers import CLIPTextModel

from gpu_executor.diffusion.models import vae as vae_ops
from gpu_executor.diffusion.models.errors import CorruptModelFile, UnsupportedModelError
from gpu_executor.diffusion.models.ldm_layout import ClipShape
from gpu_executor.diffusion.models.loader import LoadedCheckpoint, load_checkpoint, load_clip, load_unet, load_vae
from gpu_executor.diffusion.models.safetensors_file import load_tensors
from gpu_executor.diffusion.models.testing import make_open_clip_text_encoder

pytestmark = pytest.mark.unit
slow = pytest.mark.slow


@slow
def test_checkpoint_modules(tiny_sd1: LoadedCheckpoint) -> None:
    ck = tiny_sd1
    assert ck.architecture.family == "sd1" and ck.prediction == "eps" and ck.latent_scale == 0.18215
    assert set(ck.text_encoders) == {"l"}
    assert ck.vae is not None
    for module in (ck.unet, ck.vae, ck.text_encoders["l"]):
        assert not module.training
        assert all(not p.requires_grad and p.dtype == torch.float32 and not p.is_meta for p in module.parameters())
    te = ck.text_encoders["l"]
    assert te.config.num_hidden_layers == 12 and te.config.hidden_size == 768 and te.config.vocab_size == 49408
    assert sum(p.numel() for p in te.parameters()) == 123_060_480
    ids = torch.tensor([[49406, 320, 1929, 49407] + [49407] * 73])
    with torch.no_grad():
        out = te(ids, output_hidden_states=True)
        noise = ck.unet(torch.randn(1, 4, 8, 8), torch.tensor([999]), encoder_hidden_states=out.last_hidden_state)
    assert out.last_hidden_state.shape == (1, 77, 768) and len(out.hidden_states) == 13
    assert out.pooler_output.shape == (1, 768)
    assert noise.sample.shape == (1, 4, 8, 8) and torch.isfinite(noise.sample).all()


@slow
def test_conversion_agrees_with_diffusers_single_file_utils(tiny_sd1: LoadedCheckpoint, tiny_sd1_path: Path) -> None:
    raw = load_tensors(tiny_sd1_path, dtype=torch.float32)
    convert_unet: Any = convert_ldm_unet_checkpoint  # untyped in diffusers
    convert_vae: Any = convert_ldm_vae_checkpoint
    ref_unet = convert_unet(raw, dict(tiny_sd1.unet.config))
    mine = tiny_sd1.unet.state_dict()
    assert set(ref_unet) == set(mine)
    assert all(torch.equal(ref_unet[k].float(), mine[k]) for k in mine)
    assert tiny_sd1.vae is not None
    ref_vae = convert_vae(raw, dict(tiny_sd1.vae.config))
    mine_vae = tiny_sd1.vae.state_dict()
    assert set(ref_vae) == set(mine_vae)
    assert all(torch.equal(ref_vae[k].float().reshape(v.shape), v) for k, v in mine_vae.items())


@slow
def test_vae_round_trip_preserves_shape(tiny_sd1: LoadedCheckpoint) -> None:
    assert tiny_sd1.vae is not None
    pixels = torch.rand(2, 70, 45, 3)
    latent = vae_ops.encode(tiny_sd1.vae, pixels)
    assert latent.shape == (2, 4, 8, 5) and latent.dtype == torch.float32
    image = vae_ops.decode(tiny_sd1.vae, latent)
    assert image.shape == (2, 64, 40, 3)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    scaled = vae_ops.process_in(latent, tiny_sd1.latent_scale)
    assert torch.allclose(vae_ops.process_out(scaled, tiny_sd1.latent_scale), latent)


@slow
def test_component_files(tiny_sd1: LoadedCheckpoint, tiny_sd1_path: Path, tmp_path: Path) -> None:
    """UNETLoader, VAELoader and CLIPLoader inputs cut from the checkpoint, in the layouts ComfyUI accepts."""
    unet_file = tmp_path / "unet.safetensors"
    save_file(load_tensors(tiny_sd1_path, prefix="model.diffusion_model.", strip_prefix=True), unet_file)
    loaded = load_unet(unet_file)
    assert loaded.architecture.family == "sd1" and loaded.unet_key_map.cfg == tiny_sd1.architecture.unet
    assert all(torch.equal(v, tiny_sd1.unet.state_dict()[k]) for k, v in loaded.unet.state_dict().items())

    vae_file = tmp_path / "vae-ft-mse.safetensors"
    save_file(load_tensors(tiny_sd1_path, prefix="first_stage_model.", strip_prefix=True), vae_file)
    vae = load_vae(vae_file)
    assert tiny_sd1.vae is not None
    assert all(torch.equal(v, tiny_sd1.vae.state_dict()[k]) for k, v in vae.state_dict().items())
    diffusers_vae = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_sd1.vae.state_dict().items()}, diffusers_vae)
    with pytest.raises(UnsupportedModelError, match="different decoder width"):
        load_vae(diffusers_vae)

    te_file = tmp_path / "clip_l.safetensors"
    te = load_tensors(tiny_sd1_path, prefix="cond_stage_model.transformer.", strip_prefix=True)
    te["text_projection.weight"] = torch.eye(768)  # SD3-style clip_l files carry a projection; CLIPTextModel drops it
    save_file(te, te_file)
    clip = load_clip(te_file, "l")
    assert isinstance(clip, CLIPTextModel)
    ref = tiny_sd1.text_encoders["l"].state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in clip.state_dict().items())
    with pytest.raises(UnsupportedModelError, match="asked for text encoder 'g'"):
        load_clip(te_file, "g")


def _open_clip_reference(tensors: dict[str, torch.Tensor], shape: ClipShape, ids: torch.Tensor) -> torch.Tensor:
    """OpenCLIP's text tower re-built from torch.nn pieces: pre-LN residual blocks with nn.MultiheadAttention (which
    takes the fused in_proj weights as stored), causal mask, GELU MLP, final LayerNorm."""
    d, heads = shape.hidden_size, shape.hidden_size // 64
    x = tensors["token_embedding.weight"][ids] + tensors["positional_embedding"][: ids.shape[1]]
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    for i in range(shape.num_layers):
        p = f"transformer.resblocks.{i}."
        layer = torch.nn.TransformerEncoderLayer(
            d, heads, shape.intermediate_size, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        ).eval()
        layer.load_state_dict(
            {
                "self_attn.in_proj_weight": tensors[p + "attn.in_proj_weight"],
                "self_attn.in_proj_bias": tensors[p + "attn.in_proj_bias"],
                "self_attn.out_proj.weight": tensors[p + "attn.out_proj.weight"],
                "self_attn.out_proj.bias": tensors[p + "attn.out_proj.bias"],
                "linear1.weight": tensors[p + "mlp.c_fc.weight"],
                "linear1.bias": tensors[p + "mlp.c_fc.bias"],
                "linear2.weight": tensors[p + "mlp.c_proj.weight"],
                "linear2.bias": tensors[p + "mlp.c_proj.bias"],
                "norm1.weight": tensors[p + "ln_1.weight"],
                "norm1.bias": tensors[p + "ln_1.bias"],
                "norm2.weight": tensors[p + "ln_2.weight"],
                "norm2.bias": tensors[p + "ln_2.bias"],
            }
        )
        x = layer(x, src_mask=mask)
    return torch.nn.functional.layer_norm(x, (d,), tensors["ln_final.weight"], tensors["ln_final.bias"])


@pytest.mark.parametrize(("kind", "prefix"), [("h", "cond_stage_model.model."), ("g", "")])
def test_open_clip_layout_text_encoder_matches_reference(tmp_path: Path, kind: str, prefix: str) -> None:
    shape = ClipShape(hidden_size=128, num_layers=2, intermediate_size=256, projection_dim=96)
    path = make_open_clip_text_encoder(tmp_path / f"clip_{kind}.safetensors", shape, seed=3, prefix=prefix)
    model = load_clip(path, None if kind == "h" else "g")
    tensors = load_tensors(path, prefix=prefix, strip_prefix=True)
    ids = torch.tensor([[49406, 5, 17, 49407, 0, 0, 0]])
    with torch.no_grad():
        out = model(ids)
        ref = _open_clip_reference(tensors, shape, ids)
    assert torch.allclose(out.last_hidden_state, ref, atol=1e-5)
    if kind == "g":  # projected pooled output: ln_final(x)[first end token] @ text_projection
        assert torch.allclose(out.text_embeds, ref[0, 3] @ tensors["text_projection"], atol=1e-5)


def test_truncated_checkpoint_header(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CorruptModelFile, match="truncated"):
        load_checkpoint(bad)


def test_unsupported_families_are_refused(tmp_path: Path) -> None:
    flux = tmp_path / "flux.safetensors"
    save_file({"model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(4)}, flux)
    with pytest.raises(UnsupportedModelError, match="flux"):
        load_checkpoint(flux)
