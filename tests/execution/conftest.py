"""Shared fixtures for the execution tests: one torch thread, the planted leaking blueprint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from actors.execution.testing import register_leaky, unregister_leaky


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def leaky() -> Iterator[str]:
    """The planted leaking blueprint, registered for the test only."""
    bp = register_leaky()
    yield bp.name
    unregister_leaky()
