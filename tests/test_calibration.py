"""Calibration and hardest mistakes: the trainer's on-device parts against brute force, the
monitor's bins, ECE and MCE against reference formulas, the wire rules, and the merge over ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor.aggregates.calibration import EDGES, NUM_BINS, CalibrationBins, merge_mistakes
from monitor.aggregates.runstate import RejectedMessage, RunState
from trainer_side import protocol
from trainer_side.collect import ValidationCollector, make_thumbnails, top1
from trainer_side.mistakes import HardestMistakes
from trainer_side.protocol import InvalidArrayError, InvalidFieldError, decode, encode, make_message

NORMALIZATION = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


# ---------------------------------------------------------------------------- references


def reference_bins(confidence: np.ndarray, right: np.ndarray) -> list[tuple[int, float, float]]:
    """(count, accuracy, mean confidence) per bin, by explicit comparisons with the edges:
    bin b is [b/15, (b+1)/15), the last one [14/15, 1]."""
    rows = []
    for b in range(NUM_BINS):
        lo, hi = b / NUM_BINS, (b + 1) / NUM_BINS
        inside = (confidence >= lo) & ((confidence < hi) | ((b == NUM_BINS - 1) & (confidence <= 1.0)))
        n = int(inside.sum())
        rows.append((n, right[inside].mean() if n else np.nan, confidence[inside].mean() if n else np.nan))
    return rows


def reference_ece_mce(confidence: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    rows = reference_bins(confidence.astype(np.float64), right)
    total = sum(n for n, _, _ in rows)
    ece = sum(n / total * abs(acc - conf) for n, acc, conf in rows if n)
    mce = max(abs(acc - conf) for n, acc, conf in rows if n)
    return ece, mce


# ---------------------------------------------------------------------------- confidence on the device


def test_top1_confidence_is_the_softmax_maximum_even_for_extreme_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 7, generator=generator) * 6
    logits[:5] *= 1e4  # exp would overflow in a naive softmax
    logits[5] = 0.0  # a tie everywhere: argmax 0, confidence 1/7
    preds, confidence = top1(logits)
    assert confidence.dtype == torch.float16 and torch.isfinite(confidence).all()
    expected = torch.softmax(logits.double(), dim=1).max(dim=1)
    assert preds.tolist() == logits.argmax(dim=1).tolist()
    np.testing.assert_array_equal(confidence.numpy(), expected.values.numpy().astype(np.float16))
    assert preds[5] == 0 and confidence[5] == np.float16(1 / 7)


def test_half_precision_logits_give_the_same_confidence_as_their_float32_copy():
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    assert torch.equal(top1(logits)[1], top1(logits.float())[1])


# ---------------------------------------------------------------------------- hardest mistakes on the device


def _epoch(collector: ValidationCollector, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    collector.reset()
    for logits, labels, images in batches:
        collector.add(logits, labels, images)


def _batches(seed: int, sizes: list[int], classes: int = 5, quantize: bool = False):
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for size in sizes:
        logits = torch.randn(size, classes, generator=generator) * 2
        if quantize:  # few distinct logit rows: many equal confidences, to test the order of ties
            logits = (logits > 1).float() * 3
        labels = torch.randint(0, classes, (size,), generator=generator)
        images = torch.randn(size, 3, 10, 14, generator=generator)
        batches.append((logits, labels, images))
    return batches


def brute_force_mistakes(batches, top_k: int, thumbnail_size: int):
    """Every wrong prediction of the epoch, sorted by float16 confidence (descending) then position."""
    logits = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    images = torch.cat([b[2] for b in batches])
    confidence = torch.softmax(logits.double(), dim=1).max(dim=1).values.numpy().astype(np.float16)
    preds = logits.argmax(dim=1).numpy()
    wrong = np.flatnonzero(preds != labels.numpy())
    order = sorted(wrong, key=lambda i: (-float(confidence[i]), i))[:top_k]
    mean, std = (torch.tensor(NORMALIZATION[k]) for k in ("mean", "std"))
    thumbs = make_thumbnails(images[order], mean, std, thumbnail_size).numpy()
    return thumbs, labels.numpy()[order], preds[order], confidence[order]


@pytest.mark.parametrize("read_back", [False, True], ids=["accelerator path", "cpu path"])
@pytest.mark.parametrize("top_k, sizes, quantize", [
    (16, [32, 32, 32, 7], False),
    (4, [3, 50, 1, 20], False),
    (10, [8, 8, 8, 8, 8], True),  # ties decided by position
    (50, [5, 6], False),  # fewer mistakes than top_k
])
def test_kept_mistakes_equal_a_brute_force_over_the_whole_epoch(top_k, sizes, quantize, read_back):
    batches = _batches(sum(sizes) + top_k, sizes, quantize=quantize)
    collector = ValidationCollector(5, num_thumbnails=0, thumbnail_size=8, chunk_size=10**6,
                                    normalization=NORMALIZATION, num_mistakes=top_k)
    collector.mistakes = HardestMistakes(top_k, collector._thumbnails_of, read_back=read_back)
    made = []
    collector.mistakes._thumbnails = lambda images: made.append(len(images)) or collector._thumbnails_of(images)
    for _ in range(2):  # a second epoch starts afresh
        _epoch(collector, batches)
        kept = collector.take_mistakes()
        images, labels, preds, confidence = brute_force_mistakes(batches, top_k, 8)
        assert len(labels) == min(top_k, len(labels)) and (labels != preds).all()
        np.testing.assert_array_equal(kept.labels, labels)
        np.testing.assert_array_equal(kept.preds, preds)
        np.testing.assert_array_equal(kept.confidence, confidence)
        np.testing.assert_array_equal(kept.images, images)
        assert kept.confidence.dtype == np.float16 and kept.images.shape[1:] == (6, 8, 3)
    if quantize:
        assert len(set(confidence.tolist())) < len(confidence)  # ties were really there
    # Without reading back, each batch's top_k best candidates get thumbnails (two epochs); reading
    # back, only wrong predictions that enter the kept ones.
    best = 2 * sum(min(top_k, n) for n in sizes)
    if not read_back:
        assert sum(made) == best
    else:
        assert sum(made) <= 2 * sum(int((b[0].argmax(1) != b[1]).sum()) for b in batches)
        assert sum(made) < best or top_k >= sum(sizes)


def test_no_images_or_no_image_tensors_keep_no_mistakes_and_raise_nothing():
    collector = ValidationCollector(5, num_thumbnails=4, thumbnail_size=8, chunk_size=10**6,
                                    normalization=NORMALIZATION, num_mistakes=4)
    for logits, labels, _ in _batches(3, [8, 8]):
        collector.add(logits, labels, None)
    assert collector.take_mistakes() is None
    collector.reset()
    for logits, labels, _ in _batches(3, [8, 8]):
        collector.add(logits, labels, torch.randn(8, 20))  # token features, not images
    assert collector.take_mistakes() is None and collector.take_thumbnails() is None
    collector.reset()
    for logits, labels, images in _batches(3, [8, 8]):
        collector.add(logits, labels, images[:5])  # not one input per label
    assert collector.take_mistakes() is None
    preds, labels, confidence = collector.take_chunk()
    assert len(preds) == len(confidence) == 16 and confidence.dtype == np.float16


def test_zero_mistakes_turns_them_off():
    collector = ValidationCollector(5, num_thumbnails=0, thumbnail_size=8, chunk_size=10**6,
                                    normalization=NORMALIZATION, num_mistakes=0)
    _epoch(collector, _batches(4, [16]))
    assert not collector.wants_images and collector.take_mistakes() is None


def test_chunks_carry_confidences_aligned_with_their_predictions():
    batches = _batches(5, [10, 10, 10])
    collector = ValidationCollector(5, num_thumbnails=0, thumbnail_size=8, chunk_size=20,
                                    normalization=NORMALIZATION)
    chunks = []
    for logits, labels, _ in batches:
        collector.add(logits, labels)
        if collector.chunk_ready:
            chunks.append(collector.take_chunk())
    chunks.append(collector.take_chunk())
    logits = torch.cat([b[0] for b in batches])
    assert [len(c[0]) for c in chunks] == [20, 10]
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]),
                                  torch.softmax(logits.double(), 1).max(1).values.numpy().astype(np.float16))


# ---------------------------------------------------------------------------- bins, ECE, MCE


@pytest.mark.parametrize("seed", range(5))
def test_ece_and_mce_equal_the_reference_formula(seed):
    rng = np.random.default_rng(seed)
    confidence = rng.beta(5, 2, 2000).astype(np.float16)
    preds = rng.integers(0, 4, 2000)
    labels = np.where(rng.random(2000) < confidence, preds, (preds + 1) % 4)
    bins = CalibrationBins.of(confidence, preds, labels)
    ece, mce = reference_ece_mce(confidence, preds == labels)
    assert bins.ece() == pytest.approx(ece, abs=1e-12)
    assert bins.mce() == pytest.approx(mce, abs=1e-12)
    assert bins.total == 2000


def test_bins_put_edges_in_the_upper_bin_and_one_in_the_last():
    confidence = np.concatenate([EDGES, [0.0, 1.0, 1.0], np.nextafter(EDGES[1:], 0)])
    right = np.arange(len(confidence)) % 3 == 0
    bins = CalibrationBins.of(confidence, right.astype(int), np.ones(len(confidence), int))
    reference = reference_bins(confidence, right)
    assert bins.counts.tolist() == [n for n, _, _ in reference]
    # Each edge opens its bin, 1.0 closes the last one, and a value just below an edge stays below it:
    # bin 0 holds 0.0 twice and the value below 1/15; the last bin 14/15, 1.0 three times and the value
    # below 1.0; every other bin its lower edge and the value below its upper edge.
    assert bins.counts.tolist() == [3] + [2] * (NUM_BINS - 2) + [5]
    np.testing.assert_allclose(bins.accuracy(), [a for _, a, _ in reference])
    np.testing.assert_allclose(bins.mean_confidence(), [c for _, _, c in reference])


def test_ece_and_mce_equal_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3000, 6)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # Confidences that float16 holds exactly, so that both sides bin the same values.
    top = probs.max(1)
    probs *= (top.astype(np.float16).astype(np.float64) / top)[:, None]
    labels = rng.integers(0, 6, 3000)
    # torchmetrics gives a confidence of exactly 1.0 a 16th bin of its own; this monitor puts it in the
    # last bin (test above). Away from 1.0 the two must agree.
    keep = probs.max(1) < 1.0
    probs, labels = probs[keep], labels[keep]
    assert keep.sum() > 2500
    bins = CalibrationBins.of(probs.max(1).astype(np.float16), probs.argmax(1), labels)
    target = torch.from_numpy(labels)
    for norm, ours in (("l1", bins.ece()), ("max", bins.mce())):
        theirs = multiclass_calibration_error(torch.from_numpy(probs).float(), target, 6, n_bins=NUM_BINS,
                                              norm=norm)
        assert ours == pytest.approx(float(theirs), abs=2e-6), norm


def test_bins_of_chunks_and_ranks_add_up_to_the_bins_of_the_whole():
    rng = np.random.default_rng(3)
    confidence = rng.random(999).astype(np.float16)
    preds, labels = rng.integers(0, 3, 999), rng.integers(0, 3, 999)
    whole = CalibrationBins.of(confidence, preds, labels)
    parts = [CalibrationBins.of(confidence[i:i + 100], preds[i:i + 100], labels[i:i + 100]) for i in range(0, 999, 100)]
    total = sum(parts[1:], parts[0])
    np.testing.assert_array_equal(total.counts, whole.counts)
    np.testing.assert_array_equal(total.correct, whole.correct)
    np.testing.assert_allclose(total.confidence_sums, whole.confidence_sums)


def test_nan_confidences_fall_in_no_bin():
    bins = CalibrationBins.of(np.array([np.nan, 0.5, 0.99], np.float16), np.array([0, 0, 1]), np.array([0, 0, 0]))
    assert bins.total == 2 and bins.unscored == 1
    assert bins.ece() == pytest.approx((abs(1 - 0.5) + abs(0 - float(np.float16(0.99)))) / 2, abs=1e-12)


# ---------------------------------------------------------------------------- the wire


def _preds(confidence, n: int = 4) -> bytes:
    labels = np.arange(n, dtype=np.uint8) % 3
    body = {"epoch": 0, "step": 0, "preds": labels, "labels": labels, "confidence": confidence}
    return encode(make_message("preds", "r", 0, 1, 0, body))


def test_confidence_of_the_wrong_length_or_type_is_refused_with_its_reason():
    with pytest.raises(InvalidFieldError, match="4 predictions but 3 confidences"):
        decode(_preds(np.ones(3, np.float16)))
    with pytest.raises(InvalidArrayError, match=r"preds.confidence: expected float16 \('<f2'\) confidences, got <f4"):
        decode(_preds(np.ones(4, np.float32)))
    with pytest.raises(InvalidArrayError, match="preds.confidence: expected 1 dimensions"):
        decode(_preds(np.ones((4, 1), np.float16)))
    assert decode(_preds(None)).get("confidence") is None  # a 1.1 sender's preds


def test_mistakes_fields_must_agree():
    body = {"epoch": 0, "top_k": 2, "images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(2, np.uint8),
            "preds": np.ones(2, np.uint8), "confidence": np.ones(2, np.float16)}
    assert decode(encode(make_message("mistakes", "r", 0, 1, 0, body))).kind == "mistakes"
    for change, match in (({"confidence": np.ones(1, np.float16)}, "2 images need 2 labels"),
                          ({"top_k": 1}, "2 images but top_k is 1")):
        with pytest.raises(InvalidFieldError, match=match):
            decode(encode(make_message("mistakes", "r", 0, 1, 0, {**body, **change})))


def test_one_sample_costs_four_bytes_with_confidence_under_256_classes():
    small, large = (len(_preds(np.full(n, 0.5, np.float16), n)) for n in (1_000, 11_000))
    assert (large - small) / 10_000 == 4.0


# ---------------------------------------------------------------------------- the monitor's state


def _run(world: int = 2) -> RunState:
    run = RunState("r", world)
    run.on_run_start(make_message("run_start", "r", 0, world, 0, {
        "class_names": ["a", "b", "c"], "normalization": {"mean": [0.5], "std": [0.5]},
        "model": {"class": "M", "total_params": 1, "trainable_params": 1, "size_mb": 0.0},
        "train_targets": None, "class_counts": None, "sampler": None, "hparams": None}))
    return run


def _feed_preds(run: RunState, rank: int, preds, labels, confidence, step: int = 5) -> None:
    body = {"epoch": 0, "step": step, "preds": np.asarray(preds, np.uint8), "labels": np.asarray(labels, np.uint8)}
    if confidence is not None:
        body["confidence"] = np.asarray(confidence, np.float16)
    run.on_preds(decode(encode(make_message("preds", "r", rank, run.world, 1, body, sender=f"s{rank}"))))


def test_calibration_sums_chunks_and_ranks_and_enters_the_history():
    rng = np.random.default_rng(11)
    confidence = rng.random(300).astype(np.float16)
    preds, labels = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    run = _run()
    for rank, part in ((0, slice(0, 100)), (0, slice(100, 150)), (1, slice(150, 300))):
        _feed_preds(run, rank, preds[part], labels[part], confidence[part])
    run.drawn(0)
    ece, mce = reference_ece_mce(confidence, preds == labels)
    assert run.history[0]["val/ece"] == pytest.approx(ece, abs=1e-12)
    assert run.history[0]["val/mce"] == pytest.approx(mce, abs=1e-12)
    # A new validation pass of rank 1 (another step) replaces its earlier bins.
    _feed_preds(run, 1, [0], [0], [1.0], step=9)
    assert run.calibration(0).total == 151


def test_preds_without_confidence_give_no_calibration():
    run = _run(world=1)
    _feed_preds(run, 0, [0, 1], [0, 2], None)
    run.drawn(0)
    assert run.calibration(0) is None and "val/ece" not in run.history.get(0, {})


def test_confidences_outside_zero_to_one_are_refused():
    run = _run(world=1)
    with pytest.raises(RejectedMessage, match=r"confidences must lie in \[0, 1\]"):
        _feed_preds(run, 0, [0, 1], [0, 2], [0.5, 1.5])


def _mistakes(rank: int, confidence: list[float], top_k: int = 4, size: int = 2) -> protocol.Message:
    n = len(confidence)
    images = np.full((n, size, size, 3), rank, np.uint8)
    images[:, 0, 0, 1] = np.arange(n)  # where each thumbnail was in its rank's message
    body = {"epoch": 0, "top_k": top_k, "images": images, "labels": np.zeros(n, np.uint8),
            "preds": np.full(n, 1 + rank % 2, np.uint8), "confidence": np.array(confidence, np.float16)}
    return decode(encode(make_message("mistakes", "r", rank, 3, 2, body)))


def test_mistakes_of_every_rank_merge_by_confidence_then_rank_then_place():
    by_rank = {2: _mistakes(2, [0.9, 0.5, 0.5]), 0: _mistakes(0, [0.7, 0.5]), 1: _mistakes(1, [0.95, 0.9, 0.5, 0.5])}
    merged = merge_mistakes(by_rank)
    order = [(int(rank), int(image[0, 0, 1])) for rank, image in zip(merged.ranks, merged.images)]
    assert order == [(1, 0), (1, 1), (2, 0), (0, 0)]  # top_k 4 of 9, ties at 0.9 broken by rank
    assert merged.confidence.tolist() == [np.float16(c) for c in (0.95, 0.9, 0.9, 0.7)]
    assert [int(image[0, 0, 0]) for image in merged.images] == [1, 1, 2, 0]  # images follow their rows
    assert merged.preds.tolist() == [2, 2, 1, 1]


def test_mistakes_show_as_many_as_the_largest_top_k_and_none_when_empty():
    merged = merge_mistakes({0: _mistakes(0, [0.8, 0.7], top_k=2), 1: _mistakes(1, [0.6], top_k=3)})
    assert merged.confidence.tolist() == [np.float16(c) for c in (0.8, 0.7, 0.6)]
    assert merge_mistakes({0: _mistakes(0, [])}) is None


def test_mistake_thumbnails_of_another_size_than_another_ranks_are_refused():
    run = _run(world=3)
    run.on_mistakes(_mistakes(0, [0.5]))
    with pytest.raises(RejectedMessage, match="thumbnails of 3×3 px, but rank 0 sent 2×2 px"):
        run.on_mistakes(_mistakes(1, [0.5], size=3))
    assert run.hardest_mistakes(0).confidence.tolist() == [0.5]


# ---------------------------------------------------------------------------- the reliability diagram


def test_reliability_diagram_shows_each_bins_accuracy_and_count_and_the_errors():
    from monitor.outputs.render.calibration_figures import reliability_figure

    rng = np.random.default_rng(2)
    confidence = np.concatenate([rng.uniform(0.5, 1.0, 5000), [0.1]]).astype(np.float16)
    right = rng.random(len(confidence)) < confidence.astype(float) ** 2  # over-confident
    bins = CalibrationBins.of(confidence, right.astype(int), np.ones(len(confidence), int))
    figure = reliability_figure(bins, "Reliability diagram — epoch 3")
    diagram, counts = figure.axes
    assert diagram.get_title() == (f"Reliability diagram — epoch 3\nECE {bins.ece():.4f} · MCE {bins.mce():.4f} · "
                                   "5,001 predictions")
    filled = bins.counts > 0
    reference = reference_bins(confidence.astype(np.float64), right)
    accuracy_bars = diagram.containers[0]
    assert len(accuracy_bars) == filled.sum() == 9  # bin 1 (the 0.1) and bins 7 to 14
    np.testing.assert_allclose([bar.get_height() for bar in accuracy_bars], [a for n, a, _ in reference if n])
    np.testing.assert_allclose([bar.get_x() for bar in accuracy_bars], EDGES[:-1][filled])
    assert [t.get_text() for t in counts.texts] == [f"{n:,}" for n, _, _ in reference if n]
    assert [bar.get_height() for bar in counts.containers[0]] == bins.counts.tolist()
