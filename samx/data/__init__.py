"""Datasets in memory (uint8 NHWC images, int32 labels) with controlled, recorded label noise."""

from samx.data import noise, synthetic
from samx.data._checks import CorruptFileError
from samx.data._dataset import Dataset
from samx.data._fetch import fetch
from samx.data._idx import read_idx
from samx.data._image_folder import default_cache_dir
from samx.data._sources import load
from samx.data.dominoes import dominoes
from samx.data.noise import NoisyLabels

__all__ = [
    "CorruptFileError",
    "Dataset",
    "NoisyLabels",
    "default_cache_dir",
    "dominoes",
    "fetch",
    "load",
    "noise",
    "read_idx",
    "synthetic",
]
