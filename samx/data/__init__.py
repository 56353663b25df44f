"""Datasets in memory (uint8 NHWC images, int32 labels) with controlled label noise."""

from samx.data._dataset import Dataset
from samx.data._idx import read_idx
from samx.data._image_folder import default_cache_dir
from samx.data._sources import load

__all__ = ["Dataset", "default_cache_dir", "load", "read_idx"]
