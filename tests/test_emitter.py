"""The trainer side on its own: what the Emitter and EmitterCallback promise the training loop."""

from __future__ import annotations

import logging
import os
import pickle

import lightning as L
import numpy as np
import pytest
import torch
import zmq
from torch.utils.data import DataLoader, Dataset, TensorDataset

from conftest import free_port
from tiny_training import TinyData, TinyNet
from trainer_side import Emitter, EmitterCallback
from trainer_side.collect import ValidationCollector
from trainer_side.emitter import never_raises
from trainer_side.protocol import decode


class Pull:
    """A bare PULL socket on a free loopback port, standing in for the monitor."""

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PULL)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.socket.bind(self.endpoint)

    def receive_all(self, timeout_ms: int = 2000) -> list:
        messages = []
        while self.socket.poll(timeout_ms):
            messages.append(decode(self.socket.recv()))
            timeout_ms = 300
        return messages

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@pytest.fixture
def pull():
    receiver = Pull()
    yield receiver
    receiver.close()


@pytest.mark.parametrize("kwargs, match", [
    ({"endpoint": "foo"}, "endpoint must start with tcp://, ipc:// or inproc://, got 'foo'"),
    ({"endpoint": "tcp://127.0.0.1:99999"}, r"endpoint port must be 1 to 65534 \(the monitor's receipts socket"),
    ({"endpoint": "tcp://127.0.0.1:65535"}, "endpoint port must be 1 to 65534"),
    ({"endpoint": "tcp://127.0.0.1:0"}, "endpoint port must be 1 to 65534"),
    ({"endpoint": "tcp://127.0.0.1"}, "endpoint port must be 1 to 65534"),
    ({"endpoint": None, "spool": False}, "give an endpoint, a spool folder, or both"),
    ({"run": ""}, "run must be a non-empty string"),
    ({"queue_size": 0}, "queue_size must be a positive integer"),
    ({"linger_ms": -1}, "linger_ms must be a non-negative integer"),
    ({"rank": 2, "world_size": 2}, "rank 2 must be smaller than world_size 2"),
    ({"server_key": "short"}, "40-character Z85 CURVE key"),
    ({"rank": True}, "rank must be a non-negative integer, got True"),
    ({"world_size": (1 << 20) + 1}, "world_size must be at most 1048576"),
    ({"spool": ""}, "spool must be True"),
])
def test_emitter_arguments_are_checked_at_once(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Emitter(**kwargs)


KEY = "A" * 40


@pytest.mark.parametrize("kwargs, match", [
    ({"endpoint": None, "spool": False}, "give an endpoint, a spool folder, or both"),
    ({"endpoint": "tcp://127.0.0.1:99999"}, "endpoint port must be 1 to 65534"),
    ({"run": "x" * 201}, "run must be a non-empty string of at most 200 characters"),
    ({"queue_size": True}, "queue_size must be a positive integer, got True"),
    ({"linger_ms": 1.5}, r"linger_ms must be a non-negative integer \(milliseconds\), got 1.5"),
    ({"spool": 0}, "spool must be True .default folder., False .none. or a folder path, got 0"),
    ({"server_key": KEY[:-1] + "é"}, "server_key must be a 40-character Z85 CURVE key"),
    ({"server_key": KEY, "client_keys": (KEY,)}, "client_keys must be a .public, secret. pair"),
    ({"client_keys": (KEY, KEY)}, "client_keys need server_key too"),
])
def test_emitter_and_callback_refuse_a_shared_argument_with_the_same_message(kwargs, match):
    with pytest.raises(ValueError, match=match) as by_emitter:
        Emitter(**kwargs)
    with pytest.raises(ValueError, match=match) as by_callback:
        EmitterCallback(**kwargs)
    assert str(by_callback.value) == str(by_emitter.value)


def test_a_callback_checks_its_arguments_without_making_an_emitter(monkeypatch):
    made = []
    monkeypatch.setattr(Emitter, "__init__", lambda self, *args, **kwargs: made.append(kwargs))
    callback = EmitterCallback("ipc:///tmp/nowhere", run="checked", spool=False, server_key=KEY.encode(),
                               client_keys=(KEY, KEY))
    assert made == [] and callback.emitter is None


@pytest.mark.parametrize("kwargs, match", [
    ({"endpoint": "udp://x"}, "endpoint must start with"),
    ({"class_names": "cat"}, "class_names must be a non-empty sequence of strings"),
    ({"normalization": {"mean": [0.5], "std": [0.0]}}, "positive std"),
    ({"num_thumbnails": -1}, "num_thumbnails must be a non-negative integer"),
    ({"thumbnail_size": 0}, "thumbnail_size must be a positive integer"),
    ({"chunk_size": 0}, "chunk_size must be a positive integer"),
    ({"batch_keys": ("x",)}, "batch_keys must be None or an"),
    ({"batch_keys": ("x", 1.5)}, "batch_keys must be None or an"),
])
def test_callback_arguments_are_checked_at_once(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EmitterCallback(**kwargs)


@pytest.mark.slow
def test_messages_are_numbered_per_run_and_rank(pull):
    emitter = Emitter(pull.endpoint, run="numbers", rank=1, world_size=3)
    emitter.run_start(["a", "b"])
    emitter.metrics(0, "val", {"val/loss": 1.0})
    emitter.epoch_end(0)
    emitter.close()
    messages = pull.receive_all()
    assert [(m.kind, m.seq, m.rank, m.world, m.run) for m in messages] == [
        ("run_start", 0, 1, 3, "numbers"), ("metrics", 1, 1, 3, "numbers"), ("epoch_end", 2, 1, 3, "numbers")]
    assert messages[-1]["sent"] == 2 and messages[-1]["dropped"] == 0


def test_a_full_queue_drops_counts_and_warns_once(caplog):
    port = free_port()  # nobody listens: the queue fills and stays full
    emitter = Emitter(f"tcp://127.0.0.1:{port}", run="drops", queue_size=3, linger_ms=0)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        results = [emitter.metrics(0, "val", {"x": 1.0}) for _ in range(10)]
    emitter.close()
    assert results.count(True) == emitter.sent and emitter.sent + emitter.dropped == 10
    assert emitter.dropped >= 5 and emitter.seq == 10
    warnings = [r for r in caplog.records if "not keeping up" in r.getMessage()]
    assert len(warnings) == 1


def test_an_emitter_failure_never_reaches_the_training_loop(caplog, pull):
    emitter = Emitter(pull.endpoint, run="quiet", linger_ms=0)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        assert emitter.metrics(0, "val", {"x": 1.0}) is True
        assert emitter.metrics(0, "val", {"x": object()}) is False  # float(object()) raises inside send
        assert emitter.metrics(0, "val", {"x": 1.0}) is False  # and monitoring is off from then on
        assert emitter.run_end("completed") is False
    messages = pull.receive_all(10_000)  # before close: with linger_ms=0, close drops what is queued
    emitter.close()
    errors = [r.getMessage() for r in caplog.records if "monitoring turned off" in r.getMessage()]
    assert len(errors) == 1 and "run quiet rank 0 after TypeError" in errors[0]
    # The monitor learns that the run ends here, and why, instead of waiting for a run_end for ever.
    assert [(m.kind, m.seq) for m in messages] == [("metrics", 0), ("run_end", 1)]
    assert messages[1]["status"] == "failed" and messages[1]["error"].startswith("monitoring turned off: TypeError")
    assert (messages[1]["sent"], messages[1]["dropped"]) == (1, 0)


class Step:
    """Stands in for the callback: an owner of an emitter with guarded steps."""

    def __init__(self, emitter: Emitter) -> None:
        self.emitter = emitter
        self.finished = 0

    @never_raises
    def bad_then_more(self) -> None:
        self.emitter.metrics(0, "val", {"x": object()})  # fails inside a guarded call
        self.emitter.metrics(0, "val", {"y": 1.0})
        self.finished += 1

    @never_raises
    def fine(self) -> None:
        self.finished += 1


def test_a_failure_inside_a_guarded_step_ends_the_step_once_at_the_outer_boundary(caplog, pull):
    step = Step(Emitter(pull.endpoint, run="nested", linger_ms=0))
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        assert step.bad_then_more() is False
        assert step.fine() is False
    messages = pull.receive_all(10_000)
    step.emitter.close()
    assert step.finished == 0  # neither the rest of the failed step nor a later step ran
    assert sum("monitoring turned off" in r.getMessage() for r in caplog.records) == 1
    assert [(m.kind, m["status"]) for m in messages] == [("run_end", "failed")]


def test_a_forked_child_never_uses_the_parents_socket(pull):
    emitter = Emitter(pull.endpoint, run="fork")
    emitter.run_start(["a"])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a DataLoader worker, say
        os.close(read)
        sent = emitter.metrics(0, "val", {"x": 1.0})
        os.write(write, b"1" if sent else b"0")
        os._exit(0)
    os.close(write)
    child_sent = os.read(read, 1)
    os.waitpid(pid, 0)
    emitter.metrics(0, "val", {"parent": 1.0})
    emitter.close()
    messages = pull.receive_all()
    assert child_sent == b"0"
    assert [m.kind for m in messages] == ["run_start", "metrics"] and "parent" in messages[1]["values"]


@pytest.mark.slow
def test_emitter_and_callback_pickle_without_their_socket(pull):
    emitter = Emitter(pull.endpoint, run="pickled")
    emitter.run_start(["a"])
    clone = pickle.loads(pickle.dumps(emitter))
    assert clone.run == "pickled" and clone.seq == 1 and clone._socket is None
    emitter.close()
    callback = EmitterCallback(pull.endpoint, run="cb")
    restored = pickle.loads(pickle.dumps(callback))
    assert restored.run == "cb" and restored.emitter is None


class CountingNet(TinyNet):
    """Counts forward calls; `return_logits=False` makes validation_step return nothing."""

    def __init__(self, return_logits: bool) -> None:
        super().__init__()
        self.return_logits = return_logits
        self.forward_calls = 0

    def forward(self, x):
        self.forward_calls += 1
        return super().forward(x)

    def validation_step(self, batch, batch_idx):
        logits = super().validation_step(batch, batch_idx)
        return {"logits": logits} if self.return_logits else None


def _fit(model, callback, epochs: int = 1) -> None:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=2)
    trainer.fit(model, datamodule=TinyData(batch_size=8))


def test_no_extra_forward_pass_when_validation_step_returns_logits(pull):
    baseline = CountingNet(return_logits=True)
    _fit(baseline, L.Callback())
    model = CountingNet(return_logits=True)
    _fit(model, EmitterCallback(pull.endpoint, run="logits"))
    assert model.forward_calls == baseline.forward_calls
    preds = [m for m in pull.receive_all() if m.kind == "preds"]
    assert len(preds) == 1 and len(preds[0]["preds"]) == 40  # sanity-check batches are not sent


def test_without_logits_one_fallback_pass_per_batch_and_one_warning(pull, caplog):
    baseline = CountingNet(return_logits=False)
    _fit(baseline, L.Callback())
    model = CountingNet(return_logits=False)
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        _fit(model, EmitterCallback(pull.endpoint, run="fallback"))
    assert model.forward_calls == baseline.forward_calls + 40 // 8  # one extra pass per validation batch
    warnings = [r.getMessage() for r in caplog.records if "extra forward pass" in r.getMessage()]
    assert warnings == ["EmitterCallback: validation_step returned None, not the logits, so one extra forward pass "
                        "runs per validation batch. Fix: end validation_step with `return logits` "
                        '(or `return {"loss": loss, "logits": logits}`).']
    preds = [m for m in pull.receive_all() if m.kind == "preds"]
    assert len(preds[0]["preds"]) == 40


def test_predictions_cross_to_the_host_in_bounded_chunks(pull):
    _fit(CountingNet(return_logits=True), EmitterCallback(pull.endpoint, run="chunks", chunk_size=16))
    preds = [m for m in pull.receive_all() if m.kind == "preds"]
    assert [len(m["preds"]) for m in preds] == [16, 16, 8]  # batches of 8, flushed once 16 are gathered
    assert {m["step"] for m in preds} == {preds[0]["step"]}
    assert all(m["preds"].dtype == np.uint8 for m in preds)


def test_thumbnails_are_denormalized_uint8_of_the_first_samples(pull):
    _fit(CountingNet(return_logits=True), EmitterCallback(pull.endpoint, run="thumbs", num_thumbnails=12))
    samples = next(m for m in pull.receive_all() if m.kind == "samples")
    images = samples["images"]
    assert images.shape == (12, 12, 12, 3) and images.dtype == np.uint8
    data = TinyData()
    x, y = data.val_set.tensors[0][:12], data.val_set.tensors[1][:12]
    mean, std = (torch.tensor(data.normalization[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(images, expected)
    assert samples["labels"].tolist() == y.tolist()


def test_a_callback_that_cannot_work_turns_itself_off_and_the_fit_goes_on(pull, caplog, monkeypatch):
    def broken(self, *args, **kwargs):
        raise RuntimeError("collector broke")

    monkeypatch.setattr(ValidationCollector, "add", broken)
    model = CountingNet(return_logits=True)
    with caplog.at_level(logging.ERROR, logger="trainer_side"):
        _fit(model, EmitterCallback(pull.endpoint, run="broken"), epochs=2)
    assert model.trainer.current_epoch == 2  # the fit completed
    errors = [r.getMessage() for r in caplog.records if "monitoring turned off" in r.getMessage()]
    assert len(errors) == 1 and "RuntimeError" in errors[0]
    messages = pull.receive_all()
    kinds = [m.kind for m in messages]
    assert kinds[0] == "run_start" and "preds" not in kinds
    # The monitor learns that the run is over, and why, instead of waiting for a run_end for ever.
    assert kinds[-1] == "run_end" and kinds.count("run_end") == 1
    assert messages[-1]["status"] == "failed" and "monitoring turned off" in messages[-1]["error"]


class DictBatches(Dataset):
    """The tiny data set as dict samples under `keys`; plain `samples`, no `targets`, like a home-made ImageFolder."""

    def __init__(self, base: TensorDataset, keys: tuple[str, str]) -> None:
        self.base, self.keys = base, keys
        self.samples = [(f"{i}.png", int(y)) for i, y in enumerate(base.tensors[1])]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        x, y = self.base[index]
        return {self.keys[0]: x, self.keys[1]: y, "path": self.samples[index][0]}


class DictNet(CountingNet):
    """Reads dict batches by their keys, as a user's module would."""

    def __init__(self, keys: tuple[str, str]) -> None:
        super().__init__(return_logits=True)
        self.keys = keys

    def training_step(self, batch, batch_idx):
        return super().training_step((batch[self.keys[0]], batch[self.keys[1]]), batch_idx)

    def validation_step(self, batch, batch_idx):
        return super().validation_step((batch[self.keys[0]], batch[self.keys[1]]), batch_idx)


NO_NORMALIZATION = {"mean": [0.0], "std": [1.0]}  # given, so that the callback's only warnings are the batches'


def _fit_dicts(callback, keys: tuple[str, str]) -> DictNet:
    data = TinyData(batch_size=8)
    model = DictNet(keys)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(DictBatches(data.train_set, keys), batch_size=8),
                DataLoader(DictBatches(data.val_set, keys), batch_size=8))
    return model


def test_dict_batches_with_the_usual_keys_need_no_batch_keys_and_samples_give_the_class_counts(pull, caplog):
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        model = _fit_dicts(EmitterCallback(pull.endpoint, run="dicts", normalization=NO_NORMALIZATION),
                           ("image", "label"))
    assert model.forward_calls == 0 + len(model.trainer.train_dataloader) + 40 // 8  # no extra pass
    assert not [r for r in caplog.records if "EmitterCallback" in r.getMessage()]
    messages = pull.receive_all()
    start = messages[0]
    assert start.kind == "run_start" and start.get("targets_missing") is None
    assert start["train_targets"].tolist() == TinyData().train_set.targets
    preds = [m for m in messages if m.kind == "preds"]
    assert preds[0]["labels"].tolist() == TinyData().val_set.targets


def test_an_unreadable_batch_is_said_once_counted_and_the_run_goes_on(pull, caplog):
    with caplog.at_level(logging.WARNING, logger="trainer_side"):
        model = _fit_dicts(EmitterCallback(pull.endpoint, run="odd-keys", normalization=NO_NORMALIZATION),
                           ("img", "cls"))
    assert model.trainer.current_epoch == 1  # the fit completed
    lines = [r.getMessage() for r in caplog.records if "EmitterCallback" in r.getMessage()]
    assert lines == [
        "EmitterCallback: the validation batch is a dict with keys ['img', 'cls', 'path'], none of them a known "
        "input key (image, images, input, inputs); pass EmitterCallback(batch_keys=(input, target)), e.g. "
        'batch_keys=("x", "y"). Such batches send no predictions (counted; training goes on).',
        "EmitterCallback: 5 validation batches had no predictions: the callback could not read them "
        "(see the first warning)"]
    messages = pull.receive_all()
    kinds = [m.kind for m in messages]
    assert "preds" not in kinds and messages[-1].kind == "run_end" and messages[-1]["status"] == "completed"
    model = _fit_dicts(EmitterCallback(pull.endpoint, run="named-keys", batch_keys=("img", "cls")), ("img", "cls"))
    assert len([m for m in pull.receive_all() if m.kind == "preds"][0]["preds"]) == 40


class Unlabelled(Dataset):
    """Gives (image, label) pairs but keeps its labels to itself: no `targets`, `samples` or `tensors`."""

    def __init__(self, base: TensorDataset) -> None:
        self._base = base

    def __len__(self) -> int:
        return len(self._base)

    def __getitem__(self, index: int):
        return self._base[index]


def test_a_train_set_without_targets_sends_the_reason_in_run_start(pull):
    data = TinyData(batch_size=8)
    callback = EmitterCallback(pull.endpoint, run="no-targets")
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=[callback], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_train_batches=1, num_sanity_val_steps=0)
    trainer.fit(CountingNet(return_logits=True), DataLoader(Unlabelled(data.train_set), batch_size=8),
                DataLoader(data.val_set, batch_size=8))
    start = pull.receive_all()[0]
    assert start.kind == "run_start" and start["train_targets"] is None
    assert start["targets_missing"] == ("the train dataset (Unlabelled) has no `targets` or `samples`; give it a "
                                        "`targets` attribute (the class index of every sample) for the class "
                                        "distribution and sampler tables")


def test_a_fit_with_dict_batches_ships_confidences_and_its_hardest_mistakes(pull):
    model = _fit_dicts(EmitterCallback(pull.endpoint, run="dicts", num_mistakes=5), ("image", "label"))
    messages = pull.receive_all()
    kinds = [m.kind for m in messages]
    assert kinds.index("mistakes") < kinds.index("epoch_end")  # shipped once, before the epoch ends
    assert kinds.count("mistakes") == 1
    # The same model, after the fit, gives the logits the validation saw (validation ran last).
    x, y = TinyData().val_set.tensors
    with torch.no_grad():
        logits = model.eval()(x).double()
    confidence = torch.softmax(logits, dim=1).max(dim=1).values.numpy().astype(np.float16)
    preds = logits.argmax(dim=1).numpy()
    sent = next(m for m in messages if m.kind == "preds")
    np.testing.assert_array_equal(sent["confidence"], confidence)
    wrong = sorted(np.flatnonzero(preds != y.numpy()), key=lambda i: (-float(confidence[i]), i))[:5]
    mistakes = next(m for m in messages if m.kind == "mistakes")
    assert mistakes["top_k"] == 5 and len(wrong) == 5
    np.testing.assert_array_equal(mistakes["confidence"], confidence[wrong])
    assert mistakes["labels"].tolist() == y.numpy()[wrong].tolist()
    assert mistakes["preds"].tolist() == preds[wrong].tolist()
    assert mistakes["images"].shape == (5, 12, 12, 3)


def test_num_mistakes_is_checked_at_once():
    with pytest.raises(ValueError, match="num_mistakes must be a non-negative integer, got -1"):
        EmitterCallback(num_mistakes=-1)
