"""A GGUF file's key/value metadata as plain Python values."""
from __future__ import annotations

import os

import numpy as np
from gguf import GGUFReader, GGUFValueType


def read_gguf_metadata(source: str | os.PathLike[str] | GGUFReader) -> dict[str, object]:
    """Every metadata key of a GGUF file mapped to str, int, float, bool or a list of those.

    Accepts an already-open reader so a loader that also needs the tensors parses the file once.
    The reader's own "GGUF.*" pseudo-fields (version, counts) are not metadata and are left out.
    """
    reader = source if isinstance(source, GGUFReader) else GGUFReader(source)
    metadata: dict[str, object] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        # contents() converts a whole array with one tolist() per part, which keeps the 50k-entry
        # vocabularies at tens of milliseconds (GGUFReader's own parsing dominates).
        value = field.contents()
        if field.types == [GGUFValueType.FLOAT32]:
            # The shortest decimal that round-trips through float32 (1e-05, not 9.99999974e-06).
            value = float(str(np.float32(value)))
        metadata[name] = value
    return metadata
