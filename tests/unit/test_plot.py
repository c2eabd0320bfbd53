"""The latency plot: a valid PNG of the asked size, drawn from the run's data.

Pixels are read back with matplotlib's PNG reader and told apart by colour:
the requests' blue, the failures' red and the windows' orange over white.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from numpy.typing import NDArray

from haul.errors import UsageError
from haul.lab.loadrun import LoadRun, Mark, Sample, Window
from haul.lab.plot import PlotLayout, write_latency_png

Image = NDArray[np.float32]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a PNG file, each CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    return chunks


def read(path: Path) -> Image:
    image: Image = imread(path)[:, :, :3]  # RGB, 0..1
    return image


def red(image: Image) -> NDArray[np.bool_]:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (r > 0.7) & (g < 0.35) & (b < 0.35)


def blue(image: Image) -> NDArray[np.bool_]:
    return image[..., 2] - image[..., 0] > 0.2


def band(image: Image) -> NDArray[np.bool_]:
    """The windows' orange at 28 % over white paper: (255, 222, 191)."""
    return np.all(np.abs(image * 255 - np.array([255, 222, 191])) <= 8, axis=-1)


def near(mask: NDArray[np.bool_], xy: tuple[float, float], radius: int = 3) -> bool:
    x, y = int(xy[0]), int(xy[1])
    return bool(mask[y - radius : y + radius + 1, x - radius : x + radius + 1].any())


def inside(mask: NDArray[np.bool_], layout: PlotLayout) -> NDArray[np.bool_]:
    """The part of ``mask`` in the plot area (axes' frame and outside it left out)."""
    top, bottom = int(layout.top) + 2, int(layout.bottom) - 2
    left, right = int(layout.left) + 2, int(layout.right) - 2
    return mask[top:bottom, left:right]


def a_run(
    *,
    failures: bool,
    windows: tuple[Window, ...] = (Window("A->B", 3.9, 4.4),),
    marks: tuple[Mark, ...] = (),
) -> LoadRun:
    """1 ms every 10 ms for 10 s, none during 3.9..4.3, then one of 400 ms at 4.0 s;
    with ``failures``, one request failed after 200 ms at 7 s."""
    samples = [
        Sample(i / 100, 0.001, 0.0, 0.001, 200, i % 2, i + 1)
        for i in range(1000)
        if not 390 <= i <= 430
    ]
    samples.append(Sample(4.0, 0.4, 0.0, 0.4, 200, 0, 2000))
    if failures:
        samples.append(Sample(7.0, 0.2, 0.0, 0.0, 0, 1, None, "connection reset"))
    return LoadRun("http://x/", 2, 0.0, 0.0, 10.0, 0, tuple(samples), windows, marks)


def test_the_png_is_valid_and_of_the_asked_size(tmp_path: Path) -> None:
    path = tmp_path / "run.png"
    layout = write_latency_png(path, a_run(failures=True), title="t", width=640, height=320)
    chunks = png_chunks(path.read_bytes())
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    assert any(kind == b"IDAT" for kind, _ in chunks)
    assert struct.unpack(">II", chunks[0][1][:8]) == (640, 320)
    assert read(path).shape == (320, 640, 3)
    assert (layout.width, layout.height) == (640, 320)
    # the plot area lies inside the image, with room around it for labels
    assert 20 < layout.left < layout.right < 640 and 20 < layout.top < layout.bottom < 300


def test_failures_are_red_crosses_where_they_failed_and_only_then(tmp_path: Path) -> None:
    with_failure, without = tmp_path / "failed.png", tmp_path / "clean.png"
    layout = write_latency_png(with_failure, a_run(failures=True), y_scale="linear")
    write_latency_png(without, a_run(failures=False), y_scale="linear")
    failed, clean = red(read(with_failure)), red(read(without))
    assert not clean.any()
    assert near(failed, layout.px(7.0, 200.0), radius=1)
    # in the plot area, the red is the one cross: within 5 pixels of the failure
    ys, xs = np.nonzero(failed)
    x, y = layout.px(7.0, 200.0)
    in_area = (xs > layout.left) & (xs < layout.right) & (ys > layout.top) & (ys < layout.bottom)
    assert in_area.sum() > 10
    assert np.all(np.abs(xs[in_area] - x) <= 5) and np.all(np.abs(ys[in_area] - y) <= 5)


def test_answered_requests_are_points_at_their_start_and_latency(tmp_path: Path) -> None:
    path = tmp_path / "run.png"
    layout = write_latency_png(path, a_run(failures=False), y_scale="linear")
    points = blue(read(path))
    assert layout.y_scale == "linear" and layout.y_min == 0 and layout.y_max == pytest.approx(448)
    assert near(points, layout.px(4.0, 400.0))  # the slow one
    assert near(points, layout.px(1.0, 1.0)) and near(points, layout.px(9.5, 1.0))
    # where no request was: nothing blue (halfway up, and in the gap before the slow one)
    assert not near(points, layout.px(2.0, 200.0), radius=5)
    assert not near(points, layout.px(4.15, 1.0), radius=2)


def test_a_window_is_shaded_over_its_span_and_labelled(tmp_path: Path) -> None:
    path = tmp_path / "run.png"
    windows = (Window("A->B", 3.9, 4.4), Window("B->A", 8.0, 8.02))
    layout = write_latency_png(path, a_run(failures=False, windows=windows), y_scale="linear")
    image = read(path)
    shaded = band(image)
    y = int(layout.px(0, 180.0)[1])  # below halfway up: no point, label or grid line there
    for t in (3.95, 4.2, 4.35):
        assert shaded[y, int(layout.px(t, 0)[0])], t
    assert not shaded[y, int(layout.px(3.8, 0)[0])] and not shaded[y, int(layout.px(4.5, 0)[0])]
    assert not shaded[y, int(layout.px(6.0, 0)[0])]
    # a 20 ms window on a 10 s axis still shows, at least 2 pixels wide
    x = int(layout.px(8.0, 0)[0])
    assert shaded[y, x - 1 : x + 5].sum() >= 2
    # its label at the top of the band: dark ink there that is neither paper nor band
    x0, x1 = int(layout.px(3.9, 0)[0]), int(layout.px(4.4, 0)[0])
    top = image[int(layout.top) + 3 : int(layout.top) + 20, x0 : x1 + 1]
    assert (top.sum(axis=-1) < 1.8).any()
    # no window, no shade anywhere
    plain = tmp_path / "plain.png"
    layout = write_latency_png(plain, a_run(failures=False, windows=()))
    assert not band(read(plain)).any()


def test_marks_are_dashed_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.png"
    run = a_run(failures=False, windows=(), marks=(Mark("go", 2.55),))
    layout = write_latency_png(path, run, y_scale="linear")
    image = read(path)
    x = int(layout.px(2.55, 0)[0])
    column = image[int(layout.top) + 5 : int(layout.px(0, 50.0)[1]), x - 1 : x + 2].min(axis=1)
    grey = np.all((column > 0.3) & (column < 0.6), axis=-1)
    white = np.all(column > 0.95, axis=-1)
    assert grey.sum() > 20 and white.sum() > 20  # dashes, and gaps between them


def test_log_scale_is_chosen_for_a_large_spread_and_spans_whole_decades(tmp_path: Path) -> None:
    path = tmp_path / "run.png"
    layout = write_latency_png(path, a_run(failures=True))
    assert layout.y_scale == "log"
    assert (layout.y_min, layout.y_max) == (1.0, 1000.0)
    # decades are evenly spaced
    ys = [layout.px(0, v)[1] for v in (1, 10, 100, 1000)]
    assert ys[0] == pytest.approx(layout.bottom) and ys[-1] == pytest.approx(layout.top)
    assert max(np.diff(ys)) - min(np.diff(ys)) < 0.01
    image = read(path)
    assert near(blue(image), layout.px(4.0, 400.0)) and near(red(image), layout.px(7.0, 200.0))
    even = [Sample(i / 10, 0.001 + i / 1e5, 0.0, 0.0, 200, 0) for i in range(100)]
    run = LoadRun("http://x/", 1, 0.0, 0.0, 10.0, 0, tuple(even))
    assert write_latency_png(tmp_path / "even.png", run).y_scale == "linear"


def test_the_subtitle_sums_the_run_up(tmp_path: Path) -> None:
    layout = write_latency_png(tmp_path / "run.png", a_run(failures=True), title="haul demo")
    assert layout.subtitle.startswith("961 requests on 2 connections, 1 failed, ")
    own = write_latency_png(tmp_path / "own.png", a_run(failures=True), subtitle="mine")
    assert own.subtitle == "mine"


def test_an_empty_run_gives_a_valid_plot_with_its_windows(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    run = LoadRun("http://x/", 1, 0.0, 0.0, 3.0, 0, (), (Window("A->B", 1.0, 1.5),))
    layout = write_latency_png(path, run, title="nothing", width=640, height=320)
    image = read(path)
    assert image.shape == (320, 640, 3)
    assert (layout.x_max, layout.y_scale, layout.y_min, layout.y_max) == (3.0, "linear", 0, 1)
    assert not red(image).any() and not inside(blue(image), layout).any()
    assert band(image).any()


def test_too_small_an_image_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="too small"):
        write_latency_png(tmp_path / "x.png", a_run(failures=False), width=100, height=80)
    assert not (tmp_path / "x.png").exists()
