"""Shared-memory fast path: segments, SPSC rings, eventfd wake-ups, fd hand-over, duplex channels.

Guest MMIO traps, doorbells, interrupts and DMA cannot afford a gRPC call (~0.5 ms); they go
through memory shared by ``qemu_frontend`` and ``gfx_host``.  One concept per module:

| module | concept |
|---|---|
| :mod:`.segment` | named files in a directory (``/dev/shm/...``), mapped shared; guest RAM is one |
| :mod:`.ring` | SPSC ring of fixed-size slots with a magic/version header, free-running indices |
| :mod:`.notify` | eventfd :class:`Notifier` (adaptive spin, then ``poll``) and :class:`PeerWatch` |
| :mod:`.handover` | one frame of payload + descriptors over ``AF_UNIX`` (``SCM_RIGHTS``) |
| :mod:`.endpoint` | :class:`Sender`/:class:`Receiver`: a ring plus its wake-ups |
| :mod:`.channel` | several named rings in one segment, created by an owner, attached by a peer |
| :mod:`.errors` | ``RingFull``/``RingEmpty`` (``WouldBlock``), ``PeerGone`` |
| :mod:`.bench` | ``measure_roundtrip``: channel vs raw eventfd ping-pong, ring copy throughput |

Glossary: owner (creates and unlinks), peer (attaches), producer/consumer (the two ends of a
ring), hand-over (the owner's broker passing a channel to its peer).  Target: Linux, x86-64.
"""

from .channel import ChannelEnd, ChannelSpec, RingSpec, Side, attach_channel, create_channel
from .endpoint import Receiver, Sender
from .errors import PEER_CLOSED, PEER_DIED, PeerGone, RingEmpty, RingFull, WouldBlock
from .handover import recv_fds, recv_fds_async, send_fds, send_fds_async
from .notify import DEFAULT_SPIN_US, Notifier, PeerWatch
from .ring import Ring, RingLayout, RingStatistics
from .segment import Segment, list_segments, remove_all

__all__ = [
    "DEFAULT_SPIN_US",
    "PEER_CLOSED",
    "PEER_DIED",
    "ChannelEnd",
    "ChannelSpec",
    "Notifier",
    "PeerGone",
    "PeerWatch",
    "Receiver",
    "Ring",
    "RingEmpty",
    "RingFull",
    "RingLayout",
    "RingSpec",
    "RingStatistics",
    "Segment",
    "Sender",
    "Side",
    "WouldBlock",
    "attach_channel",
    "create_channel",
    "list_segments",
    "recv_fds",
    "recv_fds_async",
    "remove_all",
    "send_fds",
    "send_fds_async",
]
