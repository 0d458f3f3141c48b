"""RENDER: frames drawn by the GPU into the framebuffers, shown on the display plane.

Each frame is one batch of ``FILL``/``COPY`` commands into the back buffer, ending with a
``DISPLAY_FLIP`` to it (double buffering; with a single framebuffer the front buffer is drawn and
nothing flips).  The scene (:class:`Scene`), in XRGB8888:

- a vertical gradient background: :data:`BANDS` horizontal bands, one ``FILL`` each, whose hue
  drifts from frame to frame;
- in the middle third, eight colour bars (the SMPTE order) scrolling right: one row drawn with a
  ``FILL`` per bar segment, then replicated down by doubling ``COPY``s (1, 2, 4, ... rows);
- a white square bouncing around the screen, one ``FILL`` per row.

The first frame is drawn before the plane is enabled (``set_plane``), later ones flip from the
command stream.  After every frame the guest checks sample pixels in its RAM against
:meth:`Scene.pixel` (the CPU's idea of the same frame).

Parameters: ``frames`` (0 = until stopped), ``interval_ms`` between frames, ``engine``.

Glossary:
- back buffer: the framebuffer not on screen, drawn while the other is shown.
- stride: bytes from one row to the next (width * 4 rounded up to 64).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Final

from vgpusim.common.errors import WrongState
from vgpusim.gfx_host.core.engine import commands as c
from vgpusim.qemu_frontend.guest.context import ParamValue, WorkloadContext
from vgpusim.qemu_frontend.guest.gtt import GmBuffer

BANDS: Final = 32
BARS: Final = (0xC0C0C0, 0xC0C000, 0x00C0C0, 0x00C000, 0xC000C0, 0xC00000, 0x0000C0, 0x101010)
WHITE: Final = 0xFFFFFF
DEFAULTS: Final[dict[str, ParamValue]] = {"frames": 0, "interval_ms": 16.0, "engine": "rcs"}


class Scene:
    """The animated test picture for a ``width`` x ``height`` surface with ``stride`` bytes per row."""

    def __init__(self, width: int, height: int, stride: int) -> None:
        if width < len(BARS) or height < 8 or stride < width * 4:
            raise ValueError(f"surface {width}x{height} stride {stride} too small for the scene")
        self.width, self.height, self.stride = width, height, stride
        self.bar_w = width // len(BARS)
        self.bars_y, self.bars_h = height // 3, height // 3
        self.box = max(4, min(width, height) // 8)

    # ---- what frame n looks like ---------------------------------------------------------------

    def band_color(self, band: int, n: int) -> int:
        hue = (0.62 + 0.25 * band / BANDS + 0.004 * n) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.65, 0.25 + 0.5 * band / BANDS)
        return int(red * 255) << 16 | int(green * 255) << 8 | int(blue * 255)

    def shift(self, n: int) -> int:
        return (n * 8) % self.width

    def box_origin(self, n: int) -> tuple[int, int]:
        """Top-left corner of the bouncing square (a triangle wave on each axis)."""

        def bounce(t: int, span: int) -> int:
            return abs(t % (2 * span) - span) if span > 0 else 0

        return bounce(n * 7, self.width - self.box), bounce(n * 5, self.height - self.box)

    def pixel(self, n: int, x: int, y: int) -> int:
        """The XRGB colour of pixel (x, y) in frame ``n`` (the CPU's reference)."""
        bx, by = self.box_origin(n)
        if bx <= x < bx + self.box and by <= y < by + self.box:
            return WHITE
        if self.bars_y <= y < self.bars_y + self.bars_h:
            return BARS[min((x - self.shift(n)) % self.width // self.bar_w, len(BARS) - 1)]
        # the band whose rows [b*h//BANDS, (b+1)*h//BANDS) hold y, as commands() fills them
        return self.band_color(((y + 1) * BANDS - 1) // self.height, n)

    # ---- how the GPU draws it ------------------------------------------------------------------

    def commands(self, base: int, n: int) -> list[Sequence[int]]:
        """The commands that draw frame ``n`` into the surface at GM ``base``."""
        w, h, stride = self.width, self.height, self.stride
        out: list[Sequence[int]] = []
        for band in range(BANDS):
            y0, y1 = band * h // BANDS, (band + 1) * h // BANDS
            if y1 > y0:
                out.append(c.fill(base + y0 * stride, (y1 - y0) * stride, self.band_color(band, n)))
        row = base + self.bars_y * stride
        for k, color in enumerate(BARS):
            start = (k * self.bar_w + self.shift(n)) % w
            length = self.bar_w if k < len(BARS) - 1 else w - k * self.bar_w
            first = min(length, w - start)
            out.append(c.fill(row + start * 4, first * 4, color))
            if length > first:
                out.append(c.fill(row, (length - first) * 4, color))
        done = 1
        while done < self.bars_h:  # replicate the bar row: 1, 2, 4, ... rows at a time
            k = min(done, self.bars_h - done)
            out.append(c.copy(row + done * stride, row, k * stride))
            done += k
        bx, by = self.box_origin(n)
        for y in range(by, by + self.box):
            out.append(c.fill(base + y * stride + bx * 4, self.box * 4, WHITE))
        return out

    def samples(self, n: int) -> list[tuple[int, int]]:
        """Pixels worth checking: each band, each bar, and the square's centre."""
        bx, by = self.box_origin(n)
        points = [(self.width - 1, band * self.height // BANDS) for band in range(BANDS)]
        points += [
            (k * self.bar_w + self.bar_w // 2, self.bars_y + self.bars_h // 2) for k in range(len(BARS))
        ]
        points.append((bx + self.box // 2, by + self.box // 2))
        return points


def check_frame(ctx: WorkloadContext, scene: Scene, fb: GmBuffer, n: int) -> None:
    """Compare sample pixels of ``fb`` in guest RAM with the scene; WrongState on a mismatch."""
    env = ctx.driver.env
    for x, y in scene.samples(n):
        got = env.read_u32(fb.gpa + y * scene.stride + x * 4) & 0xFFFFFF
        want = scene.pixel(n, x, y)
        if got != want:
            raise WrongState(
                f"frame {n}: pixel ({x}, {y}) is {got:06x}, expected {want:06x}",
                reason="FRAME_MISMATCH",
                metadata={"frame": str(n), "x": str(x), "y": str(y)},
            )


def run_render(ctx: WorkloadContext) -> None:
    """Draw and show frames until ``frames`` were drawn or the stop event is set."""
    d = ctx.driver
    d.init()
    engine = ctx.engine()
    frames = ctx.params.integer("frames")
    interval = ctx.params.number("interval_ms") / 1000
    if not d.framebuffers:
        raise WrongState("the driver has no framebuffer", reason="NO_FRAMEBUFFER")
    width, height, stride = d.mode
    scene = Scene(width, height, stride)
    for n in ctx.loop(frames):
        fb = d.framebuffers[n % len(d.framebuffers)]
        cmds = scene.commands(fb.gm, n)
        flip = n > 0 and len(d.framebuffers) > 1
        if flip:
            cmds.append(c.display_flip(fb.gm))
        seqno = d.submit_batch(engine, c.pack(*cmds))
        if not d.wait(seqno):
            ctx.stats.note(f"frame {n} hung; engine reset")
            continue
        check_frame(ctx, scene, fb, n)
        if n == 0:
            d.set_plane(fb.gm, width, height, stride)
            ctx.stats.note(f"plane enabled: {width}x{height} XRGB8888 stride {stride} at GM {fb.gm:#x}")
        ctx.stats.add(frames=1, iterations=1, verified=len(scene.samples(n)))
        if interval:
            ctx.stop.wait(interval)
