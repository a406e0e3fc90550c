"""How ComfyUI turns CONDITIONING lists into one denoised prediction per list (`comfy/samplers.py`).

A CONDITIONING is a list of entries `[tensor, options]`. Entries of one list are evaluated separately and averaged
with weights: an entry covers the whole latent, or an `area` (ConditioningSetArea, in latent units
`(h, w, y, x)`, or `("percentage", h, w, y, x)`), optionally weighted by a `mask` (ConditioningSetMask, with
`mask_strength` and `set_area_to_bounds`) and a `strength`; an area without a mask fades in over its first and last
8 latent pixels on the sides that do not touch the border. `start_percent`/`end_percent`
(ConditioningSetTimestepRange) switch an entry off outside a part of the schedule. An entry with `default` only
fills what the other entries leave uncovered. Before sampling, every area of one list gets a counterpart of the
same area in the other list (ComfyUI's `create_cond_with_same_area_if_none`), and ControlNet/GLIGEN objects of the
positive list are copied to negative entries that have none (`apply_empty_x_to_equal_area`).

At each model evaluation, the entries that can share one batch (same cropped input shape, same ControlNet object,
compatible text embeddings) are concatenated along the batch dimension and sent to the model together, the
entries popped in ComfyUI's order (the last compatible entry first: for a plain positive/negative pair the
batch is `[uncond, cond]`).

What the model callable receives is described by `ModelFunction`: the cropped input, one sigma per row, and the
list of entries (one per chunk of rows). Not supported: hooks (`hooks`, `clip_start_percent`), GLIGEN patches and
ControlNet inputs are passed through in the entries but the model callable has to apply them; ComfyUI's
`model_conds` processing (`c_concat` cropping to an area, cross-attention padding to a common length) is the
model callable's job too (`pad_cross_attention` does the padding the way ComfyUI's CONDCrossAttn.concat does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from gpu_executor.diffusion.sampling.model_sampling import ModelSamplingDiscrete

# Options of a conditioning entry that the sampler consumes; every other option (pooled_output, width, height,
# concat_latent_image, ...) belongs to the model's inputs.
SAMPLING_KEYS = frozenset({
    "area", "strength", "mask", "mask_strength", "set_area_to_bounds", "start_percent", "end_percent",
    "timestep_start", "timestep_end", "control", "control_apply_to_uncond", "gligen", "hooks", "default", "uuid",
    "clip_start_percent", "clip_end_percent",
})

# model_fn(input_x, sigma, entries) -> denoised: input_x [n*B, C, h, w] (entry k owns rows k*B:(k+1)*B), sigma [n*B].
ModelFunction = Callable[[Tensor, Tensor, list[Any]], Tensor]


@dataclass(frozen=True)
class Cond:
    """One conditioning entry, resolved for a latent: `entry` is what the model callable receives."""

    entry: Any
    options: dict[str, Any]

    @property
    def tensor(self) -> Any:
        return self.entry[0]

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.options


def _as_cond(entry: Any) -> Cond:
    if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[1], dict)):
        raise TypeError(f"a conditioning entry is [tensor, dict], got {type(entry).__name__}")
    return Cond(entry, dict(entry[1]))


def _with_options(cond: Cond, options: dict[str, Any]) -> Cond:
    """The entry with new options (the model callable sees them in entry[1])."""
    return Cond([cond.entry[0], options], options)


# -- resolving a list for a latent (ComfyUI's process_conds) -------------------------------------------------


def get_mask_aabb(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Bounding boxes (x0, y0, x1, y1) of the nonzero pixels of each mask, and which masks are empty."""
    b = masks.shape[0]
    bounding_boxes = torch.zeros((b, 4), device=masks.device, dtype=torch.int)
    is_empty = torch.zeros((b,), device=masks.device, dtype=torch.bool)
    for i in range(b):
        mask = masks[i]
        if mask.numel() == 0:
            continue
        if not bool(torch.max(mask != 0)):
            is_empty[i] = True
            continue
        y, x = torch.where(mask)
        bounding_boxes[i, 0] = torch.min(x)
        bounding_boxes[i, 1] = torch.min(y)
        bounding_boxes[i, 2] = torch.max(x)
        bounding_boxes[i, 3] = torch.max(y)
    return bounding_boxes, is_empty


def resolve_areas_and_masks(conds: list[Cond], dims: tuple[int, int], device: torch.device | str) -> list[Cond]:
    """Percentage areas to latent units, masks resized to the latent (bilinear), areas set to mask bounds."""
    out: list[Cond] = []
    for c in conds:
        options = c.options
        if "area" in options and options["area"][0] == "percentage":
            a = options["area"][1:]
            half = len(a) // 2
            area = tuple(max(1, round(a[d] * dims[d])) for d in range(len(dims)))
            area += tuple(round(a[d + half] * dims[d]) for d in range(len(dims)))
            options = {**options, "area": area}
            c = _with_options(c, options)
        if "mask" in options:
            mask: Tensor = options["mask"].to(device=device)
            options = dict(options)
            if len(mask.shape) == len(dims):
                mask = mask.unsqueeze(0)
            if tuple(mask.shape[1:]) != tuple(dims):
                mask = torch.nn.functional.interpolate(mask.unsqueeze(1), size=dims, mode="bilinear").squeeze(1)
            if options.get("set_area_to_bounds", False):
                bounds = torch.max(torch.abs(mask), dim=0).values.unsqueeze(0)
                boxes, is_empty = get_mask_aabb(bounds)
                if is_empty[0]:
                    options["area"] = (8, 8, 0, 0)  # all-zero mask: the smallest area, a no-op anyway
                else:
                    box = boxes[0]
                    h, w, y, x = (box[3] - box[1] + 1, box[2] - box[0] + 1, box[1], box[0])
                    options["area"] = (int(max(8, int(h))), int(max(8, int(w))), int(y), int(x))
            options["mask"] = mask
            c = _with_options(c, options)
        out.append(c)
    return out


def calculate_start_end_timesteps(model_sampling: ModelSamplingDiscrete, conds: list[Cond]) -> list[Cond]:
    """start_percent/end_percent to the sigmas between which an entry is active."""
    out: list[Cond] = []
    for c in conds:
        start = model_sampling.percent_to_sigma(c.options["start_percent"]) if "start_percent" in c else None
        end = model_sampling.percent_to_sigma(c.options["end_percent"]) if "end_percent" in c else None
        if start is not None or end is not None:
            options = dict(c.options)
            if start is not None:
                options["timestep_start"] = start
            if end is not None:
                options["timestep_end"] = end
            c = _with_options(c, options)
        out.append(c)
    return out


def _area_inside(a: Sequence[int], outer: Sequence[int]) -> bool:
    n = len(a) // 2
    for i in range(n):
        if a[n + i] < outer[n + i]:
            return False
    return all(a[i] + a[n + i] <= outer[i] + outer[n + i] for i in range(n))


def _area_size(area: Sequence[int]) -> int:
    return math.prod(area[:len(area) // 2])


def create_cond_with_same_area_if_none(conds: list[Cond], c: Cond) -> None:
    """Append to `conds` an entry with c's area (and options) and the model inputs of the smallest entry of
    `conds` that contains it, unless one with exactly that area exists."""
    if "area" not in c:
        return
    c_area = c.options["area"]
    smallest: Cond | None = None
    for x in conds:
        if "area" in x:
            a = x.options["area"]
            if _area_inside(c_area, a) and (smallest is None or "area" not in smallest or _area_size(
                    smallest.options["area"]) > _area_size(a)):
                smallest = x
        elif smallest is None:
            smallest = x
    if smallest is None:
        return
    if "area" in smallest and smallest.options["area"] == c_area:
        return
    model_inputs = {k: v for k, v in smallest.options.items() if k not in SAMPLING_KEYS}
    sampling = {k: v for k, v in c.options.items() if k in SAMPLING_KEYS}
    options = {**model_inputs, **sampling}
    conds.append(Cond([smallest.entry[0], options], options))


def apply_empty_x_to_equal_area(conds: list[Cond], uncond: list[Cond], name: str) -> None:
    """Give the negative entries without `name` (ControlNet, GLIGEN) the objects of the positive entries."""
    cond_cnets: list[Any] = []
    uncond_cnets: list[Any] = []
    uncond_other: list[tuple[Cond, int]] = []
    for x in conds:
        if "area" not in x and x.get(name) is not None:
            cond_cnets.append(x.options[name])
    for t, x in enumerate(uncond):
        if "area" not in x:
            if x.get(name) is not None:
                uncond_cnets.append(x.options[name])
            else:
                uncond_other.append((x, t))
    if len(uncond_cnets) > 0:
        return
    for k in range(len(cond_cnets)):
        o, index = uncond_other[k % len(uncond_other)]
        n = _with_options(o, {**o.options, name: cond_cnets[k]})
        if o.get(name) is not None:
            uncond.append(n)
        else:
            uncond[index] = n


def process_conds(conds: dict[str, Sequence[Any]], model_sampling: ModelSamplingDiscrete,
                  latent_shape: Sequence[int], device: torch.device | str) -> dict[str, list[Cond]]:
    """Resolve the conditioning lists ("positive", "negative") for a latent, as ComfyUI does before sampling."""
    dims = (int(latent_shape[2]), int(latent_shape[3]))
    out: dict[str, list[Cond]] = {}
    for k, entries in conds.items():
        resolved = resolve_areas_and_masks([_as_cond(e) for e in entries], dims, device)
        out[k] = calculate_start_end_timesteps(model_sampling, resolved)
    for k in out:
        for c in out[k]:  # entries appended to this list by an earlier pass are visited too, as in ComfyUI
            for kk in out:
                if k != kk:
                    create_cond_with_same_area_if_none(out[kk], c)
    if "positive" in out:
        positive = out["positive"]
        for k in out:
            if k != "positive":
                apply_empty_x_to_equal_area([c for c in positive if c.get("control_apply_to_uncond", False)],
                                            out[k], "control")
                apply_empty_x_to_equal_area(positive, out[k], "gligen")
    return out


# -- evaluating the lists at one step (ComfyUI's calc_cond_batch) --------------------------------------------


@dataclass(frozen=True)
class _Piece:
    """get_area_and_mult's result: one entry's cropped input and weight."""

    input_x: Tensor
    mult: Tensor
    area: list[int] | None
    cond: Cond


def get_area_and_mult(cond: Cond, x_in: Tensor, sigma: Tensor) -> _Piece | None:
    options = cond.options
    dims = tuple(x_in.shape[2:])
    if "timestep_start" in options and bool(sigma[0] > options["timestep_start"]):
        return None
    if "timestep_end" in options and bool(sigma[0] < options["timestep_end"]):
        return None
    area: list[int] | None = None
    if "area" in options:
        area = list(options["area"])
        while len(area) // 2 < len(dims):
            area = [2147483648, *area[:len(area) // 2], 0, *area[len(area) // 2:]]
        if len(area) // 2 > len(dims):
            area = area[:len(dims)] + area[len(area) // 2:(len(area) // 2) + len(dims)]
    strength = options.get("strength", 1.0)

    input_x = x_in
    if area is not None:
        for i in range(len(dims)):
            area[i] = min(input_x.shape[i + 2] - area[len(dims) + i], area[i])
            input_x = input_x.narrow(i + 2, area[len(dims) + i], area[i])

    if "mask" in options:
        mask_strength = options.get("mask_strength", 1.0)
        mask: Tensor = options["mask"]
        mask = mask[:input_x.shape[0]]
        if area is not None:
            for i in range(len(dims)):
                mask = mask.narrow(i + 1, area[len(dims) + i], area[i])
        mask = mask * mask_strength
        mask = mask.unsqueeze(1).repeat((input_x.shape[0] // mask.shape[0], input_x.shape[1]) + (1,) * (mask.ndim - 1))
    else:
        mask = torch.ones_like(input_x)
    mult = mask * strength

    if "mask" not in options and area is not None:
        fuzz = 8
        for i in range(len(dims)):
            rr = min(fuzz, mult.shape[2 + i] // 4)
            if area[len(dims) + i] != 0:
                for t in range(rr):
                    m = mult.narrow(i + 2, t, 1)
                    m *= ((1.0 / rr) * (t + 1))
            if (area[i] + area[len(dims) + i]) < x_in.shape[i + 2]:
                for t in range(rr):
                    m = mult.narrow(i + 2, area[i] - 1 - t, 1)
                    m *= ((1.0 / rr) * (t + 1))
    return _Piece(input_x, mult, area, cond)


def pad_cross_attention(contexts: Sequence[Tensor]) -> Tensor:
    """Concatenate text embeddings of different token counts along the batch, each repeated to the least common
    multiple of the lengths (ComfyUI's CONDCrossAttn.concat; repeating tokens leaves attention unchanged)."""
    max_len = 0
    for c in contexts:
        max_len = c.shape[1] if max_len == 0 else math.lcm(max_len, c.shape[1])
    return torch.cat([c.repeat(1, max_len // c.shape[1], 1) if c.shape[1] < max_len else c for c in contexts])


def default_can_concat(a: Cond, b: Cond) -> bool:
    """Whether two entries can share one model call (ComfyUI's can_concat_cond, for the inputs SD models use)."""
    if a is b:
        return True
    if (a.get("control") is None) != (b.get("control") is None) or a.get("control") is not b.get("control"):
        return False
    if a.get("gligen") is not None or b.get("gligen") is not None:
        return False  # ComfyUI builds a fresh GLIGEN patch per entry and step: never batched
    ta, tb = a.tensor, b.tensor
    if isinstance(ta, Tensor) and isinstance(tb, Tensor) and ta.shape != tb.shape:
        if ta.ndim != 3 or tb.ndim != 3 or ta.shape[0] != tb.shape[0] or ta.shape[2] != tb.shape[2]:
            return False
        if math.lcm(ta.shape[1], tb.shape[1]) // min(ta.shape[1], tb.shape[1]) > 4:
            return False
    for key, value in a.options.items():
        if key in SAMPLING_KEYS or key not in b.options:
            continue
        other = b.options[key]
        if isinstance(value, Tensor) and isinstance(other, Tensor) and value.shape != other.shape:
            return False
    return True


CanConcat = Callable[[Cond, Cond], bool]


def _finalize_default_conds(to_run: list[tuple[_Piece, int]], default_conds: list[list[Cond]], x_in: Tensor,
                            sigma: Tensor) -> None:
    default_mults = [torch.ones_like(x_in) for _ in default_conds]
    for piece, i in to_run:
        if len(default_conds[i]) == 0:
            continue
        if piece.area is not None:
            current = default_mults[i]
            dims = len(piece.area) // 2
            for d in range(dims):
                current = current.narrow(d + 2, piece.area[d + dims], piece.area[d])
            current -= piece.mult
        else:
            default_mults[i] -= piece.mult
    for i, mult in enumerate(default_mults):
        if len(default_conds[i]) == 0:
            continue
        torch.nn.functional.relu(mult, inplace=True)
        if float(torch.max(mult)) == 0.0:
            continue
        for c in default_conds[i]:
            default_piece = get_area_and_mult(c, x_in, sigma)
            if default_piece is not None:
                to_run.append((replace(default_piece, mult=mult), i))


def calc_cond_batch(model_fn: ModelFunction, conds: Sequence[Sequence[Cond] | None], x_in: Tensor, sigma: Tensor,
                    *, can_concat: CanConcat = default_can_concat, max_batch: int | None = None) -> list[Tensor]:
    """One denoised prediction per conditioning list (None → zeros), entries batched as ComfyUI batches them.

    `max_batch` caps the rows of one model call (ComfyUI sizes batches by free memory; unlimited by default).
    """
    out_conds: list[Tensor] = []
    out_counts: list[Tensor] = []
    to_run: list[tuple[_Piece, int]] = []
    default_conds: list[list[Cond]] = []
    has_default = False
    for i, cond in enumerate(conds):
        out_conds.append(torch.zeros_like(x_in))
        out_counts.append(torch.ones_like(x_in) * 1e-37)
        default_c: list[Cond] = []
        for c in cond or ():
            if "default" in c:
                default_c.append(c)
                has_default = True
                continue
            piece = get_area_and_mult(c, x_in, sigma)
            if piece is not None:
                to_run.append((piece, i))
        default_conds.append(default_c)
    if has_default:
        _finalize_default_conds(to_run, default_conds, x_in, sigma)

    while to_run:
        first = to_run[0][0]
        first_shape = first.input_x.shape
        compatible = [k for k in range(len(to_run))
                      if to_run[k][0].input_x.shape == first_shape and can_concat(to_run[k][0].cond, first.cond)]
        compatible.reverse()
        to_batch = compatible[:1]
        for n in range(1, len(compatible) + 1):
            amount = compatible[:len(compatible) // n]
            if max_batch is None or len(amount) * first_shape[0] <= max_batch:
                to_batch = amount
                break
        popped = [to_run.pop(k) for k in to_batch]
        chunks = len(popped)
        input_x = torch.cat([p.input_x for p, _ in popped])
        sigma_ = torch.cat([sigma] * chunks)
        output = model_fn(input_x, sigma_, [p.cond.entry for p, _ in popped]).chunk(chunks)
        for o, (piece, index) in enumerate(popped):
            if piece.area is None:
                out_conds[index] += output[o] * piece.mult
                out_counts[index] += piece.mult
            else:
                out_c = out_conds[index]
                out_cts = out_counts[index]
                dims = len(piece.area) // 2
                for d in range(dims):
                    out_c = out_c.narrow(d + 2, piece.area[d + dims], piece.area[d])
                    out_cts = out_cts.narrow(d + 2, piece.area[d + dims], piece.area[d])
                out_c += output[o] * piece.mult
                out_cts += piece.mult
    for i in range(len(out_conds)):
        out_conds[i] /= out_counts[i]
    return out_conds
