"""Datasets: the store (format, writer, window reader) and the episode viewer."""

from neuralworld.data.store import Dataset, DatasetError, DatasetWriter, WindowBatch, WindowSampler

__all__ = ["Dataset", "DatasetError", "DatasetWriter", "WindowBatch", "WindowSampler"]
