"""Experiment loggers: TensorBoard, CSV, and several at once (MLflow's is mlflow_logger.py). TensorBoard is
imported only when its logger is actually built."""

import hashlib
from pathlib import Path

from imgrec.errors import ImgrecError


def command_line_overrides() -> list[str]:
    """The Hydra overrides this run was started with (`optimizer=sgd`, `optimizer.lr=0.1`); [] outside a run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not inside a Hydra run (called from Python)
        return []


def default_run_name() -> str:
    """The run's command-line overrides (what makes it differ from the others in a sweep) as a folder name,
    so TensorBoard lists `0/tensorboard/optimizer=sgd,optimizer.lr=0.1`, not `0/tensorboard`."""
    overrides = [o for o in command_line_overrides()
                 if not o.lstrip("+~").startswith(("ckpt_path=", "hparams_search="))]
    name = ",".join(overrides).replace("/", "_").replace("\\", "_") or "defaults"
    if len(name) > 100:  # folder names have limits; the hash keeps long ones apart
        name = f"{name[:90]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name.lstrip(".")


class Logger:
    """What the trainer and imgrec-train call on a logger; each method a no-op here, so a logger implements
    only what its backend keeps."""

    def start(self, params: dict) -> None:
        """Once, before the first epoch: the run's settings (flattened `group.key: value`, as hyperparameters())."""

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = True) -> None: ...

    def log_hyperparams(self, params: dict, metric_tags: list[str]) -> None:
        """After the test: the settings again with the metric tags the run logged (TensorBoard's HPARAMS tab)."""

    def log_image(self, tag: str, image, step: int) -> None: ...

    def log_pr_curve(self, tag: str, positives, scores, step: int) -> None: ...

    def log_artifacts(self, paths: list) -> None:
        """After the test: files worth keeping with the run (test_report.json, best.pt)."""

    def close(self) -> None: ...


class TensorBoardLogger(Logger):
    """Scalars per epoch (and the training loss every few steps), images, PR curves, and the run's
    hyperparameters for the HPARAMS tab, pointing at the scalars already logged."""

    def __init__(self, log_dir: str, run_name: str | None = None):
        from torch.utils.tensorboard import SummaryWriter  # slow import: keep it off `--help`

        self.log_dir = Path(log_dir) / (run_name or default_run_name())
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = True) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, global_step=step)
        if flush:
            self.writer.flush()

    def log_hyperparams(self, params: dict, metric_tags: list[str]) -> None:
        """`params` in the order the HPARAMS table shows them (swept ones first); `metric_tags` name scalars
        this run already logged (val/acc, test/acc ...): no extra single-point charts are written."""
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summaries(params, metric_tags):
            file_writer.add_summary(summary)
        self.writer.flush()

    def log_image(self, tag: str, image, step: int) -> None:
        """A Pillow image (imgrec.evaluation.rasters draws the confusion matrix and error grid as these)."""
        import numpy as np

        self.writer.add_image(tag, np.asarray(image.convert("RGB")), global_step=step, dataformats="HWC")
        self.writer.flush()

    def log_pr_curve(self, tag: str, positives, scores, step: int) -> None:
        self.writer.add_pr_curve(tag, positives, scores, global_step=step)

    def close(self) -> None:
        self.writer.close()


def hparams_summaries(params: dict, metric_tags: list[str]) -> list:
    """The HParams plugin's three records (experiment, session start, session end). Written here rather than
    with SummaryWriter.add_hparams, which also writes every metric again as a one-point chart in a sub-run
    and stores booleans as 0/1."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.api_pb2 import DataType, Experiment, HParamInfo, MetricInfo, MetricName, Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo

    start = SessionStartInfo()
    infos = []
    for name, value in params.items():
        if isinstance(value, bool):
            start.hparams[name].bool_value = value
            kind = "DATA_TYPE_BOOL"
        elif isinstance(value, (int, float)):
            start.hparams[name].number_value = value
            kind = "DATA_TYPE_FLOAT64"
        else:
            start.hparams[name].string_value = "null" if value is None else str(value)
            kind = "DATA_TYPE_STRING"
        infos.append(HParamInfo(name=name, type=DataType.Value(kind)))
    experiment = Experiment(hparam_infos=infos, metric_infos=[MetricInfo(name=MetricName(tag=t)) for t in metric_tags])
    end = SessionEndInfo(status=Status.Value("STATUS_SUCCESS"))

    def summary(tag: str, **content) -> Summary:
        data = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content).SerializeToString()
        plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data)
        return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])

    return [summary(metadata.EXPERIMENT_TAG, experiment=experiment),
            summary(metadata.SESSION_START_INFO_TAG, session_start_info=start),
            summary(metadata.SESSION_END_INFO_TAG, session_end_info=end)]


class CSVLogger(Logger):
    """metrics.csv in the run dir, one row per epoch (`step` is the epoch) and a column per metric, for plotting
    with pandas: `pd.read_csv("metrics.csv", index_col="step")`. A metric first seen late (test/acc, logged at
    the last epoch) adds a column: the file is rewritten with every column (it is small). Metrics logged by
    optimizer step (names ending `_step`, as train/loss_step) go to metrics_steps.csv, so neither file mixes
    its step axis with the other's."""

    def __init__(self, path: str):
        self.by_epoch = CSVTable(Path(path))
        self.by_step = CSVTable(self.by_epoch.path.with_name(f"{self.by_epoch.path.stem}_steps.csv"))

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = True) -> None:
        for table, chosen in ((self.by_epoch, False), (self.by_step, True)):
            rows = {name: value for name, value in metrics.items() if name.endswith("_step") == chosen}
            if rows:
                table.add(step, rows)


class CSVTable:
    """A CSV file of rows keyed by step: a new row is appended; new columns or more values for the last row
    rewrite the file. A file already there (a run resumed into its own folder) is continued."""

    def __init__(self, path: Path):
        import csv

        self.path = path
        try:  # a folder that cannot be made or written stops the run now, not after its first epoch
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a"):
                pass
        except OSError as error:
            raise ImgrecError(f"logger.path={path}: cannot write there ({error.strerror or error}); choose a writable "
                              "folder (the default is the run dir)") from error
        self.rows: dict[int, dict[str, float]] = {}
        self.columns: list[str] = []
        if path.is_file():
            with path.open(newline="") as file:
                for row in csv.DictReader(file):
                    self.rows[int(row.pop("step"))] = {k: float(v) for k, v in row.items() if v not in ("", None)}
                    self.columns += [k for k in row if k not in self.columns]

    def add(self, step: int, metrics: dict[str, float]) -> None:
        new_columns = [name for name in metrics if name not in self.columns]
        appends = step not in self.rows and (not self.rows or step > max(self.rows)) and not new_columns
        self.rows.setdefault(step, {}).update(metrics)
        self.columns += new_columns
        self._write(only_step=step if appends else None)

    def _write(self, only_step: int | None) -> None:
        import csv

        self.path.parent.mkdir(parents=True, exist_ok=True)
        steps = [only_step] if only_step is not None else sorted(self.rows)
        with self.path.open("a" if only_step is not None else "w", newline="") as file:
            writer = csv.writer(file)
            if only_step is None:
                writer.writerow(["step", *self.columns])
            for step in steps:  # repr-exact floats (csv writes str(float)); a missing value is an empty cell
                writer.writerow([step, *(self.rows[step].get(name, "") for name in self.columns)])


class ManyLoggers(Logger):
    """Several loggers at once (logger=many: TensorBoard, MLflow and CSV): every call goes to each."""

    def __init__(self, loggers: dict[str, Logger]):
        self.loggers = [logger for logger in loggers.values() if logger is not None]

    def start(self, params: dict) -> None:
        for logger in self.loggers:
            logger.start(params)

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = True) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step, flush)

    def log_hyperparams(self, params: dict, metric_tags: list[str]) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(params, metric_tags)

    def log_image(self, tag: str, image, step: int) -> None:
        for logger in self.loggers:
            logger.log_image(tag, image, step)

    def log_pr_curve(self, tag: str, positives, scores, step: int) -> None:
        for logger in self.loggers:
            logger.log_pr_curve(tag, positives, scores, step)

    def log_artifacts(self, paths: list) -> None:
        for logger in self.loggers:
            logger.log_artifacts(paths)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
