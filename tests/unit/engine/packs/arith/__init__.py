"""A custom node pack written the way ComfyUI custom nodes are, used by the engine tests."""

from __future__ import annotations

import math
from typing import Any

from gpu_executor.engine.runtime import ProgressBar, check_interrupted

CALLS: dict[str, int] = {}  # class name → times its FUNCTION ran (tests reset it)


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


class Number:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"default": 0, "min": -100, "max": 2**64 - 1})}}

    def run(self, value: int) -> tuple[int]:
        _count("Number")
        return (value,)


class Add:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("sum",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"a": ("INT", {}), "b": ("INT", {"default": 1, "min": 0, "max": 10})},
                "optional": {"c": ("INT", {})}}

    def run(self, a: int, b: int, c: int = 0) -> tuple[int]:
        _count("Add")
        return (a + b + c,)


class Scale:
    CATEGORY = "test"
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"x": ("INT", {}), "mode": (["double", "half"],), "factor": ("FLOAT", {"min": 0.0})}}

    def run(self, x: int, mode: str, factor: float) -> tuple[float]:
        _count("Scale")
        return ((x * 2 if mode == "double" else x / 2) * factor,)


class Show:
    """An output node: its UI output records what it received."""

    CATEGORY = "test"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("*", {})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    def run(self, value: Any, unique_id: str) -> dict[str, Any]:
        _count("Show")
        return {"ui": {"values": [value], "node": [unique_id]}}


class Listify:
    """OUTPUT_IS_LIST: emits a list that downstream nodes are mapped over."""

    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"count": ("INT", {"default": 3, "min": 0})}}

    def run(self, count: int) -> tuple[list[int]]:
        return (list(range(count)),)


class Total:
    """INPUT_IS_LIST: receives whole lists."""

    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    INPUT_IS_LIST = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"values": ("INT", {})}}

    def run(self, values: list[int]) -> tuple[int]:
        return (sum(values),)


class Even:
    """VALIDATE_INPUTS takes over the checks of `value` (its min/max are not applied)."""

    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {"min": 0, "max": 10})}}

    @classmethod
    def VALIDATE_INPUTS(cls, value: int) -> bool | str:
        if value == 13:
            raise RuntimeError("unlucky")
        return True if value % 2 == 0 else f"{value} is odd"

    def run(self, value: int) -> tuple[int]:
        return (value,)


class Volatile:
    """IS_CHANGED returns NaN: never cached."""

    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {})}}

    @classmethod
    def IS_CHANGED(cls, value: int) -> float:
        return math.nan

    def run(self, value: int) -> tuple[int]:
        _count("Volatile")
        return (value,)


VERSION = {"token": "a"}


class Versioned:
    """IS_CHANGED returns an external token: the cache is reused until the token changes."""

    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs: Any) -> str:
        return VERSION["token"]

    def run(self, value: int) -> tuple[int]:
        _count("Versioned")
        return (value,)


class Slow:
    """A long loop that reports progress (and so can be interrupted at any step)."""

    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"steps": ("INT", {"default": 5, "min": 1}), "value": ("INT", {})}}

    def run(self, steps: int, value: int) -> tuple[int]:
        bar = ProgressBar(steps)
        for _ in range(steps):
            check_interrupted()
            bar.update(1)
        return (value,)


class Boom:
    CATEGORY = "test"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {})}}

    def run(self, value: int) -> tuple[int]:
        raise ValueError(f"cannot handle {value}")


class WrongArity:
    CATEGORY = "test"
    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"value": ("INT", {})}}

    def run(self, value: int) -> tuple[int]:
        return (value,)


class MakeImage:
    """Declares an IMAGE output (a link-only type) so tests can check link typing."""

    CATEGORY = "test"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {}}

    def run(self) -> tuple[list[list[float]]]:
        return ([[0.0]],)


class TakeImage:
    CATEGORY = "test"
    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}}

    def run(self, image: Any) -> dict[str, Any]:
        return {"ui": {"images": [{"filename": "x.png", "subfolder": "", "type": "output"}]}}


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (
    Number, Add, Scale, Show, Listify, Total, Even, Volatile, Versioned, Slow, Boom, WrongArity, MakeImage, TakeImage)}
NODE_DISPLAY_NAME_MAPPINGS = {"Add": "Add Integers"}
