"""Exceptions raised while reading, recognising and building diffusion models from files."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A model file could not be used: wrong format, damaged, or an architecture this engine does not run."""


class UnsafeModelFormat(ModelFileError):  # noqa: N818 - the name is part of the engine's contract
    """The file is not a safetensors file (e.g. a pickle-based .ckpt/.pt/.pth/.bin) and is refused unopened."""


class CorruptModelFile(ModelFileError):  # noqa: N818
    """The file looks like safetensors but its header or data section is truncated or inconsistent."""


class UnsupportedModelError(ModelFileError):
    """The file was recognised, but its architecture (or a part of it) cannot be loaded by this engine."""


class ConversionError(ModelFileError):
    """Converting the file's weights to the engine's module layout left missing or unexpected weights."""
