"""LoadImage / LoadImageMask / SaveImage / PreviewImage against files made and read back with Pillow."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from gpu_executor.nodes.files import LoadImage, LoadImageMask, PreviewImage, SaveImage, get_save_image_path
from tests.unit.nodes.conftest import Rig, with_input_names

pytestmark = pytest.mark.unit

OUTSIDE = "Saving image outside the output folder is not allowed."


def png_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **params)
    return buffer.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    return chunks


def png_text(png: Image.Image) -> dict[str, str]:
    assert isinstance(png, PngImagePlugin.PngImageFile)
    return dict(png.text)


def zlib_level_flag(data: bytes) -> int:
    """FLEVEL of the first IDAT's zlib header: 0 for levels 0-1, 1 for 2-5, 2 for 6, 3 for 7-9."""
    idat = next(body for kind, body in png_chunks(data) if kind == b"IDAT")
    return idat[1] >> 6


# --- SaveImage --------------------------------------------------------------------------------------------------


def test_save_image_writes_pngs_with_the_prompt_and_counts_on(rig: Rig) -> None:
    rig.runtime.prompt = {"7": {"class_type": "SaveImage", "inputs": {"filename_prefix": "shot", "seed": 2**64 - 1}}}
    rig.runtime.extra_pnginfo = {"workflow": {"nodes": [1, 2]}, "note": "ok"}
    images = torch.rand((2, 3, 5, 3), generator=torch.Generator().manual_seed(0))
    result = SaveImage().save_images(images, "shot")

    assert result["ui"] == {
        "images": [
            {"filename": "shot_00001_.png", "subfolder": "", "type": "output"},
            {"filename": "shot_00002_.png", "subfolder": "", "type": "output"},
        ]
    }
    assert result["result"][0] is images
    for index in range(2):
        data = (rig.runtime.output_dir / f"shot_0000{index + 1}_.png").read_bytes()
        with Image.open(io.BytesIO(data)) as png:
            assert png.mode == "RGB" and png.size == (5, 3)
            # 255·x clipped and truncated to 8 bits
            expected = np.clip(255.0 * images[index].numpy(), 0, 255).astype(np.uint8)
            np.testing.assert_array_equal(np.asarray(png), expected)
            assert json.loads(png_text(png)["prompt"]) == rig.runtime.prompt
            assert json.loads(png_text(png)["workflow"]) == {"nodes": [1, 2]}
            assert json.loads(png_text(png)["note"]) == "ok"
        texts = [body for kind, body in png_chunks(data) if kind == b"tEXt"]
        assert [t.split(b"\0")[0] for t in texts] == [b"prompt", b"workflow", b"note"]
        assert texts[0] == b"prompt\0" + json.dumps(rig.runtime.prompt).encode()
        assert zlib_level_flag(data) == 1  # compress_level 4

    (more,) = SaveImage().save_images(images[:1], "shot")["ui"]["images"]
    assert more["filename"] == "shot_00003_.png"


def test_save_image_hidden_inputs_win_over_the_runtime(rig: Rig) -> None:
    SaveImage().save_images(torch.zeros((1, 2, 2, 3)), "h", prompt={"a": 1}, extra_pnginfo={"k": [1]})
    with Image.open(rig.runtime.output_dir / "h_00001_.png") as png:
        assert png_text(png) == {"prompt": '{"a": 1}', "k": "[1]"}


def test_save_image_subfolder_clipping_and_batch_number(rig: Rig) -> None:
    images = torch.tensor([[[[1.5, -0.5, 0.5]]], [[[0.0, 1.0, 0.25]]]])
    result = SaveImage().save_images(images, "a/b/frame_%batch_num%")
    assert result["ui"]["images"] == [
        {"filename": "frame_0_00001_.png", "subfolder": os.path.join("a", "b"), "type": "output"},
        {"filename": "frame_1_00002_.png", "subfolder": os.path.join("a", "b"), "type": "output"},
    ]
    with Image.open(rig.runtime.output_dir / "a" / "b" / "frame_0_00001_.png") as png:
        assert np.asarray(png).tolist() == [[[255, 0, 127]]]


def test_save_image_continues_after_existing_files(rig: Rig) -> None:
    out = rig.runtime.output_dir
    for name in ("pic_00007_.png", "pic_00002_.png", "pic_x_00050_.png", "picture_00099_.png", "pic_abc_.png"):
        (out / name).write_bytes(b"")
    (entry,) = SaveImage().save_images(torch.zeros((1, 1, 1, 3)), "pic")["ui"]["images"]
    # pic_00007_ is the highest of this prefix; "pic_abc_" counts as 0; other prefixes are ignored
    assert entry["filename"] == "pic_00008_.png"


@pytest.mark.parametrize("prefix", ["../escape", "a/../../escape", "/tmp/absolute/escape"])
def test_save_image_refuses_paths_outside_the_output_folder(rig: Rig, prefix: str) -> None:
    with pytest.raises(Exception, match=re.escape(OUTSIDE)) as caught:
        SaveImage().save_images(torch.zeros((1, 1, 1, 3)), prefix)
    message = str(caught.value)
    assert message.startswith("**** ERROR: " + OUTSIDE + "\n full_output_folder: ")
    assert f"\n         output_dir: {rig.runtime.output_dir}" in message
    assert not any(rig.runtime.output_dir.parent.glob("escape*"))


def test_get_save_image_path_variables_and_normalisation(tmp_path: Path) -> None:
    folder, filename, counter, subfolder, prefix = get_save_image_path("x/./y/%width%x%height%", tmp_path, 640, 480)
    assert (filename, counter, subfolder, prefix) == ("640x480", 1, os.path.join("x", "y"), "x/./y/640x480")
    assert folder == os.path.join(str(tmp_path), "x", "y")
    assert Path(folder).is_dir()
    _, filename, _, subfolder, _ = get_save_image_path("inside/../ok", tmp_path)
    assert (filename, subfolder) == ("ok", "")


# --- PreviewImage -----------------------------------------------------------------------------------------------


def test_preview_image_writes_to_temp_with_a_random_prefix(rig: Rig) -> None:
    images = torch.full((1, 2, 2, 3), 0.5)
    result = PreviewImage().save_images(images)
    (entry,) = result["ui"]["images"]
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", entry["filename"])
    assert entry["subfolder"] == "" and entry["type"] == "temp"
    data = (rig.runtime.temp_dir / entry["filename"]).read_bytes()
    assert zlib_level_flag(data) == 0  # compress_level 1
    with Image.open(io.BytesIO(data)) as png:
        assert json.loads(png_text(png)["prompt"]) == rig.runtime.prompt
    assert not any(rig.runtime.output_dir.iterdir())
    assert result["result"][0] is images


# --- LoadImage --------------------------------------------------------------------------------------------------


def test_load_image_rgba_gives_rgb_and_one_minus_alpha(rig: Rig) -> None:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    rig.add_input("rgba.png", png_bytes(Image.fromarray(rgba, "RGBA")))
    image, mask = LoadImage().load_image("rgba.png")
    assert image.dtype == mask.dtype == torch.float32
    np.testing.assert_array_equal(image.numpy(), rgba[None, ..., :3].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(mask.numpy(), 1.0 - rgba[None, ..., 3].astype(np.float32) / 255.0)


def test_load_image_without_alpha_gives_a_64_zero_mask(rig: Rig) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rig.add_input("grey.png", png_bytes(Image.fromarray(grey, "L")))
    image, mask = LoadImage().load_image("grey.png")
    expected = np.repeat(grey[None, ..., None].astype(np.float32) / 255.0, 3, axis=-1)
    np.testing.assert_array_equal(image.numpy(), expected)
    assert torch.equal(mask, torch.zeros((1, 64, 64)))


def test_load_image_16_bit_png_is_clipped_to_8_bits_like_comfyui(rig: Rig) -> None:
    # Pillow opens 16-bit grey PNGs as mode "I;16"; ComfyUI only rescales mode "I", so values above 255 saturate.
    values = np.array([[0, 100, 255], [256, 4000, 65535]], dtype=np.uint16)
    rig.add_input("deep.png", png_bytes(Image.fromarray(values)))
    image, _ = LoadImage().load_image("deep.png")
    expected = np.minimum(values, 255).astype(np.float32) / 255.0
    np.testing.assert_array_equal(image[0, ..., 0].numpy(), expected)


def test_load_image_32_bit_integer_image_is_divided_by_255(rig: Rig) -> None:
    values = np.array([[0, 255 * 10 + 100, 255 * 200]], dtype=np.int32)
    buffer = io.BytesIO()
    Image.fromarray(values, "I").save(buffer, format="TIFF")
    rig.add_input("int.tif", buffer.getvalue())
    image, _ = LoadImage().load_image("int.tif")
    expected = np.floor(values / 255).astype(np.float32) / 255.0  # Pillow's point() truncates: 10.39 → 10
    np.testing.assert_array_equal(image[0, ..., 1].numpy(), expected)


def test_load_image_applies_the_exif_orientation(rig: Rig) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, size=(2, 3, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rig.add_input("turned.png", png_bytes(Image.fromarray(pixels, "RGB"), exif=exif))
    image, _ = LoadImage().load_image("turned.png")
    expected = np.rot90(pixels, k=-1).astype(np.float32) / 255.0
    assert image.shape == (1, 3, 2, 3)
    np.testing.assert_array_equal(image[0].numpy(), expected)


def test_load_image_animated_gif_gives_a_batch(rig: Rig) -> None:
    colors = [(255, 0, 0), (0, 128, 255), (10, 20, 30)]
    frames = [Image.new("RGB", (4, 3), color) for color in colors]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    rig.add_input("anim.gif", buffer.getvalue())
    image, mask = LoadImage().load_image("anim.gif")
    assert image.shape == (3, 3, 4, 3)
    for index, color in enumerate(colors):
        expected = np.broadcast_to(np.array(color, dtype=np.float32) / 255.0, (3, 4, 3))
        np.testing.assert_array_equal(image[index].numpy(), expected)
    assert torch.equal(mask, torch.zeros((3, 64, 64)))


def test_load_image_skips_frames_of_another_size(rig: Rig) -> None:
    buffer = io.BytesIO()
    first = Image.new("RGBA", (4, 4), (1, 2, 3, 255))
    second = Image.new("RGBA", (2, 2), (4, 5, 6, 255))
    third = Image.new("RGBA", (4, 4), (7, 8, 9, 0))
    first.save(buffer, format="TIFF", save_all=True, append_images=[second, third])  # pages of their own size
    rig.add_input("pages.tif", buffer.getvalue())
    image, mask = LoadImage().load_image("pages.tif")
    assert image.shape == (2, 4, 4, 3) and mask.shape == (2, 4, 4)
    assert image[1, 0, 0].tolist() == (np.array([7, 8, 9], dtype=np.float32) / np.float32(255)).tolist()
    assert mask[0].eq(0).all() and mask[1].eq(1).all()


def test_load_image_is_changed_validate_and_input_types(rig: Rig) -> None:
    data = png_bytes(Image.new("RGB", (2, 2)))
    rig.add_input("b.png", data)
    assert LoadImage.IS_CHANGED("b.png") == hashlib.sha256(data).hexdigest()
    assert LoadImage.VALIDATE_INPUTS("b.png") is True
    assert LoadImage.VALIDATE_INPUTS("missing.png") == "Invalid image file: missing.png"
    with pytest.raises(FileNotFoundError):
        LoadImage().load_image("missing.png")

    def outside_a_node() -> tuple[object, object, object]:
        return (
            LoadImage.INPUT_TYPES(),
            LoadImage.VALIDATE_INPUTS("a.png"),
            LoadImage.VALIDATE_INPUTS("zzz.png"),
        )

    types, known, unknown = with_input_names(("c.png", "a.png"), outside_a_node)
    assert types == {"required": {"image": (["a.png", "c.png"], {"image_upload": True})}}
    assert known is True and unknown == "Invalid image file: zzz.png"
    assert LoadImage.INPUT_TYPES() == {"required": {"image": ([], {"image_upload": True})}}


# --- LoadImageMask ----------------------------------------------------------------------------------------------


def test_load_image_mask_channels(rig: Rig) -> None:
    rgba = np.random.default_rng(5).integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    rig.add_input("m.png", png_bytes(Image.fromarray(rgba, "RGBA")))
    node = LoadImageMask()
    for index, channel in enumerate(["red", "green", "blue"]):
        (mask,) = node.load_image_mask("m.png", channel)
        np.testing.assert_array_equal(mask.numpy(), rgba[None, ..., index].astype(np.float32) / 255.0)
    (alpha,) = node.load_image_mask("m.png", "alpha")
    np.testing.assert_array_equal(alpha.numpy(), 1.0 - rgba[None, ..., 3].astype(np.float32) / 255.0)
    rig.add_input("rgb.png", png_bytes(Image.fromarray(rgba[..., :3], "RGB")))
    (no_alpha,) = node.load_image_mask("rgb.png", "alpha")
    assert torch.equal(no_alpha, torch.zeros((1, 64, 64)))
    assert LoadImageMask.INPUT_TYPES()["required"]["channel"] == (["alpha", "red", "green", "blue"],)
    assert LoadImageMask.IS_CHANGED("m.png", "red") == LoadImage.IS_CHANGED("m.png")
    assert LoadImageMask.IS_CHANGED(image="m.png", channel="red") == LoadImage.IS_CHANGED(image="m.png")
