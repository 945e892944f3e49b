"""The sample-level output writer: when an epoch with sample ids is drawn, its files (predictions.npy,
changes.json|csv), the run's per_sample.csv, label_suspects.csv|png and data_map.csv|png, the
console tables, and the numbers the dashboard and TensorBoard show."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from monitor.aggregates.samples import SampleHistory, TrainingMap
from monitor.outputs import sample_files
from monitor.outputs.render.sample_figures import SUSPECT_THUMBNAILS, DataMapJob, LabelSuspectsJob, Suspect
from monitor.outputs.render.sample_tables import suspects_table, changes_table

NO_IDS_NOTE = "no sample-level files (changes, per-sample history, label suspects)"
# A training map of more ids than this is written when the run ends (or the monitor stops), not at
# every epoch: data_map.csv of a million training samples takes seconds of the pipeline thread.
DATA_MAP_EVERY_EPOCH_MAX_IDS = 200_000


class SampleOutputs:
    """Writes each run's sample-level artifacts once per drawn epoch; figures go to `renderer`,
    tables and notes to `console`. `changes[run]` is the latest changes.json content."""

    def __init__(self, renderer, console) -> None:
        self.renderer = renderer
        self.console = console
        self.changes: dict[str, dict] = {}
        self._written: dict[str, tuple[int, int]] = {}  # run -> (last val epoch, last train epoch) written
        self._told: set[str] = set()  # runs told why they have no sample-level files
        self._told_map: set[str] = set()  # runs told that their data map waits for the run's end

    def epoch(self, run, number: int, folder: Path, epoch_dir: Path) -> dict[str, float]:
        """Writes what epoch `number` added; returns its `changes/...` TensorBoard scalars (empty
        when it added no changes)."""
        val, train = self._written.get(run.run, (-1, -1))
        history: SampleHistory | None = run.samples
        scalars: dict[str, float] = {}
        if history is not None and history.latest is not None and history.latest.epoch == number > val:
            val = number
            scalars = self._validation(run, history, number, folder, epoch_dir)
        elif history is None and run.sample_ids_missing and run.run not in self._told:
            self._told.add(run.run)
            self.console.line(folder, f"run {run.run}: {NO_IDS_NOTE}: {run.sample_ids_missing}")
        training: TrainingMap | None = run.training_map
        if training is not None and training.epoch == number > train:
            if training.tracked <= DATA_MAP_EVERY_EPOCH_MAX_IDS:
                train = number
                self._training(run, training, number, folder)
            elif run.run not in self._told_map:
                self._told_map.add(run.run)
                self.console.line(folder, f"run {run.run}: {training.tracked:,} training samples tracked: data_map.csv "
                                          "and data_map.png are written when the run ends")
        self._written[run.run] = (val, train)
        return scalars

    def run_end(self, run, folder: Path) -> None:
        """Writes the data map of a run whose last training epoch has none yet (a large map)."""
        val, train = self._written.get(run.run, (-1, -1))
        training: TrainingMap | None = run.training_map
        if training is not None and training.epoch > train:
            self._training(run, training, training.epoch, folder)
            self._written[run.run] = (val, training.epoch)

    def _validation(self, run, history: SampleHistory, number: int, folder: Path, epoch_dir: Path) -> dict:
        names, class_names = partial(run.sample_names.names, "val"), run.class_names
        sample_files.write_predictions(epoch_dir, history.latest)
        scalars = {}
        if history.previous is not None:
            changes = sample_files.write_changes(epoch_dir, history.previous, history.latest, class_names, names)
            self.changes[run.run] = changes
            self.console.table(folder, partial(changes_table, changes))
            scalars = {f"changes/{key}": float(changes[key]) for key in
                       ("newly_correct", "newly_wrong", "accuracy_diff", "mcnemar_p") if changes[key] is not None}
        sample_files.write_per_sample(folder, history, class_names, names)
        rows = sample_files.write_label_suspects(folder, history, class_names, names)
        if rows:
            self.console.table(folder, partial(suspects_table, rows[:10], len(rows), number))
        suspects = tuple(Suspect(str(r[1]), str(r[2]), str(r[3]), float(r[6]), float(r[5] or "nan"))
                         for r in rows[:max(SUSPECT_THUMBNAILS, 25)])
        thumbnails = run.thumbnails_by_id
        self.renderer.submit(LabelSuspectsJob(
            folder / "label_suspects.png", suspects, tuple(thumbnails.get(int(r[0])) for r in rows[:len(suspects)]),
            f"Label suspects after epoch {number}: given label vs the model's"))
        return scalars

    def _training(self, run, training: TrainingMap, number: int, folder: Path) -> None:
        counts = sample_files.write_data_map(folder, training, run.class_names,
                                             partial(run.sample_names.names, "train"))
        self.console.line(folder, f"run {run.run}: data map after epoch {number}: " + ", ".join(
            f"{count:,} {region}" for region, count in counts.items()) + " training samples (data_map.csv)")
        _, _, mean, variability, correctness = training.rows()
        self.renderer.submit(DataMapJob(folder / "data_map.png", mean.astype("float32"),
                                        variability.astype("float32"), correctness.astype("float32"),
                                        f"Data map (Dataset Cartography) after epoch {number}"))
