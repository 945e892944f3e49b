"""A render worker keeps its figures between epochs and redraws them: the files must come out exactly
as freshly built figures make them, and a failed draw must not leave a broken figure behind."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.aggregates.confusion import SparseCounts
from monitor.outputs.render import reuse
from monitor.outputs.render.confusion_figures import ConfusionPlot, MatrixView
from monitor.outputs.render.history_figures import HistoryPlot
from monitor.outputs.render.sample_grid import SampleGridPlot
from monitor.outputs.render.confusion_figures import counts_matrix_view as view
from monitor.outputs.render.matrix_views import normalized_view, top_view
from monitor.outputs.render.save import save_figure


@pytest.fixture(autouse=True)
def nothing_kept():
    reuse.forget_all()
    yield
    reuse.forget_all()


def confusion_epochs() -> list[tuple]:
    rng = np.random.default_rng(3)
    names = ["cat", "dog", "a much longer class name", "$x$"]
    matrices = [rng.integers(0, 4, (4, 4)) + np.diag(rng.integers(20, 90, 4)) for _ in range(4)]
    epochs = [(view(m, names, f"epoch {k}"),) for k, m in enumerate(matrices)]
    epochs.insert(2, (view(np.zeros((4, 4), dtype=np.int64), names, "nothing counted"),))  # other layout: 1 digit
    epochs.append((view(np.eye(4, dtype=np.int64) * 97, names, "only the diagonal"),))  # same layout as the first
    many = [f"class {i}" for i in range(60)]  # above CELL_TEXT_MAX_CLASSES: no names, no counts
    epochs += [(view(rng.integers(0, 50, (60, 60)), many, f"big {k}"),) for k in range(2)]
    # Percent views: a row without samples, small shares ("<0.1"), and the most confused classes.
    sparse = [SparseCounts.of_matrix(m) for m in matrices]
    epochs += [(normalized_view(c, names, f"percent {k}"),) for k, c in enumerate(sparse)]
    epochs.append((normalized_view(SparseCounts.of_matrix(np.array([[3000, 1, 0, 0], [0, 0, 0, 0], [5, 5, 90, 0],
                                                                    [0, 0, 0, 1]])), names, "tiny shares"),))
    big = [SparseCounts.of_matrix(rng.poisson(0.3, (60, 60)) + np.diag(rng.integers(5, 20, 60))) for _ in range(2)]
    epochs += [(top_view(c, many, f"top {k}", limit=8),) for k, c in enumerate(big)]
    epochs.append((top_view(big[0], many, "top again", limit=8),))  # the same classes: the same layout
    # Block views: 2,500 classes drawn as 1,000 blocks of 3 (the last one short).
    labels = rng.integers(0, 2500, 20_000)
    blocks = [SparseCounts.of(np.where(rng.random(20_000) < 0.5, labels, rng.integers(0, 2500, 20_000)), labels, 2500)
              for _ in range(2)]
    numbered = [str(i) for i in range(2500)]
    epochs += [(normalized_view(c, numbered, f"blocks {k}"),) for k, c in enumerate(blocks)]
    return epochs


def history_epochs(kind: str) -> list[tuple]:
    history: dict[int, dict[str, float]] = {}
    epochs = []
    for epoch in range(5):
        history[epoch] = {"train/loss": 2.0 / (epoch + 1), "val/loss": 1.5 + 0.4 * (epoch == 3),
                          "val/acc_top1": 0.2 * epoch, "val/acc_top5": float("nan") if epoch == 2 else 0.9}
        if epoch >= 3:
            history[epoch]["train/acc_top1"] = 0.5  # a series that appears later: another layout
        if epoch >= 1:
            history[epoch].update({"val/ece": 0.3 / epoch, "val/mce": float("nan") if epoch == 2 else 0.5})
        epochs.append(({e: dict(m) for e, m in history.items()}, kind))
    return epochs


def grid_epochs() -> list[tuple]:
    rng = np.random.default_rng(5)
    names = [f"digit {i}" for i in range(10)]
    epochs = []
    for _ in range(3):
        labels = [int(x) for x in rng.integers(0, 10, 6)]
        preds = [label if i % 2 else (label + 3) % 10 for i, label in enumerate(labels)]
        epochs.append((rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8), labels, preds, names))
    epochs.append((rng.random((6, 12, 10, 3)), [0] * 6, [1] * 6, names))  # another thumbnail size
    # A run's usual grid: the same samples every epoch, a few predictions changing; long names that
    # wrap the titles onto two lines; then one thumbnail changed alone, and a name alone.
    long_names = [f"a long class name {i}" for i in range(10)]
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, 16)]
    for epoch in range(3):
        preds = [label if (i + epoch) % 4 else (label + epoch + 1) % 10 for i, label in enumerate(labels)]
        epochs.append((images, labels, preds, long_names if epoch < 2 else names))
    changed = images.copy()
    changed[5] = 255 - changed[5]
    epochs.append((changed, labels, preds, names))
    epochs.append((changed, labels, preds, [*names[:-1], "the last name, longer now"]))
    flipped = list(preds)
    flipped[5] = (labels[5] + 1) % 10 if preds[5] == labels[5] else labels[5]  # one frame turns colour
    epochs.append((changed, labels, flipped, names))
    # The hardest mistakes: the same layout with confidences in the titles, and back.
    wrong = [(label + 1) % 10 for label in labels]
    for scale in (1.0, 0.5):
        epochs.append((changed, labels, wrong, long_names, [scale * (1 - i / 20) for i in range(16)]))
    epochs.append((changed, labels, wrong, names))
    return epochs


def sparse_history_epochs(kind: str) -> list[tuple]:
    """Histories whose curves have few or no finite points: a run that logs no accuracy metric
    ("no data yet"), a series that is NaN at first or throughout, a single epoch."""
    nan = float("nan")
    histories = [
        {0: {"train/loss": 2.0}},
        {0: {"train/loss": 2.0}, 1: {"train/loss": 1.0}, 2: {"train/loss": 0.5}},
        {0: {"val/loss": nan, "val/acc_top1": nan}},
        {0: {"val/loss": nan, "val/acc_top1": nan}, 1: {"val/loss": 3.0, "val/acc_top1": 0.4}},
        {0: {"val/loss": 0.7, "val/acc_top1": 0.6}, 1: {"val/loss": 0.9, "val/acc_top1": 0.9}},
        {4: {"val/loss": nan, "val/acc_top1": nan}, 5: {"val/loss": nan, "val/acc_top1": nan}},
        {7: {"val/loss": 1.0, "val/acc_top1": 0.5}},
    ]
    return [(history, kind) for history in histories]


CASES = {
    "confusion": (ConfusionPlot, confusion_epochs()),
    "loss": (HistoryPlot, history_epochs("loss") + sparse_history_epochs("loss")),
    "accuracy": (HistoryPlot, history_epochs("accuracy") + sparse_history_epochs("accuracy")),
    "calibration": (HistoryPlot, history_epochs("calibration")),
    "grid": (SampleGridPlot, grid_epochs()),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_redrawn_figures_save_the_bytes_of_new_ones(tmp_path, case):
    kind, epochs = CASES[case]
    kept = set()
    for number, args in enumerate(epochs):
        with reuse.plot_of(kind, *args) as plot:
            kept.add(id(plot))
            save_figure(plot.figure, tmp_path / "redrawn.png", plot.draw)
        save_figure(kind(*args).figure, tmp_path / "new.png")  # built new, drawn whole
        assert (tmp_path / "redrawn.png").read_bytes() == (tmp_path / "new.png").read_bytes(), f"epoch {number}"
    # The sequences change layout on purpose; most epochs must still have been redraws.
    layouts = {kind.layout_of(*args) for args in epochs}
    assert len(kept) == len(layouts) < len(epochs)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_figure_saves_the_same_bytes_whatever_it_drew_before(tmp_path, case):
    """Every state of a layout, drawn after every other state of that layout, against a new figure:
    what a kept figure drew before (limits, pixels kept, cells painted) must not show."""
    kind, epochs = CASES[case]
    pairs = 0
    for number, target in enumerate(epochs):
        save_figure(kind(*target).figure, tmp_path / "new.png")
        new = (tmp_path / "new.png").read_bytes()
        layout = kind.layout_of(*target)
        for before in [args for args in epochs if args is not target and kind.layout_of(*args) == layout][:3]:
            plot = kind(*before)
            save_figure(plot.figure, tmp_path / "before.png", plot.draw)
            plot.update(*target)
            save_figure(plot.figure, tmp_path / "after.png", plot.draw)
            assert (tmp_path / "after.png").read_bytes() == new, f"state {number} after {epochs.index(before)}"
            pairs += 1
    assert pairs >= len(epochs) // 2  # most states share a layout with another one


def test_a_plot_is_kept_per_layout_and_updated():
    names = ["a", "b"]
    with reuse.plot_of(ConfusionPlot, view(np.eye(2, dtype=np.int64) * 10, names, "first")) as first:
        pass
    with reuse.plot_of(ConfusionPlot, view(np.eye(2, dtype=np.int64) * 20, names, "second")) as second:
        assert second is first
        assert second.figure.axes[0].get_title() == "second"
        assert second.figure.axes[0].images[0].get_array().max() == 20
    with reuse.plot_of(ConfusionPlot, view(np.eye(2, dtype=np.int64) * 20, ["a", "c"], "renamed")) as renamed:
        assert renamed is not first


def test_a_plot_whose_draw_failed_is_not_kept():
    names = ["a", "b"]
    with pytest.raises(RuntimeError):
        with reuse.plot_of(ConfusionPlot, view(np.eye(2, dtype=np.int64), names, "t")) as failed:
            raise RuntimeError("disk full")
    with reuse.plot_of(ConfusionPlot, view(np.eye(2, dtype=np.int64), names, "t")) as plot:
        assert plot is not failed


@pytest.mark.slow
def test_only_the_most_recently_used_plots_are_kept():
    def plot_for(n: int):
        with reuse.plot_of(ConfusionPlot, view(np.eye(n, dtype=np.int64), [str(i) for i in range(n)], "t")) as plot:
            return plot

    first = plot_for(1)
    plots = [plot_for(n) for n in range(2, reuse.MAX_KEPT + 2)]  # MAX_KEPT more layouts
    assert plot_for(reuse.MAX_KEPT + 1) is plots[-1]
    assert plot_for(1) is not first  # the oldest was let go


@pytest.mark.parametrize("kind, good, bad", [
    (ConfusionPlot, (view(np.eye(3, dtype=np.int64), ["a", "b", "c"], "t"),),
     (view(np.eye(4, dtype=np.int64), list("abcd"), "t"),)),
    (HistoryPlot, ({0: {"val/loss": 1.0}}, "loss"), ({0: {"val/loss": 1.0, "train/loss": 2.0}}, "loss")),
    (SampleGridPlot, (np.zeros((2, 4, 4, 3)), [0, 1], [0, 1], ["a", "b"]),
     (np.zeros((3, 4, 4, 3)), [0, 1, 1], [0, 1, 1], ["a", "b"])),
])
def test_update_refuses_data_of_another_layout(kind, good, bad):
    plot = kind(*good)
    with pytest.raises(ValueError, match="another layout"):
        plot.update(*bad)


def test_bad_input_is_refused_before_anything_is_kept():
    with pytest.raises(ValueError, match="C×C"):
        MatrixView(np.ones((2, 3)), ("a", "b"), "t")
    with pytest.raises(ValueError, match="N×H×W×3"):
        with reuse.plot_of(SampleGridPlot, np.zeros((2, 4, 4)), [0, 1], [0, 1], ["a", "b"]):
            pass


def test_plots_beyond_the_memory_budget_are_let_go(monkeypatch):
    def plot_for(n: int):
        with reuse.plot_of(ConfusionPlot, view(np.eye(n, dtype=np.int64), [str(i) for i in range(n)], "t")) as plot:
            return plot

    small, large = plot_for(2), plot_for(60)
    assert plot_for(2) is small and plot_for(60) is large
    # Room for the large plot and one small one (a 3-class plot holds a few bytes more than a 2-class one).
    monkeypatch.setattr(reuse, "MAX_KEPT_BYTES", large.nbytes + small.nbytes + 1000)
    newest = plot_for(3)  # over the budget with both others: the least recently used goes
    assert plot_for(60) is large and plot_for(3) is newest
    assert plot_for(2) is not small
    monkeypatch.setattr(reuse, "MAX_KEPT_BYTES", large.nbytes - 1)
    assert plot_for(60) is not plot_for(60)  # a plot larger than the whole budget is never kept...
    assert plot_for(3) is newest  # ...and does not push out the ones that fit


def test_a_plot_says_what_it_holds():
    n = 60
    plot = ConfusionPlot(view(np.zeros((n, n), dtype=np.int64), [str(i) for i in range(n)], "t"))
    width, height = plot.figure.get_size_inches() * 100
    assert plot.nbytes >= n * n * 8 + 4 * int(width) * int(height)


def test_a_grid_title_too_big_for_its_cell_makes_the_grid_draw_whole(tmp_path):
    images, labels, preds, names = grid_epochs()[0]
    plot = SampleGridPlot(images, labels, preds, names)
    save_figure(plot.figure, tmp_path / "first.png", plot.draw)
    preds = [(pred + 1) % 10 for pred in preds]
    plot.update(images, labels, preds, names)
    fresh = SampleGridPlot(images, labels, preds, names)
    for grid in (plot, fresh):  # a title that reaches over its neighbours' cells
        grid.figure.texts[1].set_fontsize(40)
    save_figure(plot.figure, tmp_path / "redrawn.png", plot.draw)
    save_figure(fresh.figure, tmp_path / "new.png")
    assert (tmp_path / "redrawn.png").read_bytes() == (tmp_path / "new.png").read_bytes()
