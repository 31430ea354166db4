"""Image-text data: the synthetic world, CSV / caption-folder / WebDataset sources, sampling, collation."""

from .sources import DataSpec, build_dataset, parse_data_spec
from .synthetic import SyntheticWorld

__all__ = ["DataSpec", "SyntheticWorld", "build_dataset", "parse_data_spec"]
