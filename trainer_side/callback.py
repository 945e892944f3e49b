"""EmitterCallback: the Lightning adapter. Each hook is a guard clause and one call into the Emitter."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from trainer_side import options, runinfo
from trainer_side.batches import BatchReader, missing_logits_warning
from trainer_side.collect import ValidationCollector
from trainer_side.emitter import DEFAULT_ENDPOINT, Emitter, never_raises, resolve_spool
from trainer_side.names import new_run_id
from trainer_side.protocol import smallest_label_dtype
from trainer_side.sampler import find_tracking_sampler
from trainer_side.targets import find_train_targets, within

log = logging.getLogger("trainer_side")


class EmitterCallback(Callback):
    """Ships what the monitor needs, without rendering anything or blocking the training loop.

    Args:
        endpoint: where `monitor serve` listens (`tcp://`, `ipc://` or `inproc://`); None with a spool only.
        run: the run id; None generates a readable unique one (shared by all ranks).
        class_names: class names by index; default from `datamodule.class_to_idx`, the dataset's
            `class_to_idx`/`classes`, else "0".."C-1".
        normalization: {"mean": [...], "std": [...]} used to show thumbnails; default from
            `datamodule.normalization`, else the `Normalize` in the validation dataset's transform,
            else ImageNet's (with a warning).
        num_thumbnails: how many of the first validation samples to show each epoch (0: none).
        thumbnail_size: longest side of a thumbnail in pixels.
        num_mistakes: how many of each epoch's most confident wrong predictions to show as thumbnails,
            kept on the device by every rank and merged by the monitor (0: none).
        spool: a local copy of every message, as a message log that `monitor replay` and `monitor watch`
            read (`<spool>/<run>/rank<N>.mlog`). True (default): `<trainer.default_root_dir>/monitor_spool`;
            False: none.
        queue_size: messages held while the monitor is slow or absent, beyond which they are dropped.
        linger_ms: the most that closing at the end of fit waits for the monitor to confirm that every
            message is in its log; what is not confirmed is counted in a warning that names the spool.
        chunk_size: validation samples gathered on the device before one copy to the host.
        batch_keys: where the input and the target are in a batch: positions for tuples, keys for dicts.
            None (default): positions 0 and 1 of a tuple, a dict's image/images/input(s) and
            label(s)/target(s) keys (`trainer_side.batches`).
        server_key, client_keys: ZeroMQ CURVE keys (see `monitor keygen`) when the monitor requires them.

    Raises:
        ValueError: at once, naming the argument and what is valid, for an argument that is not
            (checked in `trainer_side.options`).

    A step of this callback that fails never reaches the fit: monitoring is turned off for the run
    (one error logged, `run_end` "failed" sent with the error), and the fit goes on.
    """

    def __init__(self, endpoint: str | None = DEFAULT_ENDPOINT, run: str | None = None, *,
                 class_names: Sequence[str] | None = None, normalization: Mapping[str, Sequence[float]] | None = None,
                 num_thumbnails: int = 16, thumbnail_size: int = 64, num_mistakes: int = 16,
                 spool: str | os.PathLike | bool = True,
                 queue_size: int = 1000, linger_ms: int = 2000, chunk_size: int = 1_000_000,
                 batch_keys: tuple[int | str, int | str] | None = None, server_key: str | bytes | None = None,
                 client_keys: tuple[str | bytes, str | bytes] | None = None) -> None:
        super().__init__()
        self._delivery = options.check_delivery(endpoint, spool, queue_size, linger_ms, server_key, client_keys)
        self.run = None if run is None else options.check_run_id(run)
        self.class_names = None if class_names is None else options.check_class_names(class_names)
        self.normalization = None if normalization is None else options.check_normalization(normalization)
        self.num_thumbnails = options.check_nonneg_int(num_thumbnails, "num_thumbnails")
        self.thumbnail_size = options.check_positive_int(thumbnail_size, "thumbnail_size")
        self.num_mistakes = options.check_nonneg_int(num_mistakes, "num_mistakes")
        self.chunk_size = options.check_positive_int(chunk_size, "chunk_size")
        self.batch_keys = options.check_batch_keys(batch_keys)
        self._reset()

    def _reset(self) -> None:
        self.emitter: Emitter | None = None
        self._collector: ValidationCollector | None = None
        self._batches = BatchReader(self.batch_keys)
        self._warned_forward = False
        self._ended = False
        self._tracks_sampler = False  # the run start described the sampler, so its draws mean something

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for ddp_spawn and checkpoint callbacks: configuration only, no socket, no tensors.
        state = self.__dict__.copy()
        state.update(emitter=None, _collector=None)
        return state

    @property
    def state_key(self) -> str:
        return f"EmitterCallback[run={self.run}]"

    # --- hooks ----------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self.emitter is not None:
            return
        self._start_emitter(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.emitter is None:
            return
        self._send_run_start(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._collector is None:
            return
        self._collector.reset()

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or self._collector is None or dataloader_idx != 0:
            return
        self._collect_batch(trainer, pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._collector is None:
            return
        self._send_validation(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Epoch-level validation metrics reach callback_metrics only after the epoch-end hooks.
        if trainer.sanity_checking or self.emitter is None:
            return
        self._send_metrics(trainer, "val")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.emitter is None:
            return
        self._send_train_epoch(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.emitter is None:
            return
        status = "interrupted" if trainer.interrupted else "completed"
        self._end_run(status, None)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.emitter is None:
            return
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
        self._end_run(status, f"{type(exception).__name__}: {exception}"[:1000])

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self.emitter is None:
            return
        self.emitter.close()

    # --- helpers --------------------------------------------------------------------------------

    def _start_emitter(self, trainer: Trainer) -> None:
        run = self.run or new_run_id()
        if trainer.world_size > 1:
            run = trainer.strategy.broadcast(run, src=0)  # every rank must report under one run id
        self.run = run
        spool = resolve_spool(self._delivery.spool, Path(trainer.default_root_dir))
        self.emitter = Emitter(run=run, rank=trainer.global_rank, world_size=trainer.world_size,
                               **self._delivery._replace(spool=spool)._asdict())
        self._ended = False

    @never_raises
    def _send_run_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        train_loader = trainer.train_dataloader
        train_set = getattr(train_loader, "dataset", None)
        val_loaders = trainer.val_dataloaders
        val_loader = val_loaders[0] if isinstance(val_loaders, (list, tuple)) and val_loaders else val_loaders
        val_set = getattr(val_loader, "dataset", None)
        sources = [datamodule, runinfo.unwrap_dataset(train_set), runinfo.unwrap_dataset(val_set)]
        found = find_train_targets(train_set)
        names = runinfo.discover_class_names(self.class_names, sources)
        if names is None:
            count = runinfo.num_classes_from_model(pl_module)
            if count is None and found.labels is not None and len(found.labels):
                count = int(found.labels.max()) + 1
            if count is None:
                raise ValueError("EmitterCallback cannot tell the class count: pass class_names=[...]")
            names = [str(i) for i in range(count)]
        found = within(found, len(names))
        normalization, guessed = runinfo.discover_normalization(self.normalization, sources, val_set)
        if guessed is not None and trainer.global_rank == 0:
            log.warning("%s", guessed)
        self._collector = ValidationCollector(len(names), num_thumbnails=self.num_thumbnails if trainer.global_rank == 0
                                              else 0, thumbnail_size=self.thumbnail_size,
                                              chunk_size=self.chunk_size, normalization=normalization,
                                              num_mistakes=self.num_mistakes)
        sampler = find_tracking_sampler(train_loader)
        sampler_info = None
        targets = found.labels
        if sampler is not None and targets is not None and len(targets) == len(sampler.weights):
            sampler_info = {"type": type(sampler).__name__, "num_samples": int(sampler.num_samples),
                            "weights_per_class": sampler.weights_per_class(targets, len(names))}
        self._tracks_sampler = sampler_info is not None
        self.emitter.run_start(
            names, normalization=normalization, model=runinfo.model_summary(pl_module),
            train_targets=None if targets is None else targets.astype(smallest_label_dtype(len(names))),
            targets_missing=found.missing, sampler=sampler_info, hparams=dict(pl_module.hparams),
        )

    @never_raises
    def _collect_batch(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any) -> None:
        read = self._batches.read(batch)
        if read is None:
            return
        inputs, labels = read
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else outputs
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
            logits = self._fallback_forward(pl_module, inputs, outputs)
        images = inputs if isinstance(inputs, torch.Tensor) and self._collector.wants_images else None
        self._collector.add(logits, labels, images)
        if self._collector.chunk_ready:
            self._send_preds_chunk(trainer)

    def _fallback_forward(self, pl_module: LightningModule, inputs: Any, outputs: Any) -> torch.Tensor:
        if not self._warned_forward:
            self._warned_forward = True
            log.warning("%s", missing_logits_warning(outputs))
        with torch.no_grad():
            return pl_module(inputs)

    def _send_preds_chunk(self, trainer: Trainer) -> None:
        chunk = self._collector.take_chunk()
        if chunk is not None:
            self.emitter.preds(trainer.current_epoch, chunk[0], chunk[1], step=trainer.global_step,
                               confidence=chunk[2])

    @never_raises
    def _send_validation(self, trainer: Trainer) -> None:
        self._send_preds_chunk(trainer)
        thumbs = self._collector.take_thumbnails()
        if thumbs is not None:
            self.emitter.samples(trainer.current_epoch, thumbs.images, thumbs.labels, thumbs.preds)
        mistakes = self._collector.take_mistakes()
        if mistakes is not None:
            self.emitter.mistakes(trainer.current_epoch, mistakes.images, mistakes.labels, mistakes.preds,
                                  mistakes.confidence, top_k=self.num_mistakes)

    @never_raises
    def _send_metrics(self, trainer: Trainer, stage: str) -> None:
        values = {}
        for name, value in trainer.callback_metrics.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                values[name] = float(value.item())
            elif isinstance(value, (int, float)):
                values[name] = float(value)
        self.emitter.metrics(trainer.current_epoch, stage, values, step=trainer.global_step)

    @never_raises
    def _send_train_epoch(self, trainer: Trainer) -> None:
        indices = _rank_draw(trainer.train_dataloader) if self._tracks_sampler else None
        if indices is not None:
            self.emitter.sampled(trainer.current_epoch, indices)
        self._send_metrics(trainer, "train")
        self.emitter.epoch_end(trainer.current_epoch)

    def _end_run(self, status: str, error: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._batches.report()
        self.emitter.run_end(status, error)


def _rank_draw(train_loader: Any) -> np.ndarray | None:
    """The indices this rank trained on in the epoch that just ended, when a tracking sampler drew them."""
    sampler = find_tracking_sampler(train_loader)
    if sampler is None or sampler.last_draw is None:
        return None
    draw = sampler.last_draw
    outer = getattr(train_loader, "sampler", None)
    if isinstance(outer, torch.utils.data.DistributedSampler) and outer is not sampler:
        # Lightning's DistributedSamplerWrapper hands this rank a subset of the full draw; the parent
        # class's __iter__ gives those positions without drawing again.
        positions = np.fromiter(torch.utils.data.DistributedSampler.__iter__(outer), dtype=np.int64)
        draw = draw[positions]
    dtype = np.uint32 if len(sampler.weights) < 1 << 32 else np.uint64
    return draw.astype(dtype, copy=False)
