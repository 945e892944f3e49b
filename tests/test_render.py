"""Tests for the pure figure and table builders and the deterministic writer."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import PathPatch
from matplotlib.text import Text
from rich.console import Console

from monitor.outputs.render import save
from monitor.aggregates.confusion import SparseCounts
from monitor.outputs.render.confusion_figures import (CELL_TEXT_MAX_CLASSES, CellLabel, ConfusionPlot, MatrixView,
                                                      cell_labels, confusion_figure, percent_text)
from monitor.outputs.render.drawing import CORRECT_COLOR, NO_DATA_NOTE, WRONG_COLOR, display_label
from monitor.outputs.render.history_figures import history_figures
from monitor.outputs.render.sample_grid import sample_grid_cells, sample_grid_figure
from monitor.outputs.render.matrix_views import normalized_view
from monitor.outputs.render.save import PNG_DPI, save_figure, write_csv, write_json, write_text
from monitor.outputs.render.tables import (TERMINAL_MAX_CLASS_ROWS, ClassDistributionRow, SamplerRow,
                                   class_distribution_rows, class_distribution_table,
                                   epoch_summary_table, furthest_from_expected, model_info_table,
                                   sampler_rows, sampler_table, smallest_and_largest, table_text)


def render_rgb(fig: Figure) -> np.ndarray:
    """The figure as an H×W×3 uint8 array, row 0 at the top, at the PNG dpi."""
    fig.set_dpi(PNG_DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def pixel_at(rgb: np.ndarray, display_xy: tuple[float, float]) -> np.ndarray:
    """The pixel under a display point (matplotlib's y axis points up, the array's down)."""
    x, y = display_xy
    return rgb[rgb.shape[0] - 1 - int(round(y)), int(round(x))]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        body = data[offset + 8:offset + 8 + length]
        assert struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])[0] == \
            zlib.crc32(kind + body)
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def count_patches(fig: Figure) -> dict[str, PathPatch]:
    return {artist.get_gid(): artist for artist in fig.axes[0].get_children()
            if isinstance(artist, PathPatch) and (artist.get_gid() or "").startswith("cell-counts")}


# ---------------------------------------------------------------------------- save


def test_same_figure_saves_to_identical_png_without_software_chunk(tmp_path):
    counts = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]], dtype=np.int64)
    first, second = tmp_path / "a" / "cm.png", tmp_path / "b" / "cm.png"
    save_figure(confusion_figure(counts, ["x", "y", "z"], "epoch 1"), first)
    save_figure(confusion_figure(counts, ["x", "y", "z"], "epoch 1"), second)
    data = first.read_bytes()
    assert data == second.read_bytes()
    chunks = png_chunks(data)
    text_keys = [body.split(b"\0")[0] for kind, body in chunks
                 if kind in (b"tEXt", b"iTXt", b"zTXt")]
    assert b"Software" not in text_keys
    assert b"matplotlib" not in data.lower()
    width, height = struct.unpack(">II", chunks[0][1][:8])
    fig = confusion_figure(counts, ["x", "y", "z"], "epoch 1")
    assert (width, height) == tuple(round(v * PNG_DPI) for v in fig.get_size_inches())
    assert sorted(p.name for p in first.parent.iterdir()) == ["cm.png"]


def test_encoded_png_decodes_to_the_exact_pixels_with_only_the_chunks_it_needs():
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)  # noise: every Up difference wraps somewhere
    rgba[10:20] = (250, 3, 128, 255)  # and flat rows, the figures' usual content
    data = save.encode_png(rgba, PNG_DPI)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB" and image.size == (53, 37)
        np.testing.assert_array_equal(np.asarray(image), rgba[..., :3])
        assert image.info["dpi"] == pytest.approx((PNG_DPI, PNG_DPI), abs=0.01)
    assert [kind for kind, _ in png_chunks(data)] == [b"IHDR", b"pHYs", b"IDAT", b"IEND"]
    assert save.encode_png(rgba.copy(), PNG_DPI) == data
    mirrored = rgba[:, ::-1]  # a strided view, as a caller may pass
    with Image.open(io.BytesIO(save.encode_png(mirrored, PNG_DPI))) as image:
        np.testing.assert_array_equal(np.asarray(image), mirrored[..., :3])


def test_different_figures_save_to_different_bytes(tmp_path):
    eye = np.eye(3, dtype=np.int64)
    save_figure(confusion_figure(eye, ["x", "y", "z"], "t"), tmp_path / "a.png")
    save_figure(confusion_figure(2 * eye, ["x", "y", "z"], "t"), tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


@pytest.mark.slow
def test_concurrent_saves_match_a_serial_save(tmp_path):
    # The monitor renders in worker threads; pyplot's global state would make this racy.
    names = [f"class {i}" for i in range(12)]
    counts = np.arange(144, dtype=np.int64).reshape(12, 12)
    save_figure(confusion_figure(counts, names, "serial"), tmp_path / "serial.png")
    paths = [tmp_path / f"thread{i}.png" for i in range(4)]
    threads = [threading.Thread(target=lambda p=p: save_figure(
        confusion_figure(counts, names, "serial"), p)) for p in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = (tmp_path / "serial.png").read_bytes()
    assert all(p.read_bytes() == expected for p in paths)


def test_write_json_is_sorted_indented_with_newline(tmp_path):
    path = tmp_path / "deep" / "er" / "info.json"
    write_json(path, {"b": 1, "a": {"d": [1, 2], "c": "é"}})
    assert path.read_text(encoding="utf-8") == (
        '{\n  "a": {\n    "c": "\\u00e9",\n    "d": [\n      1,\n      2\n    ]\n  },\n'
        '  "b": 1\n}\n')


def test_write_json_writes_non_finite_floats_as_history_csv_does(tmp_path):
    path = tmp_path / "model_info.json"
    write_json(path, {"hparams": {"lr": math.nan, "clip": math.inf}, "bounds": (-math.inf, 0.5)})

    def refuse(token: str) -> None:
        raise AssertionError(f"{token} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "bounds": ["-inf", 0.5], "hparams": {"clip": "inf", "lr": "nan"}}


def test_write_csv_uses_lf_and_quotes(tmp_path):
    path = tmp_path / "history.csv"
    write_csv(path, ["epoch", "name"], iter([(0, "a,b"), (1, 'say "hi"')]))
    assert path.read_bytes() == b'epoch,name\n0,"a,b"\n1,"say ""hi"""\n'


def test_write_text_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "console.txt"
    write_text(path, "first, longer content\n")
    write_text(path, "second\n")
    assert path.read_text(encoding="utf-8") == "second\n"
    assert os.listdir(tmp_path) == ["console.txt"]


def test_failed_write_keeps_old_file_and_removes_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model_info.json"
    write_text(path, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(save.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_text(path, "new\n")
    assert path.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(tmp_path) == ["model_info.json"]


def test_write_text_survives_lone_surrogates(tmp_path):
    write_text(tmp_path / "t.txt", "a\udcffb")
    assert (tmp_path / "t.txt").read_bytes() == b"a\\udcffb"


# ---------------------------------------------------------------------------- confusion matrix


def test_cell_labels_text_and_contrast():
    labels = cell_labels(np.array([[100, 0], [3, 1]], dtype=np.int64))
    assert labels == [CellLabel(0, 0, "100", True), CellLabel(0, 1, "0", False),
                      CellLabel(1, 0, "3", False), CellLabel(1, 1, "1", False)]


def test_percent_text_is_whole_from_ten_one_decimal_below_and_blank_at_zero():
    cases = {0.0: "", 0.01: "<0.1", 0.049: "<0.1", 0.05: "0.1", 2.54: "2.5", 9.94: "9.9", 9.95: "10",
             57.4: "57", 99.4: "99", 100.0: "100"}
    assert {value: percent_text(value) for value in cases} == cases


def test_percent_cell_labels_skip_empty_cells_and_turn_white_on_dark_ones():
    labels = cell_labels(np.array([[100.0, 0.0], [3.25, 0.02]]), percent=True)
    assert labels == [CellLabel(0, 0, "100", True), CellLabel(1, 0, "3.2", False), CellLabel(1, 1, "<0.1", False)]


def test_normalized_figure_shows_percent_of_each_row_and_an_empty_row_for_an_absent_class():
    # "b" never occurs as a label: its row is blank, neither NaN nor coloured.
    counts = np.array([[90, 10, 0], [0, 0, 0], [1, 1, 2]], dtype=np.int64)
    view = normalized_view(SparseCounts.of_matrix(counts), ["a", "b", "c"], "normalized")
    fig = ConfusionPlot(view).figure
    ax, colorbar = fig.axes
    np.testing.assert_allclose(ax.images[0].get_array(), [[90, 10, 0], [0, 0, 0], [25, 25, 50]])
    assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == (0, 100)
    assert colorbar.get_ylabel() == "% of the true class's samples"
    rgb = render_rgb(fig)
    blank = [pixel_at(rgb, ax.transData.transform((col, 1))) for col in range(3)]
    assert all((pixel == blank[0]).all() and pixel.min() > 240 for pixel in blank)
    patches = count_patches(fig)
    drawn = np.concatenate([patch.get_path().vertices for patch in patches.values()])
    assert not ((drawn[:, 1] > 0.5) & (drawn[:, 1] < 1.5)).any(), "no text in the empty row"


def test_a_block_view_colours_on_a_square_root_scale_and_says_what_a_pixel_holds():
    blocks = MatrixView(np.array([[400, 1], [4, 100]]), (), "blocks", block=20, classes=35)
    ax, colorbar = ConfusionPlot(blocks).figure.axes
    norm = ax.images[0].norm
    assert isinstance(norm, PowerNorm) and (norm.gamma, norm.vmin, norm.vmax) == (0.5, 0, 400)
    assert norm(4) == pytest.approx(0.1)  # one hundredth of the largest count: a tenth of the colours
    assert ax.get_xlabel() == "Predicted (class index; each pixel sums 20 × 20 classes)"
    assert ax.get_xlim() == (-0.5, 34.5) and colorbar.get_ylabel() == "Count in the block"
    whole = ConfusionPlot(MatrixView(np.array([[400, 1], [4, 100]]), (), "whole")).figure.axes[0]
    assert type(whole.images[0].norm) is Normalize and whole.get_xlabel() == "Predicted (class index)"


def test_a_count_scale_ticks_whole_numbers_also_after_an_update_with_a_new_norm():
    plot = ConfusionPlot(MatrixView(np.array([[2, 1], [0, 1]]), (), "blocks", block=20, classes=35))
    plot.update(MatrixView(np.array([[3, 0], [1, 2]]), (), "blocks", block=20, classes=35))
    colorbar = plot.figure.axes[1]
    ticks = [t for t in colorbar.get_yticks() if 0 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_confusion_figure_draws_counts_names_and_colorbar():
    counts = np.array([[90, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.int64)
    fig = confusion_figure(counts, ["cat", "dog", "bird"], "Confusion — epoch 2")
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # heatmap and colour bar
    assert ax.get_title() == "Confusion — epoch 2"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "bird"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Predicted", "True")
    assert set(count_patches(fig)) == {"cell-counts-black", "cell-counts-white"}

    rgb = render_rgb(fig)
    half = 0.3  # a box well inside one cell, where its count is written

    def cell_box(row, col):
        (x0, y0), (x1, y1) = ax.transData.transform([(col - half, row + half),
                                                     (col + half, row - half)])
        top, bottom = rgb.shape[0] - int(y1), rgb.shape[0] - int(y0)
        return rgb[top:bottom, int(x0):int(x1)].astype(int)

    dark_cell, light_cell = cell_box(0, 0), cell_box(1, 2)
    assert (dark_cell.min(axis=-1) > 240).any(), "white text on the darkest cell"
    assert (light_cell.max(axis=-1) < 40).any(), "black text on a light cell"


def test_confusion_figure_without_counts_has_blank_cells():
    counts = np.array([[90, 0], [0, 1]], dtype=np.int64)
    with_counts = render_rgb(confusion_figure(counts, ["a", "b"], "t"))
    fig = confusion_figure(counts, ["a", "b"], "t")
    for patch in count_patches(fig).values():
        patch.remove()
    assert not np.array_equal(with_counts, render_rgb(fig))


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 10, 43])
def test_confusion_layout_keeps_every_label_and_the_colour_bar_on_the_canvas(n):
    # Fixed layout, no layout engine: the margins must come from the names' real extents.
    names = [f"{'W' * 18}{i:02d}" for i in range(n)]  # display_label keeps 20 characters
    fig = confusion_figure(np.diag(np.full(n, 12345)).astype(np.int64), names, "layout")
    render_rgb(fig)
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    ax, colorbar = fig.axes
    texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label, ax.yaxis.label, ax.title,
             *colorbar.get_yticklabels(), colorbar.yaxis.label]
    for text in texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= -0.5 and box.y0 >= -0.5 and box.x1 <= width + 0.5 and box.y1 <= height + 0.5, \
            (text.get_text(), box.bounds, (width, height))
    # The colour bar sits right of the matrix, not over it.
    assert colorbar.get_window_extent().x0 > ax.get_window_extent().x1


def test_large_confusion_has_no_cell_text_and_thinned_ticks():
    n = 200
    counts = np.diag(np.arange(1, n + 1)).astype(np.int64)
    fig = confusion_figure(counts, [f"class {i}" for i in range(n)], "big")
    ax = fig.axes[0]
    assert n > CELL_TEXT_MAX_CLASSES
    assert count_patches(fig) == {}
    assert len(ax.texts) == 0
    render_rgb(fig)
    visible = [t for t in ax.get_xticks() if 0 <= t < n]
    assert 2 <= len(visible) <= 12


def test_zero_confusion_renders_with_unit_colour_scale():
    fig = confusion_figure(np.zeros((4, 4), dtype=np.int64), list("abcd"), "empty")
    image = fig.axes[0].images[0]
    assert (image.norm.vmin, image.norm.vmax) == (0, 1)
    assert set(count_patches(fig)) == {"cell-counts-black"}
    render_rgb(fig)


def test_untrusted_class_names_are_shortened_and_drawn_literally():
    names = ["x" * 50, "tab\there\x1b[31m", "cost $\\frac{$"]
    fig = confusion_figure(np.eye(3, dtype=np.int64), names, "$\\frac{$ title")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["x" * 19 + "…", "tab here\ufffd[31m", "cost $\\frac{$"]
    render_rgb(fig)  # mathtext would raise on "$\\frac{$"


def test_display_label_keeps_short_names():
    assert display_label("cat") == "cat"
    assert display_label("a" * 20) == "a" * 20
    assert display_label("a" * 21) == "a" * 19 + "…"


@pytest.mark.parametrize("counts, names", [(np.zeros((2, 3), dtype=np.int64), ["a", "b"]),
                                           (np.zeros((2, 2), dtype=np.int64), ["a"]),
                                           (-np.eye(2, dtype=np.int64), ["a", "b"]),
                                           (np.zeros((0, 0), dtype=np.int64), [])])
def test_confusion_figure_rejects_bad_input(counts, names):
    with pytest.raises(ValueError):
        confusion_figure(counts, names, "t")


@pytest.mark.slow
def test_thousand_class_confusion_saves_the_diagonal_visibly(tmp_path):
    # Timing is a benchmark's business, not a test's.
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.05, (1000, 1000)).astype(np.int64) + np.diag(np.full(1000, 40))
    figure = confusion_figure(counts, [f"c{i}" for i in range(1000)], "1000")
    save_figure(figure, tmp_path / "cm.png")
    ax = figure.axes[0]
    rgb = np.asarray(Image.open(tmp_path / "cm.png").convert("RGB")).astype(int)
    height = rgb.shape[0]
    # A pixel on the diagonal is darker than one far from it (antialiased down-sampling keeps it).
    (x_on, y_on), (x_off, y_off) = ax.transData.transform([(500, 500), (100, 900)])
    on = rgb[height - int(round(y_on)), int(round(x_on))]
    off = rgb[height - int(round(y_off)), int(round(x_off))]
    assert on.sum() < off.sum() - 30, (on, off)


# ---------------------------------------------------------------------------- history


def line_data(fig: Figure) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in fig.axes[0].get_lines()}


def same_with_nan(actual: list[float], expected: list[float]) -> bool:
    return len(actual) == len(expected) and all(
        (math.isnan(a) and math.isnan(e)) or a == e for a, e in zip(actual, expected))


def test_history_gaps_for_missing_and_non_finite_values():
    history = {
        3: {"train/loss": 0.5, "val/loss": float("inf"), "val/acc_top1": 0.8},
        0: {"train/loss": 1.0, "val/loss": 2.0},
        1: {"train/loss": float("nan"), "val/acc_top1": 0.5, "other": 7.0},
    }
    loss_fig, accuracy_fig = history_figures(history)
    loss = line_data(loss_fig)
    assert set(loss) == {"train", "val"}
    assert loss["train"][0] == [0, 1, 3]
    assert same_with_nan(loss["train"][1], [1.0, math.nan, 0.5])
    assert same_with_nan(loss["val"][1], [2.0, math.nan, math.nan])
    accuracy = line_data(accuracy_fig)
    assert set(accuracy) == {"val top-1"}
    assert same_with_nan(accuracy["val top-1"][1], [math.nan, 0.5, 0.8])
    assert [t.get_text() for t in loss_fig.axes[0].get_legend().get_texts()] == ["train", "val"]
    assert loss_fig.axes[0].get_xlabel() == "Epoch"
    render_rgb(loss_fig)
    render_rgb(accuracy_fig)


def test_history_falls_back_to_epoch_suffixed_train_metrics():
    history = {0: {"train/loss_epoch": 1.5, "train/acc_top1_epoch": 0.25, "val/acc_top5": 0.9},
               1: {"train/loss_epoch": 1.0, "train/acc_top1_epoch": 0.5, "val/acc_top5": 0.95}}
    loss_fig, accuracy_fig = history_figures(history)
    assert line_data(loss_fig) == {"train": ([0, 1], [1.5, 1.0])}
    assert line_data(accuracy_fig) == {"val top-5": ([0, 1], [0.9, 0.95]),
                                       "train top-1": ([0, 1], [0.25, 0.5])}


def test_history_epoch_ticks_are_integers():
    loss_fig, _ = history_figures({e: {"val/loss": 1.0 / (e + 1)} for e in range(3)})
    render_rgb(loss_fig)
    ticks = loss_fig.axes[0].get_xticks()
    assert len(ticks) > 0 and all(float(t).is_integer() for t in ticks)


def test_empty_history_gives_valid_figures_with_a_note():
    for fig in history_figures({}):
        ax = fig.axes[0]
        assert len(ax.get_lines()) == 0
        assert [t.get_text() for t in ax.texts] == [NO_DATA_NOTE]
        assert ax.get_legend() is None
        render_rgb(fig)


# ---------------------------------------------------------------------------- sample grid


def grey_images(n: int, size: int = 16) -> np.ndarray:
    return np.full((n, size, size, 3), 128, dtype=np.uint8)


def grid_titles(fig: Figure) -> list[Text]:
    return sorted((t for t in fig.texts if (t.get_gid() or "").startswith("sample-title-")),
                  key=lambda t: int(t.get_gid().rsplit("-", 1)[1]))


def rgb_of(color: str) -> np.ndarray:
    return np.round(np.array(to_rgb(color)) * 255)


def test_sample_grid_titles_and_border_colours():
    fig = sample_grid_figure(grey_images(2), [0, 1], [0, 0], ["cat", "dog"])
    right, wrong = grid_titles(fig)
    assert right.get_text() == "True: cat / Pred: cat"
    assert wrong.get_text() == "True: dog / Pred: cat"
    assert right.get_color() == CORRECT_COLOR
    assert wrong.get_color() == WRONG_COLOR

    rgb = render_rgb(fig)
    cells, size = sample_grid_cells(2, (16, 16))
    assert rgb.shape[:2] == size[::-1]
    for cell, color in zip(cells, (CORRECT_COLOR, WRONG_COLOR)):
        # The frame is centred on the thumbnail's edge: the edge pixels themselves are frame.
        middle_row, middle_col = cell.top + cell.height // 2, cell.left + cell.width // 2
        for y, x in ((middle_row, cell.left), (cell.top, middle_col),
                     (middle_row, cell.left + cell.width - 1), (cell.top + cell.height - 1, middle_col)):
            assert list(rgb[y, x]) == list(rgb_of(color)), (y, x)
        assert list(rgb[middle_row, middle_col]) == [128, 128, 128]
        # Each title sits above its own thumbnail, centred on it.
        title = right if color == CORRECT_COLOR else wrong
        box = title.get_window_extent()
        assert abs((box.x0 + box.x1) / 2 - (cell.left + cell.width / 2)) < 1
        assert rgb.shape[0] - box.y0 < cell.top


def test_sample_grid_thumbnails_are_scaled_by_nearest_neighbour_keeping_aspect():
    image = np.zeros((1, 2, 4, 3), dtype=np.uint8)
    image[0, 0, :2] = (255, 0, 0)   # top-left quarter red
    image[0, 1, 2:] = (0, 0, 255)   # bottom-right quarter blue
    rgb = render_rgb(sample_grid_figure(image, [0], [0], ["a"]))
    (cell,), _ = sample_grid_cells(1, (2, 4))
    assert cell.width == 2 * cell.height  # a 2:1 thumbnail stays 2:1
    inset = 8  # clear of the frame
    assert list(rgb[cell.top + inset, cell.left + inset]) == [255, 0, 0]
    assert list(rgb[cell.top + cell.height - inset, cell.left + cell.width - inset]) == [0, 0, 255]
    assert list(rgb[cell.top + inset, cell.left + cell.width - inset]) == [0, 0, 0]
    # Outside the frame the slot is background.
    assert list(rgb[cell.top - 10, cell.left + cell.width // 2]) == [255, 255, 255]


def test_sample_grid_has_at_most_four_columns():
    cells, (width, height) = sample_grid_cells(5, (16, 16))
    assert len({c.left for c in cells}) == 4 and len({c.top for c in cells}) == 2
    assert [c.top for c in cells] == sorted(c.top for c in cells)
    three, (width3, _) = sample_grid_cells(3, (16, 16))
    assert len({c.left for c in three}) == 3 and len({c.top for c in three}) == 1
    assert width3 < width
    fig = sample_grid_figure(grey_images(5), [0] * 5, [0] * 5, ["a"])
    assert len(grid_titles(fig)) == 5
    assert tuple(round(v * PNG_DPI) for v in fig.get_size_inches()) == (width, height)


def test_sample_grid_names_out_of_range_indices_and_long_names():
    fig = sample_grid_figure(grey_images(1), [0], [12], ["a very long class name indeed"])
    assert grid_titles(fig)[0].get_text() == "True: a very long class… / Pred: #12"


def test_sample_grid_title_too_wide_for_one_line_breaks_after_true_name():
    fig = sample_grid_figure(grey_images(2), [0, 1], [1, 1], ["W" * 30, "ok"])
    first, second = grid_titles(fig)
    assert first.get_text() == "True: " + "W" * 17 + "…\nPred: ok"
    assert second.get_text() == "True: ok / Pred: ok"


def test_sample_grid_accepts_float_and_empty_thumbnails():
    floats = np.full((1, 4, 4, 3), 0.5)
    rgb = render_rgb(sample_grid_figure(floats, [0], [0], ["a"]))
    (cell,), _ = sample_grid_cells(1, (4, 4))
    assert list(rgb[cell.top + cell.height // 2, cell.left + cell.width // 2]) == [128, 128, 128]
    # A 0-pixel thumbnail is legal on the wire: the frame is drawn around its empty slot.
    rgb = render_rgb(sample_grid_figure(np.zeros((1, 0, 0, 3), np.uint8), [0], [1], ["a", "b"]))
    (cell,), _ = sample_grid_cells(1, (0, 0))
    assert list(rgb[cell.top + cell.height // 2, cell.left]) == list(rgb_of(WRONG_COLOR))


def test_empty_sample_grid_is_valid():
    fig = sample_grid_figure(np.zeros((0, 8, 8, 3), dtype=np.uint8), [], [], ["a"])
    assert [t.get_text() for t in fig.axes[0].texts] == ["no samples yet"]
    render_rgb(fig)


def test_sample_grid_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="N×H×W×3"):
        sample_grid_figure(np.zeros((2, 8, 8), dtype=np.uint8), [0, 0], [0, 0], ["a"])
    with pytest.raises(ValueError, match="2 labels"):
        sample_grid_figure(grey_images(2), [0], [0, 0], ["a"])


# ---------------------------------------------------------------------------- tables


def table_line(text: str, first_cell: str) -> list[str]:
    """The cells of the table line whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.replace("┃", "│").strip("│ ").split("│")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no line starting with {first_cell!r} in\n{text}")


def test_class_distribution_rows_exact():
    assert class_distribution_rows(["a", "b", "c"], [3, 1, 0]) == [
        ClassDistributionRow("a", 0, 3, 75.0), ClassDistributionRow("b", 1, 1, 25.0),
        ClassDistributionRow("c", 2, 0, 0.0)]
    assert [r.percentage for r in class_distribution_rows(["a", "b"], [0, 0])] == [0.0, 0.0]
    with pytest.raises(ValueError, match="one entry per class"):
        class_distribution_rows(["a"], [1, 2])


def test_class_distribution_table_text():
    table = class_distribution_table(class_distribution_rows(["a", "b", "c"], [3000, 1000, 0]))
    text = table_text(table)
    assert "Dataset Class Distribution" in text
    assert table_line(text, "Class Name") == ["Class Name", "Index", "Count", "Percentage"]
    assert table_line(text, "a") == ["a", "0", "3,000", "75.0%"]
    assert table_line(text, "c") == ["c", "2", "0", "0.0%"]
    assert table_line(text, "Total") == ["Total", "", "4,000", "100.0%"]


def test_untrusted_names_print_literally_and_safely(monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "20")
    names = ["[red]x[/red]", "[/]", ":smile:", "evil\x1b[2Jname\nnext", "y" * 5000]
    text = table_text(class_distribution_table(class_distribution_rows(names, [1] * 5)))
    assert table_line(text, "[red]x[/red]")[1] == "0"
    assert table_line(text, "[/]")[1] == "1"
    assert table_line(text, ":smile:")[1] == "2"
    assert table_line(text, "evil\ufffd[2Jname next")[1] == "3"
    assert table_line(text, "y" * 39 + "…")[1] == "4"
    assert "\x1b" not in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_names_stay_literal_on_a_console_that_parses_markup():
    # The monitor's live terminal console keeps markup and emoji on; names must still be inert.
    console = Console(file=io.StringIO(), width=100, color_system=None, record=True)
    rows = class_distribution_rows(["[bold red]x[/]", ":smile:"], [1, 1])
    for table in (class_distribution_table(rows),
                  sampler_table(sampler_rows(["[b]s[/b]"], [1], [1.0]), 0),
                  epoch_summary_table("[i]run[/i]", 0, {"[u]m[/u]": 1.0}, None, ranks=1),
                  model_info_table({"class": "[blink]Net", "total_params": 1,
                                    "trainable_params": 1, "size_mb": 0.0})):
        console.print(table)
    text = console.export_text()
    literals = ("[bold red]x[/]", ":smile:", "[b]s[/b]", "[i]run[/i]", "[u]m[/u]", "[blink]Net")
    for literal in literals:
        assert literal in text


def test_table_text_is_plain_and_has_no_trailing_blanks():
    text = table_text(model_info_table({"class": "Net", "total_params": 1, "trainable_params": 1,
                                        "size_mb": 0.0}), width=60)
    assert text.endswith("\n")
    assert all(line == line.rstrip() for line in text.splitlines())
    assert "\x1b[" not in text


def test_model_info_table_rows():
    text = table_text(model_info_table({"class": "ResNet18", "total_params": 11_689_512,
                                        "trainable_params": 11_000_000, "size_mb": 44.5912}))
    assert "Model Information" in text
    assert table_line(text, "Model class") == ["Model class", "ResNet18"]
    assert table_line(text, "Total parameters") == ["Total parameters", "11,689,512"]
    assert table_line(text, "Trainable parameters") == ["Trainable parameters", "11,000,000"]
    assert table_line(text, "Non-trainable parameters") == ["Non-trainable parameters", "689,512"]
    assert table_line(text, "Size (MB = 10⁶ bytes)") == ["Size (MB = 10⁶ bytes)", "44.6"]
    with pytest.raises(ValueError, match="missing size_mb"):
        model_info_table({"class": "Net", "total_params": 1, "trainable_params": 1})


@pytest.mark.parametrize("size_mb, shown", [(0.002332, "0.00233"), (0.00078, "0.000780"), (1.5, "1.50"),
                                            (44.5912, "44.6"), (446.2, "446"), (12_345.6, "12,346"), (0.0, "0")])
def test_the_model_size_has_three_significant_digits(size_mb, shown):
    """A small model once read 0.00 MB where Lightning's own summary gives its size."""
    text = table_text(model_info_table({"class": "Net", "total_params": 1, "trainable_params": 1,
                                        "size_mb": size_mb}))
    assert table_line(text, "Size (MB = 10⁶ bytes)") == ["Size (MB = 10⁶ bytes)", shown]


def test_sampler_rows_and_table():
    rows = sampler_rows(["a", "b", "c"], [10, 5, 0], [8.0, 7.5, 0.0])
    assert rows == [SamplerRow("a", 0, 10, 8.0, 1.25), SamplerRow("b", 1, 5, 7.5, 5 / 7.5),
                    SamplerRow("c", 2, 0, 0.0, None)]
    text = table_text(sampler_table(rows, epoch=3))
    assert "Sampler Distribution — epoch 3" in text
    assert table_line(text, "Class Name") == [
        "Class Name", "Sampled Count", "Expected Count", "Ratio"]
    assert table_line(text, "b") == ["b", "5", "7.5", "0.67"]
    assert table_line(text, "c") == ["c", "0", "0.0", "—"]
    assert table_line(text, "Total") == ["Total", "15", "15.5", "0.97"]


def test_furthest_from_expected_keeps_the_strays_in_class_order():
    names = [f"c{i}" for i in range(8)]
    sampled = [10, 10, 2, 10, 19, 10, 3, 10]
    expected = [10.0, 10.0, 10.0, 10.0, 10.0, 0.0, 3.0, 9.0]
    rows = sampler_rows(names, sampled, expected)
    # c5: drawn although nothing was expected (furthest); c2 |0.2-1|; c4 |1.9-1|; c7 |1.11-1|.
    assert [r.name for r in furthest_from_expected(rows, 3)] == ["c2", "c4", "c5"]
    assert [r.name for r in furthest_from_expected(rows, 4)] == ["c2", "c4", "c5", "c7"]
    assert furthest_from_expected(rows, 100) == rows


def test_smallest_and_largest_takes_both_ends_in_class_order():
    rows = class_distribution_rows([f"c{i}" for i in range(7)], [50, 1, 30, 2, 90, 40, 3])
    assert [r.name for r in smallest_and_largest(rows, 4)] == ["c0", "c1", "c3", "c4"]
    assert [r.name for r in smallest_and_largest(rows, 3)] == ["c0", "c1", "c4"]
    assert smallest_and_largest(rows, 7) == rows


def test_shortened_tables_total_every_class_and_say_where_the_rest_is():
    rows = sampler_rows([f"class{i:03d}" for i in range(100)], [10] * 99 + [40], [10.0] * 100)
    text = table_text(sampler_table(rows, 0, furthest_from_expected(rows, 5)), width=200)
    assert table_line(text, "class099") == ["class099", "40", "10.0", "4.00"]
    assert sum(line.startswith("│ class") for line in text.splitlines()) == 5
    assert table_line(text, "Total") == ["Total", "1,030", "1,000.0", "1.03"]
    assert ("5 of 100 classes shown (furthest from their expected count); every class is in the run's console.txt"
            in " ".join(text.split()))
    counts = class_distribution_rows([f"k{i}" for i in range(50)], list(range(1, 51)))
    text = table_text(class_distribution_table(counts, smallest_and_largest(counts, 4)), width=200)
    assert [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│ k")] == ["k0", "k1", "k48", "k49"]
    assert table_line(text, "Total") == ["Total", "", "1,275", "100.0%"]
    assert "4 of 50 classes shown (smallest and largest)" in " ".join(text.split())
    assert "classes shown" not in table_text(sampler_table(rows, 0))


def test_many_classes_print_a_short_table_on_the_terminal_and_every_row_in_console_txt(tmp_path):
    from monitor.replay import replay
    from trainer_side import Emitter

    classes = 3 * TERMINAL_MAX_CLASS_ROWS
    names = [f"class{i:03d}" for i in range(classes)]
    emitter = Emitter(None, run="wide", spool=tmp_path / "spool")
    emitter.run_start(names, train_targets=np.repeat(np.arange(classes), np.arange(classes) % 7 + 1).astype(np.uint8),
                      sampler={"type": "TrackingWeightedRandomSampler", "num_samples": classes,
                               "weights_per_class": np.ones(classes)})
    emitter.sampled(0, np.arange(classes, dtype=np.uint32))
    emitter.epoch_end(0)
    emitter.run_end("completed")
    emitter.close()
    screen = io.StringIO()
    replay(sorted((tmp_path / "spool").rglob("*.mlog")), tmp_path / "out", skip_corrupt=False,
           console=Console(file=screen, width=120), show_tables=True)
    record = (tmp_path / "out" / "wide" / "console.txt").read_text()
    for title in ("Dataset Class Distribution", "Sampler Distribution — epoch 0"):
        shown = screen.getvalue().split(title)[1].split("Total")[0]
        assert sum(name in shown for name in names) == TERMINAL_MAX_CLASS_ROWS, title
        assert sum(name in record.split(title)[1].split("Total")[0] for name in names) == classes, title
    assert f"{TERMINAL_MAX_CLASS_ROWS} of {classes} classes shown" in " ".join(screen.getvalue().split())
    assert "classes shown" not in record


def test_epoch_summary_table():
    metrics = {"val/loss": 0.123456, "train/loss": float("nan"), "lr": 1e-5, "val/acc_top1": 0.95}
    text = table_text(epoch_summary_table("run-[b]1", 3, metrics, 0.951234, ranks=2))
    assert table_line(text, "Run") == ["Run", "run-[b]1"]
    assert table_line(text, "Epoch") == ["Epoch", "3"]
    assert table_line(text, "Ranks") == ["Ranks", "2"]
    assert table_line(text, "train/loss") == ["train/loss", "nan"]
    assert table_line(text, "val/loss") == ["val/loss", "0.1235"]
    assert table_line(text, "lr") == ["lr", "1e-05"]
    assert table_line(text, "Accuracy (confusion matrix)")[1] == "0.9512"
    order = [line.split("│")[1].strip() for line in text.splitlines()
             if "/" in line or "lr" in line]
    assert order == ["lr", "train/loss", "val/acc_top1", "val/loss"]
    without = table_text(epoch_summary_table("r", 0, {}, None, ranks=1))
    assert "Accuracy" not in without
