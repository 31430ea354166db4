"""Exceptions a user can cause. Each names the thing that went wrong and how to fix it."""

from __future__ import annotations


class ClipforgeError(Exception):
    """Base class of every error clipforge raises on purpose."""


class ConfigError(ClipforgeError, ValueError):
    """An invalid or misspelt configuration value."""


class UnknownModelError(ClipforgeError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0]) if self.args else ""


class TokenizerError(ClipforgeError, ValueError):
    """Text that cannot be tokenised as asked (for example, too long for the context)."""


class ImageError(ClipforgeError, ValueError):
    """An image file that is missing, corrupt, truncated or undecodable."""


class CheckpointError(ClipforgeError, ValueError):
    """A file that is not a CLIP checkpoint, or does not match the requested architecture."""


class TrainingError(ClipforgeError, RuntimeError):
    """Training cannot continue (non-finite loss, a mismatched checkpoint, ...)."""


class DataError(ClipforgeError, ValueError):
    """Data that cannot be used as given: a mask of the wrong kind, a missing pair, a label out of range."""
