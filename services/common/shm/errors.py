"""The errors of the shared-memory layer, as subclasses of :mod:`vgpusim.common.errors`.

The fast-path primitives (segments, rings, notifiers, channels) raise only domain errors, so a
caller can catch them with the same vocabulary as the rest of vgpusim.  This module adds the few
conditions that have no general class of their own.

Glossary:
- would block: a ``*_nowait`` operation that cannot complete now (EAGAIN); trio's ``WouldBlock``.
- peer: the process at the other end of a ring or channel (``gfx_host`` or ``qemu_frontend``).
- peer gone: the peer closed its end in order (reason ``PEER_CLOSED``) or died, which the kernel
  reports as a hang-up of the connection it kept open to us (reason ``PEER_DIED``).

| class | parent | errno | default reason |
|---|---|---|---|
| :class:`WouldBlock` | ``Busy`` | EAGAIN | ``WOULD_BLOCK`` |
| :class:`RingFull` | ``WouldBlock`` | EAGAIN | ``RING_FULL`` |
| :class:`RingEmpty` | ``WouldBlock`` | EAGAIN | ``RING_EMPTY`` |
| :class:`PeerGone` | ``Unavailable`` | EPIPE | ``PEER_GONE`` (``PEER_CLOSED``, ``PEER_DIED``) |

Other failures use the general classes directly: ``InvalidArgument`` (bad name, bad header,
reason ``RING_CORRUPT`` for indices or lengths a peer corrupted), ``TooBig`` (payload larger
than a slot), ``AlreadyExists``/``NotFound`` (segments), ``WrongState`` (use after close, wrong
direction), ``TimedOut`` (a bounded wait expired) and ``Busy`` (a mapping still exported).
"""

from __future__ import annotations

import errno as _errno

from vgpusim.common.errors import Busy, Unavailable

__all__ = ["PEER_CLOSED", "PEER_DIED", "PeerGone", "RingEmpty", "RingFull", "WouldBlock"]

PEER_CLOSED = "PEER_CLOSED"
"""Reason of :class:`PeerGone` when the peer marked its end closed (orderly shutdown)."""
PEER_DIED = "PEER_DIED"
"""Reason of :class:`PeerGone` when the peer's connection hung up (process exit or crash)."""


class WouldBlock(Busy):
    """EAGAIN: a non-blocking operation cannot proceed now; retry or use the waiting variant."""

    default_errno = _errno.EAGAIN
    default_reason = "WOULD_BLOCK"


class RingFull(WouldBlock):
    """``put_nowait`` on a ring whose slots are all in use."""

    default_reason = "RING_FULL"


class RingEmpty(WouldBlock):
    """``get_nowait`` on a ring that holds no item."""

    default_reason = "RING_EMPTY"


class PeerGone(Unavailable):
    """EPIPE: the other end of a ring or channel is closed or its process is dead."""

    default_errno = _errno.EPIPE
    default_reason = "PEER_GONE"
