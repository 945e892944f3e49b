"""A training process of the fit-overhead benchmark: runs demo fits on request.

Started by bench/fit_overhead.py: by default one process runs every configuration (two processes
that do the same thing can differ by several per cent for their whole life, see BENCHMARKS.md), or
one process per configuration with --separate-processes. Imports are paid once. Reads one JSON
request per line on stdin and answers one `RESULT {json}` line per fit on stdout:

    {"config": "a", "epochs": 3, "seed": 0, "endpoint": "tcp://127.0.0.1:PORT" | null, "out": DIR}

`peak_rss_mb` is the fit's own peak: the kernel's high-water mark is reset before each fit.

Configurations: a = no observability; b, c, d, s = EmitterCallback (the driver decides whether a live,
no, a SIGSTOPped monitor or a bare receiver listens at `endpoint`); e = the in-process baseline callback
(`InProcessObservability`, below).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from rich.console import Console
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassConfusionMatrix

from bench.harness import runqueue_wait_s
from monitor.outputs.render import confusion_figures, history_figures, sample_grid, tables
from monitor.outputs.render.save import save_figure, write_csv
from trainer_side.collect import make_thumbnails
from trainer_side.demo import DemoClassifier, DigitsDataModule
from trainer_side.runinfo import model_summary
from trainer_side.sampler import TrackingWeightedRandomSampler, find_tracking_sampler
from trainer_side.targets import find_train_targets

PAGE = os.sysconf("SC_PAGE_SIZE")


BOUNDARY_HOOKS = ("on_validation_epoch_end", "on_validation_end", "on_train_epoch_end", "on_train_epoch_start")


class StallTimer(Callback):
    """Time from the last validation batch of an epoch to the next training batch (placed last, so a
    callback's per-batch work is not counted, only what happens at the epoch boundary), and the time
    the observability callback itself spent in its hooks inside that window."""

    def __init__(self) -> None:
        self.last_val_batch: float | None = None
        self.stalls: list[float] = []
        self.in_hooks: list[float] = []
        self._window_hooks = 0.0
        self.train_end: float | None = None

    def timed(self, callback: Callback) -> Callback:
        """Wraps the callback's epoch-boundary hooks (instance attributes: Lightning looks them up with getattr)."""
        for name in BOUNDARY_HOOKS:
            if getattr(type(callback), name) is getattr(Callback, name):
                continue
            original = getattr(callback, name)

            def hook(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    if self.last_val_batch is not None:
                        self._window_hooks += time.perf_counter() - started

            setattr(callback, name, hook)
        return callback

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.sanity_checking:
            self.last_val_batch = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if self.last_val_batch is not None:
            self.stalls.append(time.perf_counter() - self.last_val_batch)
            self.in_hooks.append(self._window_hooks)
            self.last_val_batch, self._window_hooks = None, 0.0

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.train_end = time.perf_counter()


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE / 1e6


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark to the current RSS (Linux 4.0+); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6  # the kernel's kB are KiB; MB as in rss_mb
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kB on Linux; the process's lifetime peak


class InProcessObservability(Callback):
    """Configuration (e), what the usual Lightning callbacks do, inside the training process.

    Per validation batch: one extra forward pass for the confusion matrix (a torchmetrics
    MulticlassConfusionMatrix on the model's device) and another for the sample grid. At every
    validation epoch end: the confusion heatmap (PNG + CSV), the sample grid PNG, the loss and
    accuracy history PNGs, and rich tables (sampler distribution, epoch summary) printed to a console
    file. At fit start: the class distribution and model information tables. It draws with the
    monitor's own builders, already faster than typical callbacks, so the baseline is conservative.
    """

    def __init__(self, out: Path, class_names: list[str], normalization: dict, num_thumbnails: int = 16) -> None:
        self.out = Path(out)
        self.class_names = list(class_names)
        self.mean = torch.tensor(normalization["mean"])
        self.std = torch.tensor(normalization["std"])
        self.num_thumbnails = num_thumbnails
        self.history: dict[int, dict[str, float]] = {}

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.console = Console(file=open(self.out / "console.txt", "a"), width=100)
        self.confusion = MulticlassConfusionMatrix(len(self.class_names)).to(pl_module.device)
        self.targets = find_train_targets(trainer.datamodule.train_set).labels
        counts = np.bincount(self.targets, minlength=len(self.class_names))
        self.console.print(tables.class_distribution_table(
            tables.class_distribution_rows(self.class_names, [int(c) for c in counts])))
        self.console.print(tables.model_info_table(model_summary(pl_module)))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.console.file.close()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.confusion.reset()
        self.thumbs: list[torch.Tensor] = []
        self.thumb_labels: list[torch.Tensor] = []
        self.thumb_preds: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        images, labels = batch
        with torch.no_grad():
            self.confusion.update(pl_module(images).argmax(1), labels)  # extra forward pass no. 1
            taken = sum(len(t) for t in self.thumbs)
            preds = pl_module(images).argmax(1)  # extra forward pass no. 2, for the sample grid
        if taken < self.num_thumbnails:
            need = self.num_thumbnails - taken
            mean, std = self.mean.to(images.device), self.std.to(images.device)
            self.thumbs.append(make_thumbnails(images[:need], mean, std, 64).cpu())
            self.thumb_labels.append(labels[:need].cpu())
            self.thumb_preds.append(preds[:need].cpu())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        folder = self.out / f"epoch_{epoch:03d}"
        counts = self.confusion.compute().cpu().numpy()
        write_csv(folder / "confusion_matrix.csv", ["true\\pred", *self.class_names],
                  ([n, *map(int, row)] for n, row in zip(self.class_names, counts)))
        save_figure(confusion_figures.confusion_figure(counts, self.class_names, f"Confusion matrix — epoch {epoch}"),
                    folder / "confusion_matrix.png")
        if self.thumbs:
            save_figure(sample_grid.sample_grid_figure(torch.cat(self.thumbs).numpy(), torch.cat(self.thumb_labels).tolist(),
                                                   torch.cat(self.thumb_preds).tolist(), self.class_names),
                        folder / "sample_predictions.png")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.history.setdefault(epoch, {}).update(metrics)
        loss, accuracy = history_figures.history_figures(self.history)
        save_figure(loss, self.out / "training_history" / "loss_history.png")
        save_figure(accuracy, self.out / "training_history" / "accuracy_history.png")
        sampler = find_tracking_sampler(trainer.train_dataloader)
        if sampler is not None and sampler.last_draw is not None:
            drawn = sampler.class_counts_of_draw(self.targets, len(self.class_names))
            weights = sampler.weights_per_class(self.targets, len(self.class_names))
            expected = weights / weights.sum() * len(sampler.last_draw)
            self.console.print(tables.sampler_table(
                tables.sampler_rows(self.class_names, drawn.tolist(), expected.tolist()), epoch))
        accuracy_value = float(np.trace(counts)) / max(1, int(counts.sum()))
        self.console.print(tables.epoch_summary_table("in-process", epoch, metrics, accuracy_value, 1))


def observability(config: str, request: dict, datamodule: DigitsDataModule) -> list[Callback]:
    if config == "a":
        return []
    if config in "bcds":
        from trainer_side import EmitterCallback

        # The spool stays on, as users run it, in the benchmark's temporary folder. The bare receiver
        # of (s) sends no receipts: nothing to wait for.
        return [EmitterCallback(endpoint=request["endpoint"], run=request.get("run"),
                                spool=str(Path(request["out"]) / "spool"), linger_ms=0 if config == "s" else 2000)]
    if config == "e":
        return [InProcessObservability(Path(request["out"]), list(datamodule.class_to_idx), datamodule.normalization)]
    raise ValueError(f"config must be one of a, b, c, d, e, s, got {config!r}")


class LongerEpochs(DigitsDataModule):
    """The demo data, but each training epoch draws `scale` times the training set: a longer epoch
    with the same model, the same validation, and so the same monitor work per epoch."""

    def __init__(self, scale: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        sampler = TrackingWeightedRandomSampler(loader.sampler.weights, num_samples=self.scale * loader.sampler.num_samples,
                                                generator=loader.sampler.generator)
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler)


def fit_once(config: str, request: dict) -> dict:
    scale = request.get("epoch_scale") or 1
    datamodule = (LongerEpochs(scale, batch_size=64, seed=request["seed"]) if scale > 1
                  else DigitsDataModule(batch_size=64, seed=request["seed"]))
    timer = StallTimer()
    callbacks = [*(timer.timed(cb) for cb in observability(config, request, datamodule)), timer]
    L.seed_everything(request["seed"], workers=True, verbose=False)
    model = DemoClassifier(num_classes=len(datamodule.class_to_idx))
    trainer = L.Trainer(max_epochs=request["epochs"], accelerator="cpu", devices=1, callbacks=callbacks,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, deterministic="warn",
                        limit_train_batches=request.get("train_batches") or 1.0)
    load = os.getloadavg()[0]
    peak_is_this_fit = reset_peak_rss()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    waited = runqueue_wait_s()
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    ended = time.perf_counter()
    waited = runqueue_wait_s() - waited
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    emitter = getattr(callbacks[0], "emitter", None)
    return {
        "fit_s": ended - started,
        "teardown_s": ended - timer.train_end if timer.train_end else None,
        "runqueue_wait_s": waited,
        "cpu_s": cpu_after.ru_utime + cpu_after.ru_stime - cpu.ru_utime - cpu.ru_stime,
        "stalls_s": timer.stalls,
        "boundary_hooks_s": timer.in_hooks,
        "loadavg_1min": [load, os.getloadavg()[0]],
        "rss_mb": rss_mb(),
        "peak_rss_mb": peak_rss_mb(),
        "peak_is_this_fit": peak_is_this_fit,
        "sent": None if emitter is None else emitter.sent,
        "dropped": None if emitter is None else emitter.dropped,
        "val_acc": float(trainer.callback_metrics.get("val/acc_top1", float("nan"))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="abcdes",
                        help="the configurations this process will be asked to run (their modules are imported first)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    if set(args.configs) - set("abcdes"):
        parser.error(f"--configs takes letters from abcdes, got {args.configs!r}")
    if set(args.configs) & set("bcds"):
        from trainer_side import EmitterCallback  # noqa: F401
    print("READY", json.dumps({"threads": torch.get_num_threads(), "rss_mb": rss_mb()}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request["config"] not in args.configs:
            raise SystemExit(f"fit_worker: asked for config {request['config']!r}, started for {args.configs!r}")
        result = fit_once(request["config"], request)
        print("RESULT", json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
