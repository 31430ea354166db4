"""Tasks plug into the generic trainer: each supplies forward/loss (and its own evaluation)."""

from .clip import CLIPTask

__all__ = ["CLIPTask"]
