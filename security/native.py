"""The compiled half of prompt security, security._native (csrc/security/): the literal automaton
(literals.py) and the fold table (normalize.py). Part of the package, built by setup.py with the
other extensions; without it the check cannot run, so importing security fails with the command
that builds it."""

from __future__ import annotations

try:
    from security._native import Folder, Literals
except ImportError as error:
    raise ImportError("security._native is not built: run `.venv/bin/pip install -e . --no-build-isolation "
                      "--no-deps` (or `make install`) from the repository root") from error

__all__ = ["Folder", "Literals"]
