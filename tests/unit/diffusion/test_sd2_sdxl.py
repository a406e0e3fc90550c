"""SD2 (eps and v-prediction), SDXL base and SDXL refiner graphs on the built-in engine, with tiny random checkpoints
in the real single-file layouts: detection and strict loading, txt2img determinism, prompt sensitivity, the
prediction type, SDXL's text conditioning (L + bigG, 2048 wide, pooled bigG projection), CLIPSetLastLayer, and the
refiner's aesthetic-score conditioning (ComfyUI's SDXLRefiner.encode_adm)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from gpu_executor.diffusion.models.detection import SD2_V_PROBE_KEY
from gpu_executor.diffusion.models.loader import detect_file, load_checkpoint
from gpu_executor.diffusion.sampling import ModelSamplingDiscrete
from gpu_executor.diffusion.text.conditioning import _tokenizer_dir
from gpu_executor.diffusion.text.tokenizer import clip_tokenizer
from gpu_executor.engine import runtime
from gpu_executor.engine.engine import Engine, ExecutionRequest
from gpu_executor.engine.events import CollectingSink, Succeeded
from gpu_executor.nodes import stable_diffusion as sd_nodes

pytestmark = [pytest.mark.unit, pytest.mark.slow]

FAMILIES = ("sd2", "sd2_v", "sdxl", "sdxl_refiner")


def txt2img(ckpt_name: str, positive: str = "a red cat", negative: str = "blurry", seed: int = 42,
            cfg: float = 7.0) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": 3, "cfg": cfg, "sampler_name": "euler",
                                                   "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "sd"}},
    }


def run_png(engine: Engine, tmp_path: Path, graph: dict[str, Any]) -> bytes:
    """Runs the graph and returns the PNG it saved (the engine's output cache is cleared first, so every node
    really runs)."""
    engine.cache.clear()
    for name in ("out", "temp", "in"):
        (tmp_path / name).mkdir(exist_ok=True)
    request = ExecutionRequest("t", graph, tmp_path / "out", tmp_path / "temp", tmp_path / "in", {})
    final = engine.execute(request, CollectingSink(), None)
    assert isinstance(final, Succeeded), final
    ref = final.outputs[-1]
    return (tmp_path / "out" / ref.subfolder / ref.filename).read_bytes()


def pixels(png: bytes, tmp_path: Path) -> np.ndarray:
    path = tmp_path / "decoded.png"
    path.write_bytes(png)
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def ckpts(sd2_sdxl_checkpoints: dict[str, str], sd_engine: Engine) -> dict[str, str]:
    return sd2_sdxl_checkpoints


def checkpoint_path(name: str) -> Path:
    return runtime.model_path("checkpoints", name)


# --- the fixtures themselves --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("family", "expected"), [
    ("sd2", ("sd2", "eps", ("h",))), ("sd2_v", ("sd2", "v", ("h",))),
    ("sdxl", ("sdxl", "eps", ("l", "g"))), ("sdxl_refiner", ("sdxl_refiner", "eps", ("g",))),
])
def test_tiny_checkpoints_are_detected_and_load_strictly(ckpts: dict[str, str], family: str,
                                                         expected: tuple[str, str, tuple[str, ...]]) -> None:
    path = checkpoint_path(ckpts[family])
    arch = detect_file(path)
    assert (arch.family, arch.prediction, arch.text_encoder_names) == expected
    assert arch.supported and arch.expected_text_encoders == expected[2]
    loaded = load_checkpoint(path)  # strict: every weight of the file lands in a module and vice versa
    assert loaded.vae is not None and set(loaded.text_encoders) == set(expected[2])
    widths = {"l": 768, "h": 1024, "g": 1280}
    for name, encoder in loaded.text_encoders.items():
        assert encoder.config.hidden_size == widths[name] and encoder.config.vocab_size == 49408
        assert encoder.config.max_position_embeddings == 77
    adm = {"sdxl": 2816, "sdxl_refiner": 2560}.get(arch.family)
    assert loaded.unet.config.projection_class_embeddings_input_dim == adm


# --- txt2img ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_is_deterministic_and_follows_the_prompt(sd_engine: Engine, ckpts: dict[str, str],
                                                         tmp_path: Path, family: str) -> None:
    graph = txt2img(ckpts[family])
    first = run_png(sd_engine, tmp_path, graph)
    again = run_png(sd_engine, tmp_path, graph)
    other = run_png(sd_engine, tmp_path, txt2img(ckpts[family], positive="a green dog on a boat"))
    image = pixels(first, tmp_path)
    assert image.shape == (64, 64, 3) and first[:8] == b"\x89PNG\r\n\x1a\n"
    assert first == again
    assert not np.array_equal(image, pixels(other, tmp_path))
    assert image.std() > 0  # not a flat (NaN-clamped) picture


def test_sd2_prediction_type_is_used(sd_engine: Engine, ckpts: dict[str, str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The eps and v files differ only in the probe weight; the v file samples with v-prediction, and forcing eps
    sampling on it changes the picture (so the difference is the prediction type, not only the probe)."""
    with safe_open(checkpoint_path(ckpts["sd2"]), "pt") as a, safe_open(checkpoint_path(ckpts["sd2_v"]), "pt") as b:
        keys = sorted(a.keys())
        assert keys == sorted(b.keys())
        differing = [k for k in keys if not torch.equal(a.get_tensor(k), b.get_tensor(k))]
    assert differing == ["model.diffusion_model." + SD2_V_PROBE_KEY]
    eps = pixels(run_png(sd_engine, tmp_path, txt2img(ckpts["sd2"])), tmp_path)
    v = pixels(run_png(sd_engine, tmp_path, txt2img(ckpts["sd2_v"])), tmp_path)
    assert not np.array_equal(eps, v)
    seen: list[str] = []
    original = sd_nodes.model_sampling_for

    def as_eps(model: Any) -> ModelSamplingDiscrete:
        seen.append(original(model).prediction_type)
        return ModelSamplingDiscrete("eps")

    monkeypatch.setattr(sd_nodes, "model_sampling_for", as_eps)
    v_as_eps = pixels(run_png(sd_engine, tmp_path, txt2img(ckpts["sd2_v"])), tmp_path)
    assert seen == ["v_prediction"]
    assert not np.array_equal(v, v_as_eps)


# --- SDXL text conditioning ----------------------------------------------------------------------------------------

def _hidden(encoder: Any, ids: torch.Tensor, layer: int) -> torch.Tensor:
    with torch.no_grad():
        return encoder(input_ids=ids, output_hidden_states=True).hidden_states[layer].float()


def test_sdxl_conditioning_is_l_and_g_penultimate_with_the_pooled_g_projection(ckpts: dict[str, str]) -> None:
    _model, clip, _vae = sd_nodes.CheckpointLoaderSimple().load_checkpoint(ckpts["sdxl"])
    ((cond, options),) = sd_nodes.CLIPTextEncode().encode(clip, "a red cat")[0]
    pooled = options["pooled_output"]
    assert cond.shape == (1, 77, 2048)
    assert pooled.shape == (1, 1280)
    directory = _tokenizer_dir()
    l_ids = torch.tensor([[t.token for t in clip_tokenizer(directory, True).tokenize("a red cat")[0]]])
    g_ids = torch.tensor([[t.token for t in clip_tokenizer(directory, False).tokenize("a red cat")[0]]])
    assert g_ids[0, -1] == 0 and l_ids[0, -1] == 49407  # bigG pads with 0, CLIP-L with the end token
    # Penultimate layer, no final layer norm, for both; pooled = bigG's projected (text_embeds) output.
    torch.testing.assert_close(cond[..., :768], _hidden(clip.encoders["l"], l_ids, -2))
    torch.testing.assert_close(cond[..., 768:], _hidden(clip.encoders["g"], g_ids, -2))
    with torch.no_grad():
        torch.testing.assert_close(pooled, clip.encoders["g"](input_ids=g_ids).text_embeds.float())

    _model, refiner_clip, _vae = sd_nodes.CheckpointLoaderSimple().load_checkpoint(ckpts["sdxl_refiner"])
    ((cond, options),) = sd_nodes.CLIPTextEncode().encode(refiner_clip, "a red cat")[0]
    assert cond.shape == (1, 77, 1280) and options["pooled_output"].shape == (1, 1280)
    torch.testing.assert_close(cond, _hidden(refiner_clip.encoders["g"], g_ids, -2))


def test_sd2_conditioning_is_h_penultimate_with_the_final_layer_norm(ckpts: dict[str, str]) -> None:
    _model, clip, _vae = sd_nodes.CheckpointLoaderSimple().load_checkpoint(ckpts["sd2"])
    ((cond, _options),) = sd_nodes.CLIPTextEncode().encode(clip, "a red cat")[0]
    assert cond.shape == (1, 77, 1024)
    ids = torch.tensor([[t.token for t in clip_tokenizer(_tokenizer_dir(), False).tokenize("a red cat")[0]]])
    encoder = clip.encoders["h"]
    with torch.no_grad():
        text_model = getattr(encoder, "text_model", encoder)  # transformers 5's CLIPTextModel has no text_model
        expected = text_model.final_layer_norm(_hidden(encoder, ids, -2))
    torch.testing.assert_close(cond, expected)


def test_clip_set_last_layer_changes_the_sdxl_output(sd_engine: Engine, ckpts: dict[str, str],
                                                     tmp_path: Path) -> None:
    base = run_png(sd_engine, tmp_path, txt2img(ckpts["sdxl"]))
    graph = txt2img(ckpts["sdxl"])
    graph["13"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -1}}
    graph["6"]["inputs"]["clip"] = ["13", 0]
    graph["7"]["inputs"]["clip"] = ["13", 0]
    last = run_png(sd_engine, tmp_path, graph)
    penultimate = copy.deepcopy(graph)
    penultimate["13"]["inputs"]["stop_at_clip_layer"] = -2
    assert not np.array_equal(pixels(base, tmp_path), pixels(last, tmp_path))
    # -2 is SDXL's default layer (pixels, not bytes: SaveImage embeds the graph in the PNG).
    assert np.array_equal(pixels(run_png(sd_engine, tmp_path, penultimate), tmp_path), pixels(base, tmp_path))


# --- SDXL added conditioning (ComfyUI's encode_adm) -------------------------------------------------------------

def _timestep_features(values: list[float]) -> torch.Tensor:
    """ComfyUI's Timestep(256) embedding of each value ([cos | sin] halves), concatenated."""
    half = 128
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    out = [torch.cat([torch.cos(v * freqs), torch.sin(v * freqs)]) for v in values]
    return torch.cat(out)


def test_added_conditions_follow_comfyui_encode_adm(ckpts: dict[str, str]) -> None:
    pooled = torch.randn(1, 1280)
    entry = [torch.zeros(1, 77, 2048), {"pooled_output": pooled, "prompt_type": "positive"}]
    base = sd_nodes._sdxl_conditions([entry], 2, torch.device("cpu"), torch.float32)
    assert base["time_ids"].tolist() == [[768, 768, 0, 0, 768, 768]] * 2  # CLIPTextEncode: ComfyUI's defaults
    assert torch.equal(base["text_embeds"], pooled.expand(2, -1))
    sized = [entry[0], {**entry[1], "width": 1024, "height": 640, "crop_w": 8, "crop_h": 16}]
    got = sd_nodes._sdxl_conditions([sized], 1, torch.device("cpu"), torch.float32)
    assert got["time_ids"].tolist() == [[640, 1024, 16, 8, 640, 1024]]

    negative = [entry[0], {"pooled_output": pooled, "prompt_type": "negative"}]
    refiner = sd_nodes._sdxl_conditions([negative, entry], 1, torch.device("cpu"), torch.float32, refiner=True)
    # SDXLRefiner: height, width, crop_h, crop_w, aesthetic score (2.5 for the negative list, 6 otherwise).
    assert refiner["time_ids"].tolist() == [[768, 768, 0, 0, 2.5], [768, 768, 0, 0, 6.0]]
    scored = [entry[0], {**entry[1], "aesthetic_score": 7.5}]
    assert sd_nodes._sdxl_conditions([scored], 1, torch.device("cpu"), torch.float32,
                                     refiner=True)["time_ids"].tolist() == [[768, 768, 0, 0, 7.5]]
    # diffusers' text_time embedding of these ids is ComfyUI's y = [pooled | Timestep(256) of each id]: 2560 wide.
    model, _clip, _vae = sd_nodes.CheckpointLoaderSimple().load_checkpoint(ckpts["sdxl_refiner"])
    unet = model.models.checkpoint.unet
    with torch.no_grad():
        features = unet.add_time_proj(refiner["time_ids"][0].flatten()).flatten().float()
    torch.testing.assert_close(features, _timestep_features([768, 768, 0, 0, 2.5]))
    assert pooled.shape[1] + features.shape[0] == unet.config.projection_class_embeddings_input_dim == 2560


def test_the_refiner_scores_positive_and_negative_differently(sd_engine: Engine, ckpts: dict[str, str],
                                                              tmp_path: Path) -> None:
    """With the same conditioning as positive and negative, CFG has nothing to amplify, unless (as in ComfyUI's
    SDXLRefiner) the negative list gets aesthetic score 2.5 and the positive 6: then the cfg scale matters."""
    def same_prompt(name: str, cfg: float) -> dict[str, Any]:
        graph = txt2img(name, cfg=cfg)
        graph["3"]["inputs"]["negative"] = ["6", 0]
        del graph["7"]
        return graph

    refined = [pixels(run_png(sd_engine, tmp_path, same_prompt(ckpts["sdxl_refiner"], c)), tmp_path)
               for c in (2.0, 6.0)]
    assert not np.array_equal(refined[0], refined[1])
    base = [pixels(run_png(sd_engine, tmp_path, same_prompt(ckpts["sdxl"], c)), tmp_path) for c in (2.0, 6.0)]
    assert np.abs(base[0].astype(int) - base[1].astype(int)).max() <= 1
