from __future__ import annotations

from tests.tenancy.conftest import clock, config, store, tenancy  # noqa: F401 (fixtures)
