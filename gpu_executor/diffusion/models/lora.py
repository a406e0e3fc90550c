"""LoRA files: parse the layouts ComfyUI accepts, merge them into loaded diffusers/transformers modules, and restore.

Accepted key layouts (after ComfyUI's ``comfy/lora.py``):

* UNet — kohya ``lora_unet_<ldm path>`` and ``lora_unet_<diffusers path>`` (dots → underscores), simpletuner
  ``lycoris_<diffusers path>``, diffusers ``[unet.]<path>`` (attention projections also as ``processor.to_q``...),
  PEFT ``unet.<path>`` and the generic ``diffusion_model.<ldm path>``.
* Text encoders — kohya ``lora_te_``/``lora_te1_``/``lora_te2_`` + ``text_model_encoder_layers_N_...``, diffusers
  ``text_encoder[_2].text_model...`` and ``text_encoders.clip_{l,h,g}.transformer.text_model...``. With CLIP-L and
  bigG (SDXL) ``te1``/``text_encoder`` is L and ``te2``/``text_encoder_2`` is G; a single encoder takes ``te``/``te1``.
* Weight suffixes — ``.lora_up/.lora_down(.lora_mid).weight``, ``_lora.up/_lora.down.weight``,
  ``.lora_B/.lora_A.weight``, ``.lora.up/.lora.down.weight``, ``.lora_linear_layer.up/down.weight``, ``.alpha``,
  plus full-weight ``.diff``/``.diff_b``/``.set_weight``. LoHa/LoKr/GLoRA/DoRA entries are reported as unsupported.

The merge follows ComfyUI: ΔW = (up.flatten(1) @ down.flatten(1)).reshape(W.shape) × strength × alpha/rank (rank =
``down.shape[0]``; alpha defaults to rank), computed in float32 on a float32 copy of the original weight, all LoRAs on
a weight summed in order, then cast once to the weight's dtype. Originals are backed up on first touch and
`LoraPatcher.unapply` restores them bit-exactly, so a model can stay loaded across executions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from gpu_executor.diffusion.models.convert import UNetKeyMap, canonical_clip_key
from gpu_executor.diffusion.models.errors import ModelFileError
from gpu_executor.diffusion.models.safetensors_file import PathLike, load_tensors, read_header

if TYPE_CHECKING:
    from gpu_executor.diffusion.models.loader import LoadedCheckpoint

# suffix → (role, format)
_SUFFIXES: tuple[tuple[str, str, str], ...] = (
    (".lora_up.weight", "up", "kohya"),
    (".lora_down.weight", "down", "kohya"),
    (".lora_mid.weight", "mid", "kohya"),
    ("_lora.up.weight", "up", "diffusers"),
    ("_lora.down.weight", "down", "diffusers"),
    (".lora_B.weight", "up", "peft"),
    (".lora_A.weight", "down", "peft"),
    (".lora.up.weight", "up", "diffusers"),
    (".lora.down.weight", "down", "diffusers"),
    (".lora_linear_layer.up.weight", "up", "diffusers"),
    (".lora_linear_layer.down.weight", "down", "diffusers"),
    (".alpha", "alpha", ""),
    (".diff", "diff", "diff"),
    (".diff_b", "diff_b", "diff"),
    (".set_weight", "set", "diff"),
    (".dora_scale", "unsupported:dora", "lycoris"),
    (".hada_w1_a", "unsupported:loha", "lycoris"),
    (".hada_w1_b", "unsupported:loha", "lycoris"),
    (".hada_w2_a", "unsupported:loha", "lycoris"),
    (".hada_w2_b", "unsupported:loha", "lycoris"),
    (".hada_t1", "unsupported:loha", "lycoris"),
    (".hada_t2", "unsupported:loha", "lycoris"),
    (".lokr_w1", "unsupported:lokr", "lycoris"),
    (".lokr_w2", "unsupported:lokr", "lycoris"),
    (".lokr_w1_a", "unsupported:lokr", "lycoris"),
    (".lokr_w1_b", "unsupported:lokr", "lycoris"),
    (".lokr_w2_a", "unsupported:lokr", "lycoris"),
    (".lokr_w2_b", "unsupported:lokr", "lycoris"),
    (".lokr_t2", "unsupported:lokr", "lycoris"),
    (".a1.weight", "unsupported:glora", "lycoris"),
    (".a2.weight", "unsupported:glora", "lycoris"),
    (".b1.weight", "unsupported:glora", "lycoris"),
    (".b2.weight", "unsupported:glora", "lycoris"),
    (".w_norm", "diff", "diff"),
    (".b_norm", "diff_b", "diff"),
    (".reshape_weight", "unsupported:reshape", "lycoris"),
)

_CLIP_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def split_key(key: str) -> tuple[str, str, str] | None:
    """(base name, role, format) of a LoRA tensor key, or None if the suffix is unknown."""
    for suffix, role, fmt in sorted(_SUFFIXES, key=lambda s: -len(s[0])):
        if key.endswith(suffix):
            return key[: -len(suffix)], role, fmt
    return None


@dataclass
class LoraEntry:
    """Everything a LoRA file holds for one base name (one adapted layer)."""

    base: str
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    mid: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None
    set_weight: torch.Tensor | None = None
    unsupported: set[str] = field(default_factory=set)

    @property
    def rank(self) -> int | None:
        return int(self.down.shape[0]) if self.down is not None else None


@dataclass
class LoraFile:
    path: Path | None
    entries: dict[str, LoraEntry]
    metadata: Mapping[str, str]
    unknown_keys: list[str]


def load_lora(path: PathLike | Mapping[str, torch.Tensor], *, device: str | torch.device = "cpu") -> LoraFile:
    """Read a LoRA ``.safetensors`` file (or an in-memory state dict) into per-layer entries."""
    if isinstance(path, Mapping):
        tensors, metadata, p = dict(path), {}, None
    else:
        p = Path(path)
        metadata = dict(read_header(p).metadata)
        tensors = load_tensors(p, device=device)
    entries: dict[str, LoraEntry] = {}
    unknown: list[str] = []
    for key, value in tensors.items():
        parsed = split_key(key)
        if parsed is None:
            unknown.append(key)
            continue
        base, role, _ = parsed
        e = entries.setdefault(base, LoraEntry(base))
        if role == "alpha":
            e.alpha = float(value.float().item())
        elif role.startswith("unsupported:"):
            e.unsupported.add(role.split(":", 1)[1])
        else:
            setattr(e, {"set": "set_weight"}.get(role, role), value)
    return LoraFile(path=p, entries=entries, metadata=metadata, unknown_keys=sorted(unknown))


# ------------------------------------------------------------------------------------------------------- key map


def unet_lora_names(key_map: UNetKeyMap, diffusers_weight_keys: Iterable[str]) -> dict[str, str]:
    """LoRA base name → diffusers UNet parameter base name (without ``.weight``)."""
    names: dict[str, str] = {}
    for pkey in diffusers_weight_keys:
        if not pkey.endswith(".weight"):
            continue
        diff = pkey[: -len(".weight")]
        try:
            ldm = key_map.to_ldm(pkey)[: -len(".weight")]
        except KeyError:
            ldm = None
        if ldm is not None:
            names["lora_unet_" + ldm.replace(".", "_")] = diff
            names["diffusion_model." + ldm] = diff
        names["lora_unet_" + diff.replace(".", "_")] = diff
        names["lycoris_" + diff.replace(".", "_")] = diff
        processor = diff.replace(".to_", ".processor.to_")
        if processor.endswith(".to_out.0"):
            processor = processor[:-2]
        for p in ("", "unet."):
            names[p + processor] = diff
            names[p + diff] = diff
    return names


def text_encoder_lora_names(name: str, encoder_names: Iterable[str], weight_keys: Iterable[str]) -> dict[str, str]:
    """LoRA base name → canonical (``text_model.*``) parameter base name, for encoder ``name`` of a model whose
    encoders are ``encoder_names``."""
    present = set(encoder_names)
    kohya: tuple[str, ...]
    diffusers: tuple[str, ...]
    if name == "g" and "l" in present:
        kohya, diffusers = ("lora_te2_",), ("text_encoder_2.",)
    else:
        kohya, diffusers = ("lora_te_", "lora_te1_"), ("text_encoder.",)
    names: dict[str, str] = {}
    for key in weight_keys:
        if not key.endswith(".weight"):
            continue
        base = canonical_clip_key(key)[: -len(".weight")]
        for k in kohya:
            names[k + base.replace(".", "_")] = base
        for d in diffusers:
            names[d + base] = base
        names[f"text_encoders.clip_{name}.transformer.{base}"] = base
        if base == "text_projection":
            names[f"{kohya[0]}text_projection"] = base
    return names


# ------------------------------------------------------------------------------------------------------- patching


def lora_delta(
    entry: LoraEntry,
    weight_shape: torch.Size | tuple[int, ...],
    strength: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """ΔW (float32) of a LoRA/LoCon entry for a weight of ``weight_shape``, as ComfyUI computes it."""
    if entry.up is None or entry.down is None:
        raise ValueError(f"{entry.base}: not a low-rank entry")
    up = entry.up.to(device or entry.up.device, torch.float32)
    down = entry.down.to(up.device, torch.float32)
    alpha = entry.alpha / down.shape[0] if entry.alpha is not None else 1.0
    if entry.mid is not None:  # LoCon with a Tucker "mid" core
        mid = entry.mid.to(up.device, torch.float32)
        final_shape = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
        down = (
            torch.mm(down.transpose(0, 1).flatten(start_dim=1), mid.transpose(0, 1).flatten(start_dim=1))
            .reshape(final_shape)
            .transpose(0, 1)
        )
    diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(weight_shape)
    return diff * (strength * alpha)


@dataclass
class LoraApplyReport:
    applied: int
    unmatched: list[str]
    unsupported: dict[str, list[str]]
    targets: Counter[str]


@dataclass
class _Patch:
    entry: LoraEntry
    strength: float
    part: str  # "weight" or "bias"


class LoraPatcher:
    """Merges LoRAs into a set of loaded modules (``"unet"`` plus text encoders ``"l"``/``"h"``/``"g"``) in place.

    Weights are recomputed from their backed-up originals each time the set of LoRAs changes; `unapply` restores the
    originals exactly.
    """

    def __init__(self, modules: Mapping[str, torch.nn.Module], key_map: UNetKeyMap | None) -> None:
        self.modules = dict(modules)
        self.names: dict[str, tuple[str, str]] = {}
        if "unet" in self.modules and key_map is not None:
            unet_keys = list(self.modules["unet"].state_dict())
            for lora_name, base in unet_lora_names(key_map, unet_keys).items():
                self.names[lora_name] = ("unet", base)
        encoders = [n for n in self.modules if n != "unet"]
        for name in encoders:
            keys = list(self.modules[name].state_dict())
            for lora_name, base in text_encoder_lora_names(name, encoders, keys).items():
                self.names.setdefault(lora_name, (name, base))
        self._params: dict[tuple[str, str], torch.nn.Parameter] = {}
        self._backup: dict[tuple[str, str], torch.Tensor] = {}
        self._patches: dict[tuple[str, str], list[_Patch]] = {}

    @classmethod
    def for_checkpoint(cls, checkpoint: LoadedCheckpoint) -> LoraPatcher:
        """A patcher over a `LoadedCheckpoint`'s UNet and text encoders."""
        modules: dict[str, torch.nn.Module] = {"unet": cast(torch.nn.Module, checkpoint.unet)}
        modules.update(checkpoint.text_encoders)
        return cls(modules, checkpoint.unet_key_map)

    def _param(self, target: str, name: str) -> torch.nn.Parameter | None:
        key = (target, name)
        if key not in self._params:
            module = self.modules[target]
            try:
                p = module.get_parameter(name)
            except AttributeError:
                if target != "unet" and name.startswith("text_model."):
                    try:
                        p = module.get_parameter(name[len("text_model.") :])
                    except AttributeError:
                        return None
                else:
                    return None
            self._params[key] = p
        return self._params[key]

    def resolve(self, lora: LoraFile) -> tuple[dict[str, tuple[str, str]], list[str]]:
        """Map each entry of ``lora`` to (target module, parameter base name); also returns the unmatched names."""
        found: dict[str, tuple[str, str]] = {}
        unmatched: list[str] = []
        for base in lora.entries:
            hit = self.names.get(base)
            if hit is None:
                unmatched.append(base)
            else:
                found[base] = hit
        return found, unmatched

    @torch.no_grad()
    def apply(
        self, lora: LoraFile | PathLike, strength_model: float = 1.0, strength_clip: float = 1.0
    ) -> LoraApplyReport:
        """Add a LoRA (LoraLoader semantics: ``strength_model`` for the UNet, ``strength_clip`` for the encoders)."""
        lf = lora if isinstance(lora, LoraFile) else load_lora(lora)
        found, unmatched = self.resolve(lf)
        touched: set[tuple[str, str]] = set()
        unsupported: dict[str, list[str]] = {}
        targets: Counter[str] = Counter()
        for base, (target, pname) in found.items():
            entry = lf.entries[base]
            if entry.unsupported:
                for kind in entry.unsupported:
                    unsupported.setdefault(kind, []).append(base)
                continue
            strength = strength_model if target == "unet" else strength_clip
            parts = []
            if entry.up is not None or entry.diff is not None or entry.set_weight is not None:
                parts.append("weight")
            if entry.diff_b is not None:
                parts.append("bias")
            for part in parts:
                key = (target, f"{pname}.{part}")
                param = self._param(*key)
                if param is None:
                    unmatched.append(f"{base} ({part})")
                    continue
                if key not in self._backup:
                    self._backup[key] = param.detach().clone()
                self._patches.setdefault(key, []).append(_Patch(entry, strength, part))
                touched.add(key)
                targets[target] += 1
        for key in touched:
            self._recompute(key)
        return LoraApplyReport(applied=len(touched), unmatched=unmatched, unsupported=unsupported, targets=targets)

    def _recompute(self, key: tuple[str, str]) -> None:
        param = self._params[key]
        original = self._backup[key]
        w = original.to(torch.float32).clone()
        for patch in self._patches.get(key, []):
            e = patch.entry
            if patch.part == "bias":
                assert e.diff_b is not None
                w += patch.strength * e.diff_b.to(w.device, torch.float32).reshape(w.shape)
            elif e.set_weight is not None:
                w.copy_(e.set_weight.to(w.device, torch.float32).reshape(w.shape))
            elif e.diff is not None:
                w += patch.strength * e.diff.to(w.device, torch.float32).reshape(w.shape)
            else:
                w += lora_delta(e, w.shape, patch.strength, w.device)
        param.data.copy_(w.to(param.dtype))

    @torch.no_grad()
    def unapply(self) -> None:
        """Restore every patched weight to its original value (bit-exact) and forget all applied LoRAs."""
        for key, original in self._backup.items():
            self._params[key].data.copy_(original)
        self._backup.clear()
        self._patches.clear()

    @property
    def patched_parameters(self) -> list[tuple[str, str]]:
        return sorted(self._backup)


# ----------------------------------------------------------------------------------------------------------- info


@dataclass(frozen=True)
class LoraInfo:
    base: str
    rank: int | None
    ranks: tuple[int, ...]
    num_modules: int
    unet_modules: int
    text_encoder_modules: int
    formats: tuple[str, ...]
    metadata: Mapping[str, str]


_ATTN2_K = re.compile(r"attn2[._](?:processor[._])?to_k(?:$|[._])")
_TE_Q = re.compile(r"self_attn[._]q_proj$")


def _base_from_metadata(meta: Mapping[str, str]) -> str:
    v = (meta.get("ss_base_model_version") or "").lower()
    arch = (meta.get("modelspec.architecture") or "").lower()
    if v.startswith("sdxl") or "stable-diffusion-xl" in arch:
        return "sdxl"
    if v.startswith("sd_v2") or "stable-diffusion-v2" in arch:
        return "sd2"
    if v.startswith("sd_v1") or "stable-diffusion-v1" in arch:
        return "sd1"
    if "flux" in v or "flux" in arch:
        return "flux"
    if "sd3" in v or "stable-diffusion-3" in arch:
        return "sd3"
    return "unknown"


def lora_info(path: PathLike) -> LoraInfo:
    """Base architecture and rank of a LoRA file, from its header alone."""
    header = read_header(path)
    shapes = header.shapes()
    bases: dict[str, tuple[int, ...] | None] = {}
    formats: set[str] = set()
    for key, shape in shapes.items():
        parsed = split_key(key)
        if parsed is None:
            continue
        base, role, fmt = parsed
        if fmt:
            formats.add(fmt)
        if base.startswith("lora_unet_") or base.startswith("lora_te"):
            formats.add("kohya")
        if role == "down":
            bases[base] = shape
        else:
            bases.setdefault(base, None)
    if not bases:
        raise ModelFileError(f"{Path(path).name}: no LoRA weights found")
    ranks = Counter(s[0] for s in bases.values() if s)
    te_bases = [b for b in bases if b.startswith(("lora_te", "text_encoder", "text_encoders."))]
    base_model = "unknown"
    joined = " ".join(bases)
    if any(b.startswith(("lora_te2_", "text_encoder_2.")) for b in bases):
        base_model = "sdxl"
    elif "single_blocks" in joined or "single_transformer_blocks" in joined or "double_blocks" in joined:
        base_model = "flux"
    elif "joint_blocks" in joined or "transformer.transformer_blocks" in joined:
        base_model = "sd3"
    else:
        for b, s in bases.items():
            if s is not None and _ATTN2_K.search(b) and len(s) >= 2:
                base_model = {768: "sd1", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}.get(s[1], "unknown")
                break
        if base_model == "unknown":
            for b, s in bases.items():
                if s is not None and _TE_Q.search(b) and len(s) >= 2:
                    base_model = {768: "sd1", 1024: "sd2", 1280: "sdxl"}.get(s[1], "unknown")
                    break
    if base_model == "unknown":
        base_model = _base_from_metadata(header.metadata)
    return LoraInfo(
        base=base_model,
        rank=ranks.most_common(1)[0][0] if ranks else None,
        ranks=tuple(sorted(ranks)),
        num_modules=len(bases),
        unet_modules=len(bases) - len(te_bases),
        text_encoder_modules=len(te_bases),
        formats=tuple(sorted(formats)),
        metadata=dict(header.metadata),
    )
