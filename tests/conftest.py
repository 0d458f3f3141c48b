"""Suite-wide test settings."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


class _PollerNoise(logging.Filter):
    """Drops grpc-aio's spurious poller wake-up errors from the ``asyncio`` logger.

    Tests that run fake gRPC servers on an event loop in a second thread of the test process (next
    to the loop of the code under test) make grpcio 1.62's shared completion-queue poller sometimes
    find its fd already drained: ``BlockingIOError`` in ``PollerCompletionQueue._handle_events``,
    logged by asyncio; the calls themselves are unaffected. A service or CLI process runs one loop
    and never logs it, so only this test artefact is filtered, nothing else.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, BlockingIOError) and "PollerCompletionQueue" in record.getMessage())


@pytest.fixture(autouse=True)
def _quiet_grpc_poller() -> Iterator[None]:
    noise = _PollerNoise()
    logger = logging.getLogger("asyncio")
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)
