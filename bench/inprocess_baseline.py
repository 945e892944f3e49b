"""The in-process observability baseline: what the usual Lightning callbacks do, inside the training process.

Per validation batch: one extra forward pass for the confusion matrix (a torchmetrics
MulticlassConfusionMatrix on the model's device) and another for the sample grid. At every
validation epoch end: the confusion heatmap (PNG + CSV), the sample grid PNG, the loss and accuracy
history PNGs, and rich tables (sampler distribution, epoch summary) printed to a console file.
At fit start: the class distribution and model information tables.

It draws with the monitor's own builders (monitor.outputs.render), which are already faster than typical
callbacks (cell counts as glyph paths, no constrained-layout pass on the grid), so this baseline is
conservative: a naive callback would stall longer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from rich.console import Console
from torchmetrics.classification import MulticlassConfusionMatrix

from monitor.outputs.render import tables
from monitor.outputs.render.confusion_figures import confusion_figure
from monitor.outputs.render.history_figures import history_figures
from monitor.outputs.render.sample_grid import sample_grid_figure
from monitor.outputs.render.save import save_figure, write_csv
from trainer_side.collect import make_thumbnails
from trainer_side.runinfo import model_summary
from trainer_side.sampler import find_tracking_sampler
from trainer_side.targets import find_train_targets


class InProcessObservability(Callback):
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
        save_figure(confusion_figure(counts, self.class_names, f"Confusion matrix — epoch {epoch}"),
                    folder / "confusion_matrix.png")
        if self.thumbs:
            save_figure(sample_grid_figure(torch.cat(self.thumbs).numpy(), torch.cat(self.thumb_labels).tolist(),
                                                   torch.cat(self.thumb_preds).tolist(), self.class_names),
                        folder / "sample_predictions.png")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.history.setdefault(epoch, {}).update(metrics)
        loss, accuracy = history_figures(self.history)
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
