"""How the browser test (tests/integration/test_dashboard_browser.py) compares a page's
screenshot with its reviewed reference in docs/images/, and proof that the comparison fails for
the breakages it is there to catch: a blank page, a page cut short, a chart gone.

The comparison must pass two screenshots of the same page over different live data (other
timestamps, durations, a latency point higher or lower) and fail a broken one. Both images are
shrunk by SHRINK (text becomes grey, a chart's shape stays), then compared tile by tile: the
mean difference over the page and the worst tile must stay under their limits. A volatile
detail (a clock, a duration) changes a few pixels of one tile; a missing chart, table or
legend changes whole tiles and takes their ink: a tile that had ink (text, lines, a chart) must
keep at least MIN_INK_KEPT of it, and an empty one must not gain as much. The
plotting areas and tick labels of the charts (where live data moves bars, lines and points and
changes the scales) are masked in both images; the browser test checks separately that every
chart drew axes and marks, and the axis titles, legends and headings are compared."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

REFERENCES = Path(__file__).resolve().parent.parent / "docs" / "images"
PAGES = ("overview", "task_queue", "task_detail", "workers", "history", "dag", "submit")
SHRINK = 4  # 1280 px wide -> 320
TILE = 24  # shrunk pixels: about 100 px of the page a side
# Measured between runs of the browser test (charts' plotting areas and tick labels masked):
# mean <= 0.2, worst tile <= 10 (the attempts timeline's axis title holds a time), ink kept
# >= 84%. A blank page: mean 4-9, worst tile 30-120, no ink kept; a chart or table gone: a tile
# with no ink kept.
MAX_MEAN = 3.0
MAX_TILE = 25.0
MAX_HEIGHT_CHANGE = 0.08  # a page a twelfth taller or shorter has lost or gained a section
# A table's text is light ink: its tiles vanishing hardly moves a grey-level difference, but it
# takes away most of their ink. Tiles with less ink than INK_FLOOR (mean darkness out of 255:
# a few specks) are blank for this purpose.
MIN_INK_KEPT = 0.4
INK_FLOOR = 3.0


Box = tuple[float, float, float, float]  # x, y, width, height in page pixels


@dataclass(frozen=True)
class Difference:
    mean: float
    worst_tile: float
    height_change: float
    ink_kept: float = 1.0  # the least share of its ink a tile kept (or, inverted, gained)

    @property
    def acceptable(self) -> bool:
        return (
            self.mean <= MAX_MEAN
            and self.worst_tile <= MAX_TILE
            and self.height_change <= MAX_HEIGHT_CHANGE
            and self.ink_kept >= MIN_INK_KEPT
        )

    def __str__(self) -> str:
        return (
            f"mean {self.mean:.1f} (max {MAX_MEAN}), worst tile {self.worst_tile:.1f} "
            f"(max {MAX_TILE}), ink kept {self.ink_kept:.0%} (min {MIN_INK_KEPT:.0%}), "
            f"height change {self.height_change:.0%} (max {MAX_HEIGHT_CHANGE:.0%})"
        )


def _shrunk(image: Image.Image, height: int, masks: Sequence[Box]) -> np.ndarray:
    """Grey levels, SHRINK times smaller, the page's top `height` pixels (white below its end),
    the masked boxes white."""
    grey = image.convert("L")
    canvas = Image.new("L", (grey.width, height), 255)
    canvas.paste(grey.crop((0, 0, grey.width, min(height, grey.height))), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for x, y, width, box_height in masks:
        draw.rectangle((x, y, x + width, y + box_height), fill=255)
    small = canvas.resize((grey.width // SHRINK, height // SHRINK), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def compare(reference: Image.Image, actual: Image.Image, masks: Sequence[Box] = ()) -> Difference:
    if reference.width != actual.width:
        return Difference(255.0, 255.0, 1.0)
    height = max(reference.height, actual.height)
    expected, got = _shrunk(reference, height, masks), _shrunk(actual, height, masks)
    delta = np.abs(expected - got)
    ink_expected, ink_got = _tiles(255 - expected), _tiles(255 - got)
    inked = np.maximum(ink_expected, ink_got) >= INK_FLOOR
    kept = np.minimum(ink_expected, ink_got)[inked] / np.maximum(ink_expected, ink_got)[inked]
    return Difference(
        mean=float(delta.mean()),
        worst_tile=float(_tiles(delta).max()),
        height_change=abs(reference.height - actual.height) / reference.height,
        ink_kept=float(kept.min()) if kept.size else 1.0,
    )


def _tiles(values: np.ndarray) -> np.ndarray:
    """The mean of each TILE x TILE square (the ragged right and bottom edges left out)."""
    rows, cols = values.shape[0] // TILE, values.shape[1] // TILE
    squares = values[: rows * TILE, : cols * TILE].reshape(rows, TILE, cols, TILE)
    means: np.ndarray = squares.mean(axis=(1, 3))
    return means


def check_against_reference(name: str, actual: Path, masks: Sequence[Box] = ()) -> None:
    """Fails the test when the screenshot differs from docs/images/<name>.png beyond the limits
    (the message says by how much and where to look)."""
    reference = REFERENCES / f"{name}.png"
    with Image.open(reference) as ref, Image.open(actual) as got:
        difference = compare(ref, got, masks)
    print(f"screenshot {name}: {difference}")  # shown with -s: how close to the limits
    assert difference.acceptable, (
        f"the {name} page no longer looks like docs/images/{name}.png: {difference}. Look at "
        f"{actual}; if the change is intended, rerun with UPDATE_SCREENSHOTS=1 and review it."
    )


# --- the comparison catches breakage ------------------------------------------------------------


def _reference(name: str) -> Image.Image:
    with Image.open(REFERENCES / f"{name}.png") as image:
        return image.convert("RGB")


@pytest.mark.parametrize("name", PAGES)
def test_a_reference_matches_itself_and_fails_blank(name: str) -> None:
    reference = _reference(name)
    assert compare(reference, reference).acceptable
    blank = Image.new("RGB", reference.size, "white")
    assert not compare(reference, blank).acceptable


@pytest.mark.parametrize("name", PAGES)
def test_a_page_cut_short_fails(name: str) -> None:
    reference = _reference(name)
    cut = reference.crop((0, 0, reference.width, int(reference.height * 0.8)))
    assert not compare(reference, cut).acceptable


@pytest.mark.parametrize("name", ["overview", "task_detail", "workers", "history"])
def test_a_chart_gone_fails(name: str) -> None:
    """Paint over the page's largest chart-like block (the area below its first subheading that
    holds the most ink) with white: what a chart that draws nothing looks like."""
    reference = _reference(name)
    broken = reference.copy()
    ink = 255 - np.asarray(reference.convert("L"), dtype=np.float32)
    # The densest 200-px band of the main column (right of the sidebar) is a chart or a table.
    column = ink[:, 320:]
    band = 200
    sums = np.convolve(column.sum(axis=1), np.ones(band), mode="valid")
    top = int(sums.argmax())
    ImageDraw.Draw(broken).rectangle((320, top, reference.width, top + band), fill="white")
    assert not compare(reference, broken).acceptable


def test_small_live_changes_pass() -> None:
    """Another clock in the last caption ("Updated 05:13:21 UTC"): what two runs of the same
    page differ by outside the charts."""
    reference = _reference("overview")
    ink = np.asarray(reference.convert("L"))[:, 320:] < 160
    last = int(np.nonzero(ink.any(axis=1))[0].max())  # the bottom of the last caption
    changed = reference.copy()
    draw = ImageDraw.Draw(changed)
    draw.rectangle((370, last - 14, 560, last + 2), fill="white")
    font = ImageFont.load_default(size=14)
    draw.text((380, last - 14), "Updated 23:59:59 UTC", fill="grey", font=font)
    assert compare(reference, changed).acceptable
