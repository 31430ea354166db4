"""Building blocks shared by every tower."""

from .attention import Attention
from .mlp import Mlp, QuickGELU, make_act
from .transformer import ResidualBlock, Transformer

__all__ = ["Attention", "Mlp", "QuickGELU", "make_act", "ResidualBlock", "Transformer"]
