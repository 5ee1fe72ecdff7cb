"""Test setup: 8 simulated CPU devices, so sharded code runs on any machine."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from pathlib import Path  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
  if not SHARED_DATA.exists():
    pytest.fail(f"{SHARED_DATA} is missing: tests expect the project's shared/ beside the checkout")
  return SHARED_DATA
