"""Primitive nodes return their widget value; their widget bounds are ComfyUI's."""

from __future__ import annotations

import sys

import pytest

from gpu_executor.nodes.primitives import (
    PrimitiveBoolean,
    PrimitiveFloat,
    PrimitiveInt,
    PrimitiveString,
    PrimitiveStringMultiline,
)

pytestmark = pytest.mark.unit


def test_primitives_pass_their_value_through() -> None:
    assert PrimitiveString().execute("hello") == ("hello",)
    assert PrimitiveStringMultiline().execute("a\nb") == ("a\nb",)
    assert PrimitiveInt().execute(-(2**63) + 1) == (-(2**63) + 1,)
    assert PrimitiveFloat().execute(0.1) == (0.1,)
    assert PrimitiveBoolean().execute(False) == (False,)


def test_primitive_widgets() -> None:
    assert PrimitiveString.INPUT_TYPES() == {"required": {"value": ("STRING", {"multiline": False})}}
    assert PrimitiveStringMultiline.INPUT_TYPES() == {"required": {"value": ("STRING", {"multiline": True})}}
    # ±sys.maxsize (2**63 - 1): PrimitiveInt is not a seed widget (those reach 0xffffffffffffffff)
    int_options = PrimitiveInt.INPUT_TYPES()["required"]["value"][1]
    assert int_options == {"min": -(2**63 - 1), "max": 2**63 - 1, "control_after_generate": True}
    assert sys.maxsize == 2**63 - 1
    assert PrimitiveFloat.INPUT_TYPES()["required"]["value"] == ("FLOAT", {"min": -(2**63 - 1), "max": 2**63 - 1})
    assert PrimitiveBoolean.INPUT_TYPES()["required"]["value"][0] == "BOOLEAN"
    for cls, kind in [
        (PrimitiveString, "STRING"), (PrimitiveStringMultiline, "STRING"), (PrimitiveInt, "INT"),
        (PrimitiveFloat, "FLOAT"), (PrimitiveBoolean, "BOOLEAN"),
    ]:  # fmt: skip
        assert (kind,) == cls.RETURN_TYPES
        assert cls.CATEGORY == "utilities/primitive"
