"""imgrec-train: compose the config, fit, then score the best checkpoint on the test split."""

import logging
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from imgrec.commands.entry import hydra_command
from imgrec.commands.train_checks import check_resume_matches, check_top_level, hyperparameters, instantiate_callbacks
from imgrec.config import build, check_tool_config
from imgrec.data.building import build_dataset
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")


def train(cfg: DictConfig) -> dict:
    """Fit and test as `cfg` says. Returns the last epoch's metrics, the best score and the test report.
    Under torchrun, each process runs this; rank 0 alone writes files."""
    from imgrec.training import distributed
    from imgrec.training.optim import check_optimizer_settings
    from imgrec.training.schedulers import check_schedule_settings

    # everything that can be checked without data is checked before data is loaded or a model is built
    check_tool_config(cfg)
    task = build(cfg.task)  # its loss and mixing settings are checked as it is built
    settings = build(cfg.trainer)  # a TrainerSettings: every loop setting checked
    task.loop_metrics = tuple(settings.loop_metrics)  # optimized_metric may name them (val/robust_acc)
    if settings.adversarial is not None:
        from imgrec.training.adversarial import check_adversarial

        check_adversarial(settings.adversarial, task.name)
    check_top_level(cfg, task)
    check_optimizer_settings(cfg.optimizer)
    check_schedule_settings(build(cfg.scheduler), settings.max_epochs)
    env, device_setting = distributed.setup(settings.device)
    if env.enabled and not task.torchrun:
        distributed.teardown(env)
        raise ImgrecError(f"task={task.name} does not run under torchrun yet: train it with one process "
                          "(imgrec-train ...), on one GPU or the CPU")
    try:
        result = _train(cfg, task, settings, env, device_setting)
        # every process leaves together: a rank that tore its process group down while rank 0 was still writing
        # the test report aborted in gloo's teardown now and then ("terminate called without an active exception")
        distributed.barrier()
        return result
    finally:
        distributed.teardown(env)


def _train(cfg: DictConfig, task, settings, env, device_setting: str) -> dict:
    from imgrec.checkpoint import load_checkpoint
    from imgrec.commands.entry import setup_objects_frozen
    from imgrec.evaluation.reports import record_dataset, record_environment
    from imgrec.evaluation.run_summary import announce_config, announce_model
    from imgrec.runtime import resolve_device
    from imgrec.training import distributed
    from imgrec.training.optim import build_optimizer
    from imgrec.training.seeding import seed_everything
    from imgrec.training.trainer import Trainer

    device = resolve_device(device_setting)
    settings.autocast_dtype(device, warn=False)  # a precision this device lacks fails before any data is read
    resume_state = load_checkpoint(cfg.ckpt_path, purpose="resume") if cfg.ckpt_path else None
    if resume_state is not None:
        check_resume_epochs(resume_state["epoch"], settings.max_epochs, cfg)
        for warning in check_resume_matches(resume_state["config"], cfg, cfg.ckpt_path):
            log.warning(warning)
    run_dir = Path(distributed.quiet_other_ranks(env, cfg.paths.output_dir))
    callbacks = instantiate_callbacks(cfg, task.metric_names())
    if not env.is_main:  # one process writes files: checkpoints, figures, reports, TensorBoard
        callbacks = {name: c for name, c in callbacks.items() if name not in ("model_checkpoint", "validation_figures")}
    guard_against_overwrite(callbacks, resumed=resume_state is not None)
    augment = training_augment(cfg, task)  # training batches only
    check_bad_step_check(settings, cfg.optimizer, device)
    if env.is_main:  # after the checks above, so their one-line errors are not buried under the tree
        announce_config(cfg, run_dir, log, show=cfg.get("print_config", True))

    seed_everything(cfg.seed)
    splits = build_dataset(cfg.dataset, task.name)
    check_scored_splits(splits, task, cfg.test)
    if env.is_main:
        record_dataset(splits, run_dir, log)
        record_environment(run_dir)
    if resume_state is not None and resume_state["class_names"] != splits.class_names:
        raise ImgrecError(
            f"ckpt_path {cfg.ckpt_path} was trained on classes {resume_state['class_names']} but dataset "
            f"has {splits.class_names}; resume with the dataset the checkpoint was trained on"
        )
    augment, model = bind_task_and_build_model(cfg, task, splits, augment, device)
    if env.is_main:
        announce_model(model, splits.input_shape, device, log)
    # before training: a logger whose store or folder cannot be used stops the run before any epoch is spent
    logger = build(cfg.logger) if cfg.get("logger") and env.is_main else None
    if logger is not None:  # the settings first, so a run that crashes later still says what it was
        logger.start(hyperparameters(cfg))
    trainer = Trainer(
        model=model, optimizer=build_optimizer(cfg.optimizer, model), scheduler=build(cfg.scheduler), task=task,
        settings=settings, callbacks=callbacks, logger=logger, device=device, dist_env=env,
        checkpoint_extras=checkpoint_extras(cfg, splits, task),
    )
    loaders = {
        split: trainer.make_loader(
            getattr(splits, split), splits.mean, splits.std, train=split == "train", seed=cfg.seed, augment=augment,
            repeats=splits.patches_per_image,
        )
        for split in ("train", "val", "test")
    }

    processes = f" x {env.world_size} processes ({env.backend})" if env.enabled else ""
    threads = torch_threads()
    log.info(f"training {type(model).__name__} on {device}{processes} ({threads} CPU thread{'s' if threads != 1 else ''}) for up to "
             f"{settings.max_epochs} epochs; run dir {run_dir}")
    if settings.adversarial is not None:
        adversarial = settings.adversarial
        validated = f"; val/robust_acc under PGD-{adversarial.val_steps}" if adversarial.val_steps else ""
        log.info(f"adversarial training: {adversarial.describe()} on {adversarial.ratio:.0%} of each batch{validated}")
    with setup_objects_frozen():
        metrics = trainer.fit(loaders["train"], loaders["val"], resume_state, cfg.ckpt_path)
    checkpoint = callbacks.get("model_checkpoint")
    best_score = checkpoint.best_score if checkpoint else None
    if env.enabled:  # rank 0's best.pt is what every process scores
        checkpoint = from_main_checkpoint(callbacks, cfg)
    report = score_best_on_test(trainer, checkpoint, loaders["test"], run_dir, env) if cfg.test else None

    if logger is not None:
        best_file = checkpoint.best_path if checkpoint is not None and checkpoint.best_path.is_file() else None
        log_final_scores(logger, cfg, trainer.epoch, metrics, report, best_score,
                         files=[path for path in (run_dir / "test_report.json", best_file) if path and path.is_file()])
    log.info(f"run saved in {run_dir.resolve()}")
    if logger is not None and writes_tensorboard(logger):
        log_dir = Path(cfg.paths.log_dir).resolve()
        # outputs/ shows every run side by side; a run placed elsewhere (hydra.run.dir=...) is shown alone
        shown = log_dir if run_dir.resolve().is_relative_to(log_dir) else run_dir.resolve()
        # `make tb` opens outputs/ from a checkout of imgrec: offered only where it would show this run
        make_tb = shown == (Path.cwd() / "outputs").resolve() and Path("Makefile").is_file()
        log.info(f"see its curves with: tensorboard --logdir {shown}" + ("   (or: make tb)" if make_tb else ""))
    best = callbacks.get("model_checkpoint")
    return {"metrics": metrics, "best_score": best_score, "test": report, "epochs": trainer.epoch,
            "best_epoch": best.best_epoch if best else None, "best_metrics": best.best_metrics if best else {}}


def check_scored_splits(splits, task, test: bool) -> None:
    for name in ("val", "test") if test else ("val",):
        if len(getattr(splits, name)) == 0:
            face_hint = (" (a face set: dataset.split_by=identity or image; split_by=none is for scoring a folder "
                         "whole with imgrec-eval)") if task.name == "embedding" else ""
            raise ImgrecError(f"the dataset's {name} split is empty and imgrec-train scores on it: raise "
                              f"dataset.{name}_fraction{face_hint}, or add images")


def bind_task_and_build_model(cfg: DictConfig, task, splits, augment, device):
    """Tell the task its classes, build the model on `device` and check that it fits the data's input. Returns
    the augmentation (with patch sampling when the dataset cuts patches) and the model."""
    from imgrec.data.augment import with_patches
    from imgrec.models.checks import check_model_fits

    task.bind(splits.class_names, splits.class_counts("train"))
    augment = with_patches(augment, splits.patch_size)
    model = build(cfg.model, in_channels=splits.channels, num_classes=task.num_outputs(len(splits.class_names))).to(device)
    model = task.complete_model(model).to(device)
    output = check_model_fits(model, cfg.model, splits.input_shape, device)
    task.check_output(output, f"model={chosen_config('model')} ({cfg.model._target_.rsplit('.', 1)[-1]})")
    return augment, model


def check_bad_step_check(settings, optimizer_cfg: DictConfig, device) -> None:
    """trainer.bad_step_check=deferred needs a fused Adam/AdamW/SGD (training.guard.make_guard): refused here,
    before any data is read, rather than when the Trainer is built."""
    from imgrec.training.optim import FUSED_ON_CUDA

    if settings.bad_step_check != "deferred" or settings.max_bad_steps is None:
        return
    target = optimizer_cfg.get("_target_")
    fused = optimizer_cfg.get("fused") or (device.type == "cuda" and optimizer_cfg.get("fused") is None
                                           and optimizer_cfg.get("foreach") is None)
    if settings.precision in ("16-mixed", "16", 16):
        raise ImgrecError("trainer.bad_step_check=deferred cannot be used with trainer.precision=16-mixed (its "
                          "GradScaler checks its own steps); use trainer.bad_step_check=auto")
    if target not in FUSED_ON_CUDA or not fused or optimizer_cfg.get("dampening"):
        raise ImgrecError(f"trainer.bad_step_check=deferred needs a fused step: {target} here does not run one (adam, "
                          "adamw and sgd without dampening can: add +optimizer.fused=true, which imgrec sets itself on "
                          "CUDA); or use trainer.bad_step_check=auto")


def writes_tensorboard(logger) -> bool:
    """Whether the "see its curves with: tensorboard" hint applies (not to logger=csv or logger=mlflow alone)."""
    from imgrec.training.loggers import TensorBoardLogger

    return any(isinstance(one, TensorBoardLogger) for one in getattr(logger, "loggers", [logger]))


def training_augment(cfg: DictConfig, task):
    """The `augment` group's batch pipeline, or for detection the `box_augment` group's per-image one, which
    moves boxes with their image; each refused where it would do the wrong thing."""
    from imgrec.data.augment import build_augment
    from imgrec.data.box_augment import build_box_augment

    augment = build_augment(cfg.get("augment"), masks=task.spatial_output)
    box_augment = cfg.get("box_augment")
    if task.name != "detection":
        if box_augment is not None:
            raise ImgrecError(f"box_augment moves detection boxes; task={task.name} has none: use augment=... instead "
                              "(or leave box_augment unset)")
        return augment
    if augment is not None:
        raise ImgrecError(f"augment={chosen_config('augment')} transforms pixels without moving boxes; for task=detection "
                          "use box_augment=detection_basic or detection_classic (and augment=none)")
    return build_box_augment(None if box_augment is None else OmegaConf.to_container(box_augment, resolve=True))


def chosen_config(group: str) -> str:
    """The file a Hydra config group was given (augment=basic -> basic), or `...` outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group, "...") if HydraConfig.initialized() else "..."


def check_resume_epochs(saved_epoch: int, max_epochs: int, cfg: DictConfig) -> None:
    if saved_epoch > max_epochs:
        raise ImgrecError(
            f"ckpt_path {cfg.ckpt_path} has already trained {saved_epoch} epochs and trainer.max_epochs={max_epochs}, "
            f"so there is nothing left to train: raise trainer.max_epochs (e.g. trainer.max_epochs={saved_epoch + 10}) "
            "to train on, or score it with imgrec-eval ckpt_path=..."
        )
    if saved_epoch == max_epochs:  # stopped after its last epoch: only the test is left
        log.warning(f"ckpt_path {cfg.ckpt_path} has trained all {max_epochs} epochs: nothing is left to train"
                    + ("; scoring best.pt on the test split" if cfg.test else "")
                    + " (raise trainer.max_epochs to train longer)")


def checkpoint_extras(cfg: DictConfig, splits, task) -> dict:
    """What every checkpoint holds besides the training state: the config (as plain containers, safe to load
    back) and what inference needs without the dataset: class names, normalisation, input shape."""
    stored_config = OmegaConf.to_container(cfg, resolve=True)
    # the sizes the model was built with (the config may leave them to the dataset: num_classes null)
    stored_config["model"].update(in_channels=splits.channels, num_classes=task.num_outputs(len(splits.class_names)))
    # the data's folder and CSV as absolute paths: eval and predict may run from another working directory
    dataset = stored_config.get("dataset") or {}
    for key in ("root", "file"):
        if isinstance(dataset.get(key), str) and "://" not in dataset[key]:
            dataset[key] = str(Path(dataset[key]).expanduser().absolute())
    return {
        "config": stored_config,
        "class_names": splits.class_names,
        "class_to_idx": {name: index for index, name in enumerate(splits.class_names)},
        "normalization": {"mean": splits.mean, "std": splits.std},
        "input_shape": splits.input_shape,
        # the generated images mixed into train (dataset.synthetic): how many, from where, at which ratio
        **({"synthetic": splits.synthetic} if getattr(splits, "synthetic", None) else {}),
    }


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def from_main_checkpoint(callbacks: dict, cfg: DictConfig):
    """Rank 0's ModelCheckpoint (its best.pt path), as every process needs to load it for the test."""
    from imgrec.training import distributed

    distributed.barrier()  # rank 0 has finished writing
    return distributed.from_main(callbacks.get("model_checkpoint"))


def score_best_on_test(trainer, checkpoint, test_loader, run_dir: Path, env=None) -> dict | None:
    """Score best.pt (or the final weights when there is none) on the test split and write the task's report."""
    from imgrec.checkpoint import load_checkpoint
    from imgrec.evaluation.reports import write_report

    if checkpoint is not None and checkpoint.best_path.is_file():
        trainer.eval_model.load_state_dict(load_checkpoint(checkpoint.best_path)["model"])
        source = f"best.pt (epoch {checkpoint.best_epoch}, {checkpoint.monitor} {checkpoint.best_score:.4f})"
    else:
        source = "the final weights (no best.pt was written)"
    every = getattr(getattr(test_loader, "sampler", None), "total", test_loader.num_samples)  # all processes' share
    log.info(f"testing {source} on {every} test images")
    evaluation = trainer.predict(test_loader)  # under DDP: gathered from every process
    if env is not None and not env.is_main:
        return None
    report = trainer.task.test_report(evaluation, getattr(test_loader.data, "paths", None))
    write_report(report, run_dir, "test_report.json", log)
    return report.summary


def log_final_scores(logger, cfg: DictConfig, epoch: int, metrics: dict, report: dict | None, best_score,
                     files=()) -> None:
    """Test scores and the best score as scalars, then the hyperparameters for the HPARAMS tab, pointing at
    those scalars and at the last epoch's; `files` (the test report, best.pt) to loggers that keep artifacts."""
    scores = {f"test/{name}": value for name, value in report["scores"].items()} if report else {}
    if best_score is not None:
        scores[f"best/{cfg.optimized_metric}"] = best_score
    logger.log_metrics(scores, step=epoch)
    logger.log_hyperparams(hyperparameters(cfg), [*metrics, *scores])
    logger.log_artifacts(list(files))
    logger.close()


def guard_against_overwrite(callbacks: dict, resumed: bool) -> None:
    """A fresh run never writes over another run's checkpoints (a shared callbacks.model_checkpoint.dirpath,
    two runs started in the same second)."""
    checkpoint = callbacks.get("model_checkpoint")
    if resumed or checkpoint is None:
        return
    if checkpoint.last_path.exists():
        raise ImgrecError(
            f"{checkpoint.last_path} already exists and this is not a resume; pass ckpt_path={checkpoint.last_path} "
            "to continue that run, or start the new run in another directory (hydra.run.dir=...)"
        )
    taken = sorted(p.name for p in [checkpoint.best_path, *checkpoint.dirpath.glob("epoch_*.pt")] if p.exists())
    if taken:
        raise ImgrecError(f"{checkpoint.dirpath} already holds {', '.join(taken)} of another run; a new run would "
                          "overwrite them: choose another callbacks.model_checkpoint.dirpath")


def resume_command(checkpoint, command: str = "imgrec-train") -> str:
    """The command line that continues this run: its own overrides, with ckpt_path pointing at `checkpoint`."""
    import shlex

    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("ckpt_path=")]
    except ValueError:  # not inside a Hydra run (called from Python)
        overrides = []
    return " ".join([command, *(shlex.quote(o) for o in overrides), shlex.quote(f"ckpt_path={checkpoint}")])


def train_sweep_job(cfg: DictConfig) -> float | None:
    """One job of `imgrec-train -m`: an error ends this job only (recorded in job_result.json, the sweep goes
    on), a stop signal ends the sweep. Returns the score the sweeper optimises, None for a failed job."""
    import time

    from hydra.core.hydra_config import HydraConfig

    from imgrec.commands.sweeps import sweep_value, write_job_result, write_summary
    from imgrec.training.signals import TrainingInterrupted

    started, run_dir = time.perf_counter(), Path(HydraConfig.get().runtime.output_dir)
    try:
        result = train(cfg)
    except (TrainingInterrupted, KeyboardInterrupt):
        raise
    except Exception as error:  # NaN divergence, out of memory, a bad combination of options ...
        if isinstance(error, ImgrecError):
            log.error(f"error: {error}")
        else:
            log.exception(f"error: {type(error).__name__}: {error}")
        log.error("this job failed; the sweep goes on (its row in summary.csv says failed)")
        write_job_result(run_dir, cfg, time.perf_counter() - started, error=error)
        write_summary(Path(HydraConfig.get().sweep.dir))
        return None
    write_job_result(run_dir, cfg, time.perf_counter() - started, result=result)
    write_summary(Path(HydraConfig.get().sweep.dir))
    return sweep_value(result, cfg)


@hydra_command("train", task_name="train")
def main(cfg: DictConfig) -> float | None:
    from imgrec.commands.entry import pause_collection_during_setup, skip_collection_at_exit

    skip_collection_at_exit()
    pause_collection_during_setup()  # before the imports below, which bring in torch
    from imgrec.commands.sweeps import in_multirun
    from imgrec.training.signals import TrainingInterrupted

    try:
        if in_multirun():
            return train_sweep_job(cfg)
        result = train(cfg)
    except ImgrecError as error:
        log.error(f"error: {error}")
        sys.exit(2)
    except TrainingInterrupted as stop:
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for everyone
            sys.exit(stop.exit_code)
        if stop.checkpoint is None:
            log.error(f"{stop}; no model_checkpoint callback is configured, so nothing was saved")
        else:
            where = f"in epoch {stop.epoch + 1} after batch {stop.batch}" if stop.batch else f"after epoch {stop.epoch}"
            log.warning(f"{stop} {where}; saved {stop.checkpoint}. Resume with:\n  {resume_command(stop.checkpoint)}")
        sys.exit(stop.exit_code)
    return result["best_score"]  # what a sweeper optimises


if __name__ == "__main__":
    main()
