"""Draw the installable app's icons (SPEC 9) from the shapes of static/icon.svg, with Pillow.

    .venv/bin/python tools/make_icons.py

writes static/icon-192.png and static/icon-512.png (purpose "any maskable": the blue fills the
whole square, and the speech bubble stays inside the central circle of 80 % of the size that a
maskable icon's mask always keeps, https://w3c.github.io/manifest/#icon-masks) and
static/badge-96.png (the bubble alone, white on transparent: Android draws a notification's
badge from its alpha channel only). The PNGs are committed; run this again after changing the
drawing. Each shape is drawn at 4x and scaled down, for smooth edges.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

STATIC = Path(__file__).resolve().parent.parent / "static"
BLUE = (37, 99, 235, 255)   # #2563eb, the icon.svg background and the light theme's accent
WHITE = (255, 255, 255, 255)
SUPERSAMPLE = 4


def _bubble(draw: ImageDraw.ImageDraw, size: int, scale: float, fill: tuple[int, ...],
            lines: tuple[int, ...] | None) -> None:
    """The speech bubble of icon.svg (a 64-unit square), scaled by `scale` about the centre."""
    unit = size / 64 * scale
    offset = size / 2 - 32 * unit

    def p(x: float, y: float) -> tuple[float, float]:
        return offset + x * unit, offset + y * unit

    draw.rounded_rectangle([p(14, 14), p(50, 42)], radius=6 * unit, fill=fill)
    draw.polygon([p(28, 41), p(19, 50), p(19, 41)], fill=fill)  # the tail
    if lines is None:
        return
    width = 3 * unit
    for x1, y, x2 in ((23, 22, 41), (23, 28, 41), (23, 34, 33)):
        draw.line([p(x1, y), p(x2, y)], fill=lines, width=round(width))
        for x in (x1, x2):  # round caps
            cx, cy = p(x, y)
            draw.ellipse([cx - width / 2, cy - width / 2, cx + width / 2, cy + width / 2], fill=lines)


def app_icon(size: int) -> Image.Image:
    """The app icon, `size` px square: blue everywhere, the bubble in the maskable safe zone."""
    big = size * SUPERSAMPLE
    image = Image.new("RGBA", (big, big), BLUE)
    # The bubble spans 36 of 64 units; 1.1x keeps its corners inside the 80 % circle.
    _bubble(ImageDraw.Draw(image), big, 1.1, WHITE, BLUE)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def badge(size: int) -> Image.Image:
    """The notification badge: the bubble, white on transparent, filling most of the square."""
    big = size * SUPERSAMPLE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    _bubble(ImageDraw.Draw(image), big, 1.6, WHITE, (0, 0, 0, 0))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    for size in (192, 512):
        app_icon(size).save(STATIC / f"icon-{size}.png", optimize=True)
    badge(96).save(STATIC / "badge-96.png", optimize=True)


if __name__ == "__main__":
    main()
