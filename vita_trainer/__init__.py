"""VITA-1.5 progressive multimodal training: model, data, stages and runners."""

__version__ = "0.1.0"
