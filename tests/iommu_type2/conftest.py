"""Fixtures of the iommu_type2 core tests: an in-memory store with a RAM segment, a mapper, containers."""

from __future__ import annotations

import pytest

from tests.iommu_type2.helpers import FAST, RAM, RAM_SIZE
from vgpusim.iommu_type2.core import Container, InMemorySegmentStore, IommuMode, Mapper


@pytest.fixture
def store() -> InMemorySegmentStore:
    segments = InMemorySegmentStore()
    segments.create(RAM, RAM_SIZE)
    return segments


@pytest.fixture
def mapper(store: InMemorySegmentStore) -> Mapper:
    return Mapper(store, FAST)


@pytest.fixture
def ctr(mapper: Mapper) -> Container:
    """An emulated-mode container of owner ``vm0`` with ``RAM`` registered, no memlock limit."""
    container = mapper.create_container("vm0", IommuMode.EMULATED)
    container.register_segment(RAM, RAM_SIZE)
    return container


@pytest.fixture
def hw(mapper: Mapper) -> Container:
    """A hardware-IOMMU container of owner ``vm1`` with ``RAM`` registered, no memlock limit."""
    container = mapper.create_container("vm1", IommuMode.HARDWARE)
    container.register_segment(RAM, RAM_SIZE)
    return container
