"""Primitive value nodes (ComfyUI's comfy_extras/nodes_primitive.py): each returns its widget's value."""

from __future__ import annotations

import sys
from typing import Any, ClassVar

from gpu_executor.nodes._common import BuiltinNode, InputTypes

PRIMITIVE_CATEGORY = "utilities/primitive"


class PrimitiveString(BuiltinNode):
    RETURN_TYPES = ("STRING",)
    FUNCTION = "execute"
    CATEGORY = PRIMITIVE_CATEGORY
    SEARCH_ALIASES: ClassVar[list[str]] = ["text", "string", "text box", "prompt"]

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"value": ("STRING", {"multiline": False})}}

    def execute(self, value: str) -> tuple[str]:
        return (value,)


class PrimitiveStringMultiline(BuiltinNode):
    RETURN_TYPES = ("STRING",)
    FUNCTION = "execute"
    CATEGORY = PRIMITIVE_CATEGORY
    ESSENTIALS_CATEGORY: ClassVar[str] = "Basics"

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"value": ("STRING", {"multiline": True})}}

    def execute(self, value: str) -> tuple[str]:
        return (value,)


class PrimitiveInt(BuiltinNode):
    RETURN_TYPES = ("INT",)
    FUNCTION = "execute"
    CATEGORY = PRIMITIVE_CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        # ComfyUI bounds this widget by ±sys.maxsize (2**63 - 1), not by the 64-bit seed range.
        return {
            "required": {"value": ("INT", {"min": -sys.maxsize, "max": sys.maxsize, "control_after_generate": True})}
        }

    def execute(self, value: int) -> tuple[int]:
        return (value,)


class PrimitiveFloat(BuiltinNode):
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "execute"
    CATEGORY = PRIMITIVE_CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"value": ("FLOAT", {"min": -sys.maxsize, "max": sys.maxsize})}}

    def execute(self, value: float) -> tuple[float]:
        return (value,)


class PrimitiveBoolean(BuiltinNode):
    RETURN_TYPES = ("BOOLEAN",)
    FUNCTION = "execute"
    CATEGORY = PRIMITIVE_CATEGORY

    @classmethod
    def INPUT_TYPES(cls) -> InputTypes:
        return {"required": {"value": ("BOOLEAN", {})}}

    def execute(self, value: bool) -> tuple[bool]:
        return (value,)


NODE_CLASS_MAPPINGS: dict[str, type[Any]] = {
    "PrimitiveString": PrimitiveString,
    "PrimitiveStringMultiline": PrimitiveStringMultiline,
    "PrimitiveInt": PrimitiveInt,
    "PrimitiveFloat": PrimitiveFloat,
    "PrimitiveBoolean": PrimitiveBoolean,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "PrimitiveString": "Text",
    "PrimitiveStringMultiline": "Text (Multiline)",
    "PrimitiveInt": "Int",
    "PrimitiveFloat": "Float",
    "PrimitiveBoolean": "Boolean",
}
