"""Demo trainer: a small CNN on scikit-learn's digits (or any ImageFolder), watched by the sidecar monitor."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from trainer_side.demo_data import IMAGE_SIZE, DigitsDataModule, default_cache_dir

__all__ = ["DemoClassifier", "DigitsDataModule", "main", "topk_accuracy"]

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """Share of rows whose label is among the k highest logits (k capped at the class count)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean()


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DemoClassifier(L.LightningModule):
    """Three conv blocks (32, 64, 128 channels) on 32x32 input, a linear head on the 4x4 map; cross-entropy, Adam."""

    def __init__(self, num_classes: int, lr: float = 1e-3) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(_conv_block(3, 32), _conv_block(32, 64), _conv_block(64, 128))
        # Flattened rather than globally pooled: digits are told apart by where their strokes are,
        # which global pooling throws away.
        self.head = nn.Linear(128 * (IMAGE_SIZE // 8) ** 2, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images).flatten(1))

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        images, labels = batch[0], batch[1]  # (image, label, index) with --track-train
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(labels), sync_dist=True)
        self.log("train/acc_top1", topk_accuracy(logits, labels, 1), on_step=False, on_epoch=True,
                 batch_size=len(labels), sync_dist=True)
        return {"loss": loss, "logits": logits.detach()}  # the logits for EmitterCallback(track_train=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self(images)
        size = len(labels)
        self.log("val/loss", F.cross_entropy(logits, labels), on_epoch=True, batch_size=size, sync_dist=True)
        self.log("val/acc_top1", topk_accuracy(logits, labels, 1), on_epoch=True, batch_size=size, sync_dist=True)
        self.log("val/acc_top5", topk_accuracy(logits, labels, 5), on_epoch=True, batch_size=size, sync_dist=True)
        # Returned so the monitor callback reuses them instead of running a second forward pass.
        return logits

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the house rule for user errors.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def build_parser() -> argparse.ArgumentParser:
    """The demo's command line."""
    parser = _Parser(prog="python -m trainer_side.demo", description=__doc__)
    parser.add_argument("--epochs", type=_positive(int), default=3, help="training epochs (default: 3)")
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                        help=f"ZeroMQ endpoint of `monitor serve` (default: {DEFAULT_ENDPOINT})")
    parser.add_argument("--run", default=None, help="run name shown by the monitor (default: generated)")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="train on this ImageFolder (DIR/train/<class>/, DIR/val/<class>/) instead of digits")
    parser.add_argument("--data-cache", metavar="DIR", default=None,
                        help=f"where the digits ImageFolder is written once (default: {default_cache_dir()})")
    parser.add_argument("--batch-size", type=_positive(int), default=64, help="batch size (default: 64)")
    parser.add_argument("--lr", type=_positive(float), default=1e-3, help="Adam learning rate (default: 0.001)")
    parser.add_argument("--seed", type=int, default=0, help="seed for everything, sampler included (default: 0)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    parser.add_argument("--no-monitor", action="store_true", help="train without the EmitterCallback")
    parser.add_argument("--track-train", action="store_true",
                        help="also send each training sample's label probability (Dataset Cartography)")
    parser.add_argument("--accelerator", default="auto",
                        help="Lightning accelerator: auto, cpu, gpu, ... (default: auto)")
    parser.add_argument("--devices", type=_devices, default="auto",
                        help="Lightning devices: auto, a count, or a list such as 0,1 (default: auto)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train the demo classifier; 0 on success, 2 on a user error (one line on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help or a parse error: return the code instead of exiting the caller
        return int(done.code or 0)
    try:
        if args.num_workers < 0:
            raise ValueError(f"--num-workers must be 0 or more, got {args.num_workers}")
        datamodule = DigitsDataModule(data_dir=args.data, cache_dir=args.data_cache, batch_size=args.batch_size,
                                      num_workers=args.num_workers, seed=args.seed, indexed_train=args.track_train)
        # Written (or checked) here, before the Trainer, so a bad or unwritable cache is a one-line error.
        datamodule.prepare_data()
        callbacks = []
        if not args.no_monitor:
            from trainer_side import EmitterCallback

            callbacks.append(EmitterCallback(endpoint=args.endpoint, run=args.run, track_train=args.track_train))
    except (ValueError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2

    L.seed_everything(args.seed, workers=True, verbose=False)
    model = DemoClassifier(num_classes=len(datamodule.class_to_idx), lr=args.lr)
    try:
        trainer = _trainer(args, callbacks)
    except (MisconfigurationException, ValueError) as error:  # e.g. --accelerator gpu on a CPU-only machine
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    if trainer.is_global_zero:
        accuracy = trainer.callback_metrics.get("val/acc_top1")
        accuracy_text = "n/a" if accuracy is None else f"{float(accuracy):.4f}"
        run = next((cb.run for cb in callbacks if getattr(cb, "run", None)), None)
        print(f"final val/acc_top1={accuracy_text} epochs={args.epochs} fit_s={time.perf_counter() - started:.1f}"
              f" run={run or '-'}")
    return 0


def _trainer(args: argparse.Namespace, callbacks: list[L.Callback]) -> L.Trainer:
    return L.Trainer(
        max_epochs=args.epochs,
        accelerator=args.accelerator,
        devices=args.devices,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        # "warn": deterministic kernels where they exist, a warning (not a crash) where a GPU has none.
        deterministic="warn",
    )


if __name__ == "__main__":
    raise SystemExit(main())
