"""A duplex fast-path channel: one segment holding named SPSC rings, two eventfds per ring.

``gfx_host`` (the *owner*) creates a channel per opened vGPU, e.g. ``trap`` (frontend -> host:
guest MMIO accesses), ``reply`` (host -> frontend) and ``irq`` (host -> frontend: MSIs); its
broker hands the frontend (the *peer*) the channel with :func:`~.handover.send_fds`; both then
talk through :class:`~.endpoint.Sender`/:class:`~.endpoint.Receiver` endpoints.  What the slots
contain is the business of the services; this module only lays out rings and eventfds.

Glossary:
- side: ``Side.OWNER`` (created the segment, unlinks it) or ``Side.PEER`` (attached to it).
- ring spec: name (``[a-z][a-z0-9_]{0,30}``), slot count, slot size, and which side produces.
- export: what the owner hands over: a JSON payload and the eventfds, in the order
  ``ring0.data, ring0.space, ring1.data, ...`` (directory order).

Segment layout (little endian, version 1; each ring 64-byte aligned, format of :mod:`.ring`):

| offset | size | field |
|---|---|---|
| 0 | 4 | magic ``0x4E484356`` (bytes ``VCHN``) |
| 4 | 2 | version (1) |
| 6 | 2 | ring count (1..16) |
| 8 | 4 | directory end = 64 + 64 * ring count |
| 12 | 4 | reserved, zero |
| 16 | 8 | total size of the channel in bytes |
| 24-63 | | reserved, zero |
| 64 + 64 i | 32 | ring i: name, ASCII, NUL padded |
| +32 | 8 | ring i: offset of its header in the segment |
| +40 | 8 | ring i: bytes reserved for it (``RingLayout.size_for``) |
| +48 | 1 | ring i: producing side (0 owner, 1 peer) |
| +49-63 | | reserved, zero |

Hand-over payload (JSON, UTF-8): ``{"format": "vgpusim-channel", "version": 1, "segment": name,
"rings": [names in directory order]}``; geometry comes from the segment, which is authoritative.

Close: each side marks its end of every ring closed, signals the eventfd the other side may sleep
on, releases its rings, closes its eventfds and peer connection, and unmaps; the owner also
unlinks the segment.  A dead owner leaves the file behind: ``segment.remove_all`` at start-up.
"""

from __future__ import annotations

import enum
import json
import re
import socket
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from vgpusim.common.errors import InvalidArgument, NotFound, WrongState

from .endpoint import Receiver, Sender
from .notify import DEFAULT_SPIN_US, Notifier, PeerWatch
from .ring import Ring, RingLayout, RingStatistics
from .segment import Segment, StrPath

__all__ = ["ChannelEnd", "ChannelSpec", "RingSpec", "Side", "attach_channel", "create_channel"]

MAGIC = 0x4E484356
VERSION = 1
MAX_RINGS = 16
FDS_PER_RING = 2
PAYLOAD_FORMAT = "vgpusim-channel"
_RING_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_HEAD = struct.Struct("<IHHIIQ")  # magic, version, nrings, directory end, reserved, total size
_ENTRY = struct.Struct("<32sQQB")  # name, offset, size, producer side
_ALIGN = 64


class Side(enum.IntEnum):
    """Which end of a channel: the creator (``OWNER``, gfx_host) or the attacher (``PEER``)."""

    OWNER = 0
    PEER = 1


@dataclass(frozen=True, slots=True)
class RingSpec:
    """One ring of a channel: ``nslots`` (power of two) slots of ``slot_size`` bytes (multiple of 8)."""

    name: str
    nslots: int
    slot_size: int
    producer: Side

    def __post_init__(self) -> None:
        if not _RING_NAME_RE.match(self.name):
            raise InvalidArgument(f"invalid ring name {self.name!r}: [a-z][a-z0-9_]{{0,30}}")
        RingLayout.validate(self.nslots, self.slot_size)

    @property
    def size(self) -> int:
        return RingLayout.size_for(self.nslots, self.slot_size)


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """The rings of a channel, in directory (and eventfd) order."""

    rings: tuple[RingSpec, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.rings) <= MAX_RINGS:
            raise InvalidArgument(f"a channel has 1..{MAX_RINGS} rings, not {len(self.rings)}")
        names = [r.name for r in self.rings]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"duplicate ring names in {names}")

    def offsets(self) -> tuple[list[int], int]:
        """Each ring's offset in the segment, and the total segment size."""
        off, out = _align(64 + 64 * len(self.rings)), []
        for ring in self.rings:
            out.append(off)
            off = _align(off + ring.size)
        return out, off


def _align(n: int) -> int:
    return (n + _ALIGN - 1) & ~(_ALIGN - 1)


class ChannelEnd:
    """One side's handle on a channel: its rings' endpoints, eventfds, segment and peer watch."""

    def __init__(
        self, side: Side, segment: Segment, spec: ChannelSpec, rings: list[Ring], notifiers: list[Notifier]
    ) -> None:
        self.side = side
        self.spec = spec
        self.segment = segment
        self._rings = rings
        self._notifiers = notifiers
        self._peer: PeerWatch | None = None
        self._closed = False
        self._senders: dict[str, Sender] = {}
        self._receivers: dict[str, Receiver] = {}
        for i, (rs, ring) in enumerate(zip(spec.rings, rings, strict=True)):
            data, space = notifiers[FDS_PER_RING * i], notifiers[FDS_PER_RING * i + 1]
            if rs.producer == side:
                self._senders[rs.name] = Sender(rs.name, ring, data, space)
            else:
                self._receivers[rs.name] = Receiver(rs.name, ring, data, space)

    @property
    def name(self) -> str:
        return self.segment.name

    def _endpoint(self, ring: str, table: dict[str, Sender] | dict[str, Receiver], role: str) -> None:
        if self._closed:
            raise WrongState(f"channel {self.name} is closed", reason="CHANNEL_CLOSED")
        if ring not in table:
            if any(r.name == ring for r in self.spec.rings):
                raise WrongState(f"this {self.side.name.lower()} end does not {role} ring {ring!r}")
            raise NotFound(f"channel {self.name} has no ring {ring!r}", reason="RING_NOT_FOUND")

    def sender(self, ring: str) -> Sender:
        """The producing endpoint of ``ring``.  Errors: ``NotFound``, ``WrongState`` (we consume it)."""
        self._endpoint(ring, self._senders, "produce")
        return self._senders[ring]

    def receiver(self, ring: str) -> Receiver:
        """The consuming endpoint of ``ring``.  Errors: ``NotFound``, ``WrongState`` (we produce it)."""
        self._endpoint(ring, self._receivers, "consume")
        return self._receivers[ring]

    def export(self) -> tuple[bytes, list[int]]:
        """The hand-over for the peer: JSON payload and our eventfds (still ours to close).

        Errors: ``WrongState`` on the peer side or after ``close``.
        """
        if self.side is not Side.OWNER or self._closed:
            raise WrongState("only an open owner end can export its channel")
        payload = {
            "format": PAYLOAD_FORMAT,
            "version": VERSION,
            "segment": self.name,
            "rings": [r.name for r in self.spec.rings],
        }
        return json.dumps(payload).encode(), [n.fileno() for n in self._notifiers]

    def watch_peer(self, sock: socket.socket) -> None:
        """Adopt ``sock`` (the silent connection to the peer) to learn of the peer's death."""
        if self._closed:
            raise WrongState(f"channel {self.name} is closed", reason="CHANNEL_CLOSED")
        if self._peer is not None:
            self._peer.close()
        self._peer = PeerWatch(sock)
        for ep in (*self._senders.values(), *self._receivers.values()):
            ep.peer = self._peer

    def statistics(self) -> dict[str, RingStatistics]:
        return {rs.name: ring.statistics() for rs, ring in zip(self.spec.rings, self._rings, strict=True)}

    def close(self) -> None:
        """Mark our ends closed, wake the peer, free everything; the owner unlinks.  Idempotent.

        Errors: ``Busy`` (``SEGMENT_EXPORTED``) if the caller still holds views of ``segment.buf``;
        everything else is released already, and calling ``close`` again retries the unmap.
        """
        if self._closed:
            self.segment.close()
            return
        self._closed = True
        for i, (rs, ring) in enumerate(zip(self.spec.rings, self._rings, strict=True)):
            if rs.producer == self.side:
                ring.close_producer()
                self._notifiers[FDS_PER_RING * i].signal()
            else:
                ring.close_consumer()
                self._notifiers[FDS_PER_RING * i + 1].signal()
        for ep in (*self._senders.values(), *self._receivers.values()):
            ep.detach()
        for ring in self._rings:
            ring.release()
        for n in self._notifiers:
            n.close()
        if self._peer is not None:
            self._peer.close()
        if self.side is Side.OWNER:
            self.segment.unlink(missing_ok=True)
        self.segment.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChannelEnd({self.name!r}, {self.side.name}, rings={[r.name for r in self.spec.rings]})"


def create_channel(
    directory: StrPath, name: str, spec: ChannelSpec, *, spin_us: float = DEFAULT_SPIN_US
) -> ChannelEnd:
    """Create segment ``<directory>/<name>`` laid out for ``spec`` and the eventfds; the owner end.

    Errors: as ``Segment.create`` (``AlreadyExists``, ``InvalidArgument``...).
    """
    offsets, total = spec.offsets()
    with ExitStack() as undo:
        seg = Segment.create(directory, name, total)
        undo.callback(seg.unlink, missing_ok=True)
        undo.callback(seg.close)
        buf = seg.buf
        _HEAD.pack_into(buf, 0, MAGIC, VERSION, len(spec.rings), 64 + 64 * len(spec.rings), 0, total)
        rings: list[Ring] = []
        for i, (rs, off) in enumerate(zip(spec.rings, offsets, strict=True)):
            _ENTRY.pack_into(buf, 64 + 64 * i, rs.name.encode(), off, rs.size, int(rs.producer))
            rings.append(Ring.init(buf[off : off + rs.size], rs.nslots, rs.slot_size))
            undo.callback(rings[-1].release)
        notifiers = [Notifier(spin_us=spin_us) for _ in range(FDS_PER_RING * len(spec.rings))]
        for n in notifiers:
            undo.callback(n.close)
        end = ChannelEnd(Side.OWNER, seg, spec, rings, notifiers)
        undo.pop_all()
    return end


def _read_spec(seg: Segment, names: list[str]) -> tuple[ChannelSpec, list[Ring]]:
    buf = seg.buf
    if seg.size < 64:
        raise InvalidArgument(f"segment {seg.name} is too small for a channel")
    magic, version, nrings, dir_end, _, total = _HEAD.unpack_from(buf, 0)
    if magic != MAGIC:
        raise InvalidArgument(f"segment {seg.name} is not a channel (magic {magic:#x})", reason="BAD_MAGIC")
    if version != VERSION:
        raise InvalidArgument(f"channel version {version} is not {VERSION}", reason="BAD_VERSION")
    if not 1 <= nrings <= MAX_RINGS or dir_end != 64 + 64 * nrings or total > seg.size:
        raise InvalidArgument(f"channel {seg.name} has a corrupt header", reason="CHANNEL_CORRUPT")
    specs, rings = [], []
    try:
        for i in range(nrings):
            raw, off, size, producer = _ENTRY.unpack_from(buf, 64 + 64 * i)
            if not dir_end <= off <= off + size <= total or producer not in (0, 1):
                raise InvalidArgument(
                    f"ring {i} of channel {seg.name} is out of bounds", reason="CHANNEL_CORRUPT"
                )
            rings.append(Ring.attach(buf[off : off + size]))
            specs.append(
                RingSpec(
                    raw.rstrip(b"\0").decode("ascii"), rings[-1].nslots, rings[-1].slot_size, Side(producer)
                )
            )
        spec = ChannelSpec(tuple(specs))
        if [r.name for r in spec.rings] != names:
            raise InvalidArgument(
                f"hand-over names rings {names}, the segment holds {[r.name for r in spec.rings]}"
            )
    except BaseException:
        for ring in rings:
            ring.release()
        raise
    return spec, rings


def attach_channel(
    directory: StrPath,
    payload: bytes,
    fds: list[int],
    *,
    peer: socket.socket | None = None,
    spin_us: float = DEFAULT_SPIN_US,
) -> ChannelEnd:
    """Attach to the channel an owner exported; the peer end.

    Takes ownership of ``fds`` and ``peer`` (the connection the hand-over came on, kept as the
    peer watch), even when it fails.  Errors: ``InvalidArgument`` (payload, descriptor count,
    segment header), ``NotFound`` (segment gone).
    """
    with ExitStack() as undo:
        notifiers = [Notifier(fd, spin_us=spin_us) for fd in fds]
        for n in notifiers:
            undo.callback(n.close)
        if peer is not None:
            undo.callback(peer.close)
        try:
            desc = json.loads(payload)
            ok = desc["format"] == PAYLOAD_FORMAT and isinstance(desc["segment"], str)
            names = [str(n) for n in desc["rings"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(f"malformed channel hand-over payload: {exc}") from exc
        if not ok or desc["version"] != VERSION:
            raise InvalidArgument("not a version-1 vgpusim channel hand-over", reason="BAD_VERSION")
        if len(fds) != FDS_PER_RING * len(names):
            raise InvalidArgument(f"{len(fds)} descriptors for {len(names)} rings (want {FDS_PER_RING} each)")
        seg = Segment.open(directory, desc["segment"])
        undo.callback(seg.close)
        spec, rings = _read_spec(seg, names)
        end = ChannelEnd(Side.PEER, seg, spec, rings, notifiers)
        if peer is not None:
            end.watch_peer(peer)
        undo.pop_all()
    return end
