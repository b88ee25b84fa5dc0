"""Errors the library raises for bad user input.

Every message is one sentence that names the offending thing and says what to do. The CLI and the
app print ``str(error)`` and nothing else, so no traceback ever reaches a user for bad input.
"""
from __future__ import annotations


class FRPTError(Exception):
    """Base class: a problem with user input, reported as one sentence."""


class ImageError(FRPTError):
    """An image file or upload that cannot be decoded safely."""


class CheckpointError(FRPTError):
    """A checkpoint folder that is missing, foreign, tampered with or from a newer format."""


class DatasetError(FRPTError):
    """A dataset root with missing metadata, absent images or an unusable layout."""


class ConfigError(FRPTError):
    """An unknown preset, backbone, variant or an impossible option combination."""
