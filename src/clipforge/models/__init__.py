"""Towers and the two-tower CLIP model."""

from .clip import CLIP, CLIPOutput
from .resnet import ModifiedResNet
from .text import TextTransformer
from .vit import VisionTransformer

__all__ = ["CLIP", "CLIPOutput", "ModifiedResNet", "TextTransformer", "VisionTransformer"]
