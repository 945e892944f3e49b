"""A tiny, fast, deterministic Lightning training used by the end-to-end tests and the fixture script.

Run as a program it is an independent trainer process, as a user's would be:

    python tests/tiny_training.py --endpoint tcp://127.0.0.1:5555 --run demo --epochs 2 --record preds.npz

`--record` saves, independently of the emitter, every epoch's validation argmax, labels, softmax
maximum and inputs (taken from the logits validation_step returns and the batches), so tests can count
the confusion matrix and the calibration themselves.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer_side import EmitterCallback, TrackingWeightedRandomSampler  # noqa: E402

CLASS_NAMES = ["circle", "square", "triangle", "star"]
TRAIN_PER_CLASS = [60, 30, 15, 9]  # imbalanced on purpose: the sampler has something to balance
VAL_PER_CLASS = [10, 10, 10, 10]
NORMALIZATION = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


class TargetsDataset(TensorDataset):
    """TensorDataset that exposes `.targets`, as torchvision datasets do."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        super().__init__(images, targets)
        self.targets = targets.tolist()


def make_split(per_class: list[int], seed: int) -> TargetsDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])
    images = torch.rand(len(labels), 3, 12, 12, generator=generator)
    for c in range(len(per_class)):  # a faint class-specific stripe so the model can learn something
        images[labels == c, c % 3, 2 * c:2 * c + 3, :] += 0.12
    images = (images - torch.tensor(NORMALIZATION["mean"]).view(3, 1, 1)) / torch.tensor(NORMALIZATION["std"]).view(3, 1, 1)
    return TargetsDataset(images, labels)


class TinyData(L.LightningDataModule):
    def __init__(self, use_sampler: bool = True, batch_size: int = 16) -> None:
        super().__init__()
        self.class_to_idx = {name: i for i, name in enumerate(CLASS_NAMES)}
        self.normalization = NORMALIZATION
        self.use_sampler = use_sampler
        self.batch_size = batch_size
        self.train_set = make_split(TRAIN_PER_CLASS, seed=1)
        self.val_set = make_split(VAL_PER_CLASS, seed=2)

    def train_dataloader(self) -> DataLoader:
        if not self.use_sampler:
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)
        counts = np.bincount(self.train_set.targets)
        weights = 1.0 / counts[self.train_set.targets]
        sampler = TrackingWeightedRandomSampler(weights, num_samples=len(weights))
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)


class TinyNet(L.LightningModule):
    def __init__(self, num_classes: int = len(CLASS_NAMES), lr: float = 0.05, fail_at_epoch: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                 nn.Linear(8 * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.current_epoch == self.hparams.fail_at_epoch:
            raise RuntimeError(f"deliberate failure at epoch {self.current_epoch}")
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/acc_top1", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), on_epoch=True, sync_dist=True)
        self.log("val/acc_top1", (logits.argmax(1) == y).float().mean(), on_epoch=True, sync_dist=True)
        top2 = logits.topk(2, dim=1).indices
        self.log("val/acc_top5", (top2 == y[:, None]).any(1).float().mean(), on_epoch=True, sync_dist=True)
        return logits

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Pacer(L.Callback):
    """Makes each epoch last at least `seconds` longer, so tests can act in the middle of a run; with
    `hold`, the epoch numbered `hold_at` starts only once that file exists (at most 240 s)."""

    def __init__(self, seconds: float, hold: Path | None = None, hold_at: int = 0) -> None:
        self.seconds, self.hold, self.hold_at = seconds, hold, hold_at

    def on_train_epoch_start(self, trainer, pl_module):
        if self.hold is not None and trainer.current_epoch == self.hold_at:
            deadline = time.monotonic() + 240
            while not self.hold.exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    def on_train_epoch_end(self, trainer, pl_module):
        time.sleep(self.seconds)


class PredictionRecorder(L.Callback):
    """Independent of the emitter: keeps each epoch's argmax, labels, confidences (softmax maximum, as
    float16) and inputs from the returned logits and the batches."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.metrics: dict[int, dict[str, float]] = {}
        self.train_labels: dict[int, list[np.ndarray]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train_labels.setdefault(trainer.current_epoch, []).append(batch[1].numpy())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            confidence = torch.softmax(outputs.double(), dim=1).max(dim=1).values.numpy().astype(np.float16)
            self.epochs.setdefault(trainer.current_epoch, []).append(
                (outputs.argmax(1).numpy(), batch[1].numpy(), confidence, batch[0].numpy()))

    def on_train_epoch_end(self, trainer, pl_module):
        self.metrics[trainer.current_epoch] = {k: float(v) for k, v in trainer.callback_metrics.items()}

    def save(self, path: Path, rank: int) -> None:
        arrays = {}
        for epoch, parts in self.epochs.items():
            arrays[f"preds_{epoch}"] = np.concatenate([part[0] for part in parts])
            arrays[f"labels_{epoch}"] = np.concatenate([part[1] for part in parts])
            arrays[f"confidence_{epoch}"] = np.concatenate([part[2] for part in parts])
            arrays[f"inputs_{epoch}"] = np.concatenate([part[3] for part in parts])
        for epoch, labels in self.train_labels.items():
            arrays[f"train_labels_{epoch}"] = np.concatenate(labels)
        for epoch, values in self.metrics.items():
            for name, value in values.items():
                arrays[f"metric_{epoch}_{name.replace('/', '|')}"] = np.array(value)
        np.savez(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"), **arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default=None, help="monitor endpoint (omit for spool-only)")
    parser.add_argument("--run", default=None, help="run id")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--record", type=Path, default=None, help="save independent predictions here (.npz)")
    parser.add_argument("--spool", default=None, help="spool folder")
    parser.add_argument("--no-sampler", action="store_true", help="plain shuffling instead of the tracking sampler")
    parser.add_argument("--devices", type=int, default=1, help="CPU ranks (DDP when > 1)")
    parser.add_argument("--fail-at-epoch", type=int, default=-1, help="raise inside training at this epoch")
    parser.add_argument("--thumbnails", type=int, default=16)
    parser.add_argument("--mistakes", type=int, default=16, help="EmitterCallback(num_mistakes=...)")
    parser.add_argument("--queue-size", type=int, default=1000)
    parser.add_argument("--linger-ms", type=int, default=2000)
    parser.add_argument("--epoch-sleep", type=float, default=0.0, help="extra seconds per epoch")
    parser.add_argument("--hold", type=Path, default=None, help="start epoch --hold-at only once this file exists")
    parser.add_argument("--hold-at", type=int, default=0)
    parser.add_argument("--checkpoint-dir", default=None, help="save last.ckpt here after every epoch")
    parser.add_argument("--resume", default=None, help="checkpoint to resume the fit from")
    args = parser.parse_args(argv)

    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    recorder = PredictionRecorder()
    emitter = EmitterCallback(args.endpoint, run=args.run, spool=args.spool, num_thumbnails=args.thumbnails,
                              num_mistakes=args.mistakes, queue_size=args.queue_size, linger_ms=args.linger_ms)
    callbacks = [emitter, recorder, Pacer(args.epoch_sleep, args.hold, args.hold_at)]
    if args.checkpoint_dir:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=args.checkpoint_dir, save_last=True,
                                                             save_top_k=0))
    trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", devices=args.devices,
                        strategy="ddp" if args.devices > 1 else "auto", callbacks=callbacks, logger=False,
                        enable_checkpointing=bool(args.checkpoint_dir), enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=1)
    model = TinyNet(fail_at_epoch=args.fail_at_epoch)
    try:
        trainer.fit(model, datamodule=TinyData(use_sampler=not args.no_sampler), ckpt_path=args.resume)
    finally:
        if args.record is not None:
            recorder.save(args.record, trainer.global_rank)
    print(f"run {emitter.run} finished")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
