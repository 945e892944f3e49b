"""GPU check (prepared for a CUDA machine): fit time of (a), (b), (e) on CUDA, and no per-batch host sync.

1. Synchronization: one demo fit on CUDA with EmitterCallback, where every per-batch and per-epoch
   hook of the callback runs under torch.cuda.set_sync_debug_mode("error"), so any implicit
   device->host synchronization inside a hook raises. The callback's designed host copy (one per
   validation epoch, in on_validation_epoch_end) is counted separately: it is allowed there only.
2. Fit time, interleaved a b e, a b e, ... on CUDA: (a) no observability, (b) EmitterCallback with a
   live `monitor serve`, (e) the in-process baseline (bench/fit_worker.py).

Exits 0 with a clear message when CUDA is absent.

    python -m bench.gpu_check [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import MonitorProcess, add_common_args, median, print_table, write_json

PER_BATCH_HOOKS = ("on_validation_batch_end", "on_validation_epoch_start", "on_validation_end", "on_train_batch_end",
                   "on_train_epoch_start")
# Where the host copies are designed to happen: once per validation epoch, once per training epoch (track_train).
EPOCH_COPY_HOOKS = ("on_validation_epoch_end", "on_train_epoch_end")


def strict_sync(callback: Any, errors: list[str]) -> None:
    """Runs the callback's hooks with sync debug mode "error"; records (not raises) what synchronized."""
    import torch

    for name in PER_BATCH_HOOKS + EPOCH_COPY_HOOKS:
        original = getattr(callback, name)

        def hook(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            mode = "error" if _name in PER_BATCH_HOOKS else "warn"
            torch.cuda.set_sync_debug_mode(mode)
            try:
                return _original(*args, **kwargs)
            except RuntimeError as exc:
                errors.append(f"{_name}: {exc}".splitlines()[0])
            finally:
                torch.cuda.set_sync_debug_mode("default")

        setattr(callback, name, hook)


def fit(config: str, endpoint: str | None, out: Path, epochs: int, sync_errors: list[str] | None = None) -> float:
    import lightning as L

    from bench.fit_worker import InProcessObservability
    from trainer_side import EmitterCallback
    from trainer_side.demo import DemoClassifier, DigitsDataModule

    # The synchronization check also tracks the training set (track_train), whose batches carry ids.
    datamodule = DigitsDataModule(batch_size=64, seed=0, indexed_train=sync_errors is not None)
    callbacks = []
    if config == "b":
        callbacks.append(EmitterCallback(endpoint=endpoint, run=f"gpu-{time.time_ns()}", spool=str(out / "spool"),
                                         track_train=sync_errors is not None))
        if sync_errors is not None:
            strict_sync(callbacks[0], sync_errors)
    elif config == "e":
        callbacks.append(InProcessObservability(out, list(datamodule.class_to_idx), datamodule.normalization))
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cuda", devices=1, callbacks=callbacks, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    started = time.perf_counter()
    trainer.fit(DemoClassifier(num_classes=10), datamodule=datamodule)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine (torch.cuda.is_available() is False); "
              "nothing to measure. Run it on a machine with an NVIDIA GPU.")
        return 0
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    epochs, rounds = (2, 2) if args.quick else (3, 5)
    times: dict[str, list[float]] = {"a": [], "b": [], "e": []}
    sync_errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp, MonitorProcess(Path(tmp) / "monitor") as monitor:
        monitor.wait_idle()
        fit("b", monitor.endpoint, Path(tmp) / "sync", 2, sync_errors)
        for round_index in range(rounds + 1):  # round 0 warms up CUDA and cuDNN
            for config in times:
                seconds = fit(config, monitor.endpoint, Path(tmp) / f"e{round_index}", epochs)
                monitor.wait_idle()
                if round_index:
                    times[config].append(seconds)
    print(f"device: {torch.cuda.get_device_name(0)}")
    print_table("Synchronization inside EmitterCallback hooks (sync debug mode 'error')", ["result", "detail"],
                [["no per-batch synchronization" if not sync_errors else "SYNCHRONIZED", "; ".join(sync_errors[:5])]])
    print_table(f"Fit on CUDA, demo digits, {epochs} epochs, median of {rounds} interleaved runs",
                ["config", "fit s", "ratio to (a)"],
                [[name, median(t), median([x / a for x, a in zip(t, times["a"])])] for name, t in
                 (("(a) no observability", times["a"]), ("(b) emitter, live monitor", times["b"]),
                  ("(e) in-process callbacks", times["e"]))])
    write_json(args.json, {"device": torch.cuda.get_device_name(0), "times": times, "sync_errors": sync_errors})
    return 1 if sync_errors else 0


if __name__ == "__main__":
    sys.exit(main())
