"""The trainer's sample ids (protocol 1.3): found without help in the usual loaders, carried at the
bytes the issue bounds, with each given label's probability computed on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset, TensorDataset

from trainer_side import protocol
from trainer_side.collect import ValidationCollector, top1_and_label
from trainer_side.emitter import Emitter
from trainer_side.protocol import IdRange, compact_ids
from trainer_side.sample_ids import IndexedDataset, batch_ids, dataset_names, loader_order
from trainer_side.train_collect import TrainingCollector

NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _dataset(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.zeros(n, 3, 4, 4), torch.arange(n) % 3)


def test_a_sequential_loader_gives_ranges():
    order = loader_order(DataLoader(_dataset(), batch_size=4))
    assert order.missing is None and order.size == 10
    assert order.ids(4, 6) == IdRange(4, 6)


def test_a_shuffled_loader_gives_no_ids_and_names_the_fix():
    order = loader_order(DataLoader(_dataset(), batch_size=4, shuffle=True))
    assert order.ids(0, 4) is None
    assert "shuffles" in order.missing and "shuffle=False" in order.missing and "'index'" in order.missing


def test_a_distributed_sampler_without_shuffling_gives_each_ranks_list():
    dataset = _dataset(5)
    for rank, expected in ((0, [0, 2, 4]), (1, [1, 3, 0])):  # 5 samples on 2 ranks: rank 1 repeats sample 0
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        order = loader_order(DataLoader(dataset, batch_size=2, sampler=sampler))
        ids = order.ids(0, 3)
        assert ids.dtype == np.uint32 and ids.tolist() == expected
    shuffled = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True)
    assert loader_order(DataLoader(dataset, sampler=shuffled)).missing is not None


def test_a_subset_maps_positions_to_the_datasets_own_indices():
    base = _dataset(20)
    order = loader_order(DataLoader(Subset(Subset(base, [9, 3, 5, 7, 11]), [1, 2, 4]), batch_size=2))
    assert order.size == 20
    assert order.ids(0, 3).tolist() == [3, 5, 11] and order.ids(1, 1) == IdRange(5, 1)
    assert loader_order(DataLoader(Subset(base, range(6, 12)))).ids(0, 6) == IdRange(6, 6)


def test_batches_carry_ids_under_their_usual_keys_or_the_named_one():
    ids = torch.tensor([[4], [2]])

    def found(batch, id_key=None, in_batch=False) -> list | None:
        value = batch_ids(batch, id_key, in_batch)
        return None if value is None else value.tolist()

    assert found({"image": 0, "label": 1, "idx": ids}) == [4, 2]
    assert found({"image": 0, "label": 1, "sample": ids}, "sample") == [4, 2]
    assert found({"image": 0, "label": 1, "idx": ids, "id": ids}) is None  # ambiguous
    assert found((0, 1, ids), in_batch=True) == [4, 2]  # IndexedDataset's third item
    assert found((0, 1, ids)) is None
    assert found((0, 1, ids), 2) == [4, 2]
    assert found({"idx": ids.float()}) is None


def test_indexed_dataset_returns_the_index_and_keeps_the_datasets_attributes():
    dataset = _dataset(4)
    dataset.classes = ["a", "b", "c"]
    indexed = IndexedDataset(dataset)
    x, y, index = indexed[3]
    assert index == 3 and int(y) == 0 and indexed.classes == ["a", "b", "c"] and len(indexed) == 4
    batch = next(iter(DataLoader(indexed, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    order = loader_order(DataLoader(indexed, batch_size=4, shuffle=True))
    assert order.in_batch and batch_ids(batch, None, order.in_batch).tolist() == batch[2].tolist()


def test_label_confidence_is_the_softmax_of_the_given_label_even_for_extreme_logits():
    logits = torch.tensor([[1000.0, 0.0, -1000.0], [0.5, 0.25, 2.0], [3.0, 3.0, 3.0]])
    labels = torch.tensor([2, 1, 7])  # 7: out of range
    preds, confidence, label_confidence = top1_and_label(logits, labels)
    expected = torch.softmax(logits.double(), 1)
    assert label_confidence.dtype == torch.float16
    assert label_confidence[0].item() == 0.0
    assert label_confidence[1].item() == expected[1, 1].to(torch.float16).item()
    assert torch.isnan(label_confidence[2])
    assert preds.tolist() == [0, 2, 0]


def _collector(**kw) -> ValidationCollector:
    return ValidationCollector(3, num_thumbnails=0, thumbnail_size=4, chunk_size=kw.pop("chunk_size", 10**6),
                               normalization=NORMALIZATION, **kw)


def test_chunks_of_a_sequential_epoch_carry_consecutive_ranges():
    collector = _collector(chunk_size=5)
    collector.reset(loader_order(DataLoader(_dataset(14), batch_size=3)))
    chunks = []
    for start in range(0, 14, 3):
        count = min(3, 14 - start)
        collector.add(torch.randn(count, 3), torch.arange(count))
        if collector.chunk_ready:
            chunks.append(collector.take_chunk())
    chunks.append(collector.take_chunk())
    assert [chunk.ids for chunk in chunks] == [IdRange(0, 6), IdRange(6, 6), IdRange(12, 2)]
    assert all(len(chunk.label_confidence) == len(chunk.preds) for chunk in chunks)


def test_ids_in_batches_win_and_a_mix_loses_the_epochs_ids():
    collector = _collector()
    collector.reset(loader_order(DataLoader(_dataset(), shuffle=True)))
    collector.add(torch.randn(2, 3), torch.tensor([0, 1]), ids=torch.tensor([7, 3]))
    collector.add(torch.randn(1, 3), torch.tensor([2]), ids=torch.tensor([2**33]))
    ids = collector.take_chunk().ids
    assert ids.dtype == np.uint64 and ids.tolist() == [7, 3, 2**33] and collector.ids.missing is None
    collector.reset(loader_order(DataLoader(_dataset())))
    collector.add(torch.randn(2, 3), torch.tensor([0, 1]), ids=torch.tensor([7, 3]))
    collector.add(torch.randn(1, 3), torch.tensor([2]))
    assert collector.take_chunk().ids is None and "others did not" in collector.ids.missing


def test_mistakes_carry_the_ids_of_their_samples():
    collector = ValidationCollector(3, num_thumbnails=0, thumbnail_size=4, chunk_size=10**6,
                                    normalization=NORMALIZATION, num_mistakes=2)
    base = _dataset(30)
    collector.reset(loader_order(DataLoader(Subset(base, list(range(10, 30))), batch_size=4)))
    logits = torch.zeros(4, 3)
    logits[:, 0] = 1.0
    logits[3, 0] = 3.0  # the most confident mistake: position 7 (the second batch's last)
    collector.add(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), torch.zeros(4, 3, 4, 4))
    collector.add(logits, torch.tensor([1, 0, 0, 2]), torch.zeros(4, 3, 4, 4))
    mistakes = collector.take_mistakes()
    assert mistakes.ids.tolist() == [17, 14]  # positions 7 and 4, through the Subset's indices


def test_bytes_per_sample_ranged_ids_add_none_explicit_four_label_confidence_two():
    def size(n: int, **fields) -> int:
        body = {"epoch": 1, "step": 2, "preds": np.zeros(n, np.uint8), "labels": np.zeros(n, np.uint8),
                "confidence": np.zeros(n, np.float16), **{k: v(n) for k, v in fields.items()}}
        return len(protocol.encode(protocol.make_message("preds", "r", 0, 1, 0, body)))

    def per_sample(**fields) -> float:
        return (size(2000, **fields) - size(1000, **fields)) / 1000

    assert per_sample() == 4.0
    assert per_sample(ids=lambda n: IdRange(300, n)) == 4.0
    assert per_sample(ids=lambda n: compact_ids(np.arange(0, 2 * n, 2))) == 8.0
    assert per_sample(label_confidence=lambda n: np.zeros(n, np.float16)) == 6.0


def test_compact_ids_refuses_negative_ids():
    with pytest.raises(ValueError, match="non-negative"):
        compact_ids(np.array([3, -1]))


def test_sample_names_go_in_chunks_of_a_thousand_and_long_names_are_cut(tmp_path):
    emitter = Emitter(None, run="names", spool=tmp_path)
    names = [f"c/{i}.jpg" for i in range(2500)]
    names[1700] = "x" * 250
    assert emitter.sample_names("val", names)
    emitter.close()
    from trainer_side.msglog import iter_frames

    messages = [protocol.decode(f) for f in iter_frames(tmp_path / "names" / "rank0.mlog")]
    chunks = [(m["first"], len(m["names"])) for m in messages if m.kind == "sample_names"]
    assert chunks == [(0, 1000), (1000, 1000), (2000, 500)]
    cut = messages[1]["names"][700]
    assert len(cut) == 200 and cut.endswith("…")


def test_names_come_from_image_folder_samples_relative_to_the_root():
    class Folder(TensorDataset):
        root = "/data/pets"
        samples = [("/data/pets/cats/0042.jpg", 0), ("/data/pets/dogs/7.jpg", 1)]

    folder = Folder(torch.zeros(2, 1), torch.zeros(2))
    assert dataset_names(folder) == ["cats/0042.jpg", "dogs/7.jpg"]
    assert dataset_names(Subset(folder, [1])) == ["cats/0042.jpg", "dogs/7.jpg"]  # ids are the base's indices
    assert dataset_names(_dataset()) is None


def test_training_records_keep_ids_labels_and_label_confidence():
    collector = TrainingCollector(3, chunk_size=10**6, batch_keys=None, id_key=None)
    collector.reset(loader_order(DataLoader(IndexedDataset(_dataset()), batch_size=2, shuffle=True)))
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    collector.add({"loss": torch.tensor(1.0), "logits": logits}, (torch.zeros(2, 3), torch.tensor([0, 1]),
                                                                   torch.tensor([8, 5])))
    chunk = collector.take_chunk()
    assert chunk.ids.tolist() == [8, 5] and chunk.labels.tolist() == [0, 1] and chunk.preds.tolist() == [0, 2]
    np.testing.assert_array_equal(chunk.label_confidence,
                                  torch.softmax(logits.double(), 1)[[0, 1], [0, 1]].numpy().astype(np.float16))


def test_training_records_without_logits_say_the_fix():
    collector = TrainingCollector(3, chunk_size=10**6, batch_keys=None, id_key=None)
    collector.add(torch.tensor(1.0), (torch.zeros(2, 3), torch.tensor([0, 1])))
    assert collector.take_chunk() is None and '"logits": logits' in collector.problem


def _hex_blocks(text: str) -> list[str]:
    """The code blocks of a markdown text that hold only hex bytes, as one string each."""
    blocks = text.split("```")[1::2]
    return [" ".join(block.split()) for block in blocks
            if block.strip() and all(len(word) == 2 for word in block.split())]


def test_the_byte_examples_of_protocol_1_3_in_the_doc_are_what_encode_writes():
    from conftest import ROOT

    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    blocks = _hex_blocks(doc)
    envelope = dict(run="run-20261126-181512-a3f9", rank=0, world=2, time=1795712112.5, sender="5f0c2b7e9a1d4c83")
    body = {"epoch": 1, "step": 120, "preds": np.array([2, 0, 1], np.uint8), "labels": np.array([2, 1, 1], np.uint8),
            "confidence": np.array([0.9, 0.6, 0.45], np.float16), "ids": IdRange(40, 3),
            "label_confidence": np.array([0.9, 0.3, 0.45], np.float16)}
    ranged = protocol.encode(protocol.make_message("preds", seq=5, body=body, **envelope))
    explicit = protocol.encode(protocol.make_message(
        "preds", seq=5, body={**body, "ids": np.array([40, 42, 44], np.uint32)}, **envelope))
    names = protocol.encode(protocol.make_message(
        "sample_names", seq=1, body={"split": "val", "first": 40, "names": ["cats/0042.jpg", "dogs/0007.jpg"]},
        **envelope))
    assert (len(ranged), len(explicit), len(names)) == (297, 320, 161)
    ids_part = explicit[explicit.index(b"\xa3ids"):explicit.index(b"\xb0label_confidence")]
    query = protocol.encode_receipt_query("run-20261126-181512-a3f9", 0, "5f0c2b7e9a1d4c83")
    for frame in (ranged, names, ids_part, query):
        assert any(frame.hex(" ") in block for block in blocks), frame
