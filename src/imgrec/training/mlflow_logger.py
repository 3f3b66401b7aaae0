"""logger=mlflow: each training run as an MLflow run (settings as params, metrics by epoch, the test report and
best.pt as artifacts), in a local SQLite store under outputs/ unless a tracking server is named."""

import atexit
import logging
import re
import time
from pathlib import Path

from imgrec.errors import ImgrecError
from imgrec.evaluation.reports import source_version
from imgrec.training.loggers import Logger, command_line_overrides, default_run_name

log = logging.getLogger("imgrec")


class MLflowLogger(Logger):
    """Talks to the store through an MlflowClient of its own rather than mlflow's module-level active run, so
    runs in one process (a sweep, the tests) never write into each other. A run that ends without close() (a
    crash, an interrupt) is marked FAILED when the process exits, not left RUNNING."""

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = "imgrec", run_name: str | None = None,
                 artifact_location: str | None = None, run_dir: str | None = None, tags: dict | None = None):
        """
        Args:
            tracking_uri: `sqlite:///<path>` for a local store, `http://host:5000` for a server; None: mlflow's
                own default (MLFLOW_TRACKING_URI).
            artifact_location: where a new experiment keeps its files; None: beside a local SQLite store
                (`<its folder>/mlartifacts`), or a server's own place.
            run_dir: the run's folder, recorded as a tag (and its .hydra/ config kept as artifacts).
            tags: more tags for the run, e.g. {team: vision}.
        """
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImgrecError("logger=mlflow needs MLflow: pip install 'imgrec[mlflow]'") from None

        self.run_dir = Path(run_dir) if run_dir else None
        try:
            artifact_location = prepare_local_store(tracking_uri, artifact_location)
            self.client = MlflowClient(tracking_uri=tracking_uri)  # opens the store: a new SQLite file gets its tables
            self.run_id = self._create_run(experiment_name, run_name, artifact_location, tags or {})
        except ImgrecError:
            raise
        except Exception as error:  # an unreachable server, a folder that cannot be written, a damaged database
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            fix = "start the server, or " if (tracking_uri or "").startswith(("http://", "https://")) else ""
            raise ImgrecError(f"logger=mlflow cannot log to {tracking_uri or 'the default MLflow store'}: {reason}; "
                              f"{fix}choose another logger.tracking_uri") from None
        self.params_logged = False
        self.unsent: list = []  # metrics logged with flush=False (the loss every few steps), sent in one batch
        atexit.register(self._fail_unclosed)
        log.info(f"MLflow run {self.run_id} in experiment {experiment_name!r} at {self.client.tracking_uri}")

    def _create_run(self, experiment_name: str, run_name: str | None, artifact_location: str | None, tags: dict) -> str:
        experiment_id = self._experiment_id(experiment_name, artifact_location)
        commit, dirty = source_version()
        run_tags = {"imgrec.overrides": " ".join(command_line_overrides()),
                    **{str(key): str(value) for key, value in tags.items()}}
        if commit:  # the tag MLflow's UI shows as the run's source version
            run_tags |= {"mlflow.source.git.commit": commit, "imgrec.git_dirty": str(dirty)}
        if self.run_dir is not None:
            run_tags["imgrec.run_dir"] = str(self.run_dir.resolve())
        return self.client.create_run(experiment_id, run_name=run_name or default_run_name(), tags=run_tags).info.run_id

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException:  # a parallel sweep job created it first
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise ImgrecError(f"MLflow experiment {name!r} was deleted: restore it (mlflow experiments restore "
                              f"--experiment-id {experiment.experiment_id}) or choose another logger.experiment_name")
        return experiment.experiment_id

    def start(self, params: dict) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        values = {metric_key(name): "None" if value is None else str(value) for name, value in params.items()}
        for name, value in values.items():
            if len(value) > MAX_PARAM_VAL_LENGTH:  # MLflow refuses longer ones; the whole value is in the run dir
                note = f"... (truncated from {len(value)} characters; see .hydra/config.yaml)"
                values[name] = value[:MAX_PARAM_VAL_LENGTH - len(note)] + note
                log.warning(f"MLflow param {name} is {len(value)} characters, over MLflow's {MAX_PARAM_VAL_LENGTH}: "
                            "logged truncated")
        params_list = [Param(name, value) for name, value in values.items()]
        for first in range(0, len(params_list), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params_list[first:first + MAX_PARAMS_TAGS_PER_BATCH])
        self.params_logged = True
        hydra_dir = self.run_dir / ".hydra" if self.run_dir is not None else None
        if hydra_dir is not None and hydra_dir.is_dir():  # the composed config and overrides, to rerun from the UI
            self.client.log_artifacts(self.run_id, str(hydra_dir), artifact_path="hydra")

    def log_metrics(self, metrics: dict[str, float], step: int, flush: bool = True) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.unsent += [Metric(metric_key(name), float(value), now, step) for name, value in metrics.items()
                        if isinstance(value, (int, float))]
        if flush or len(self.unsent) >= 900:  # MLflow takes at most 1000 metrics a batch
            self._send()

    def _send(self) -> None:
        if self.unsent:
            self.client.log_batch(self.run_id, metrics=self.unsent)
            self.unsent = []

    def log_hyperparams(self, params: dict, metric_tags: list[str]) -> None:
        if not self.params_logged:  # already logged by start(); MLflow refuses a param logged twice with a change
            self.start(params)

    def log_image(self, tag: str, image, step: int) -> None:
        """Under the run's images, with a step slider in the UI (the confusion matrix, the error grid)."""
        self.client.log_image(self.run_id, image.convert("RGB"), key=metric_key(tag), step=step)

    def log_artifacts(self, paths: list) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        atexit.unregister(self._fail_unclosed)
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        self._send()
        self.client.set_terminated(self.run_id, status=status)

    def _fail_unclosed(self) -> None:
        try:
            self._end("FAILED")
        except Exception:  # the process is ending: a store that went away must not add a traceback
            pass


def prepare_local_store(tracking_uri: str | None, artifact_location: str | None) -> str | None:
    """Make a local SQLite store's folder, and return where a new experiment's artifacts go: as given, else
    `mlartifacts/` beside a SQLite file (MLflow's own default is ./mlruns under whatever directory the run
    started in), else None (a server's own place); a local path as an absolute file URI, so the UI started
    from any directory finds it."""
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        store.parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
        if artifact_location is None:
            artifact_location = str(store.parent / "mlartifacts")
    if artifact_location is not None and "://" not in artifact_location:
        artifact_location = Path(artifact_location).resolve().as_uri()
    return artifact_location


def metric_key(name: str) -> str:
    """`name` with the characters MLflow refuses in a param or metric name replaced by `_`."""
    return re.sub(r"[^/\w.\- :]", "_", name)
