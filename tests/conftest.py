"""Suite-wide settings."""

import pytest

try:
    import deepcomp._native as nat
except ImportError:  # pragma: no cover - the suite reports the missing extension itself
    nat = None


@pytest.fixture(autouse=True, scope="session")
def _winograd_without_memory_limit():
    """The kernel tests check which layers the Winograd rule picks and their results; the process-wide
    32 MB default for transformed weights (csrc/winograd.h) would make that depend on which layers
    earlier tests left alive. test_winograd_memory_budget and test_winograd_memory_env test the limit."""
    if nat is None or not hasattr(nat, "_set_winograd_memory_bytes"):
        yield
        return
    prev = nat._set_winograd_memory_bytes(-1)
    yield
    nat._set_winograd_memory_bytes(prev)
