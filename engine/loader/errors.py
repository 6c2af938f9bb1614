"""The one exception model loading raises."""
from __future__ import annotations


class ModelLoadError(ValueError):
    """A model file or folder is missing, corrupt or describes something the engine cannot run."""
