"""imgrec-train: compose the config, fit, then score the best checkpoint on the test split."""

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from imgrec.config import CONFIG_DIR, build, check_top_level, hyperparameters, instantiate_callbacks
from imgrec.errors import ImgrecError

log = logging.getLogger("imgrec")


def train(cfg: DictConfig) -> dict:
    """Fit and test as `cfg` says. Returns the last epoch's metrics, the test report and the best score."""
    # everything that can be checked cheaply is checked before data is loaded or a model is built
    from imgrec.checkpoint import load_checkpoint
    from imgrec.data.loaders import InMemoryLoader
    from imgrec.reporting import log_class_counts, write_test_report
    from imgrec.seeding import seed_everything
    from imgrec.trainer import check_trainer_settings, resolve_device

    check_top_level(cfg)
    settings = cfg.trainer
    check_trainer_settings(
        settings.max_epochs, settings.batch_size, settings.eval_batch_size, settings.limit_batches, settings.progress
    )
    device = resolve_device(settings.device)
    resume_state = load_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else None
    run_dir = Path(cfg.paths.output_dir)
    callbacks = instantiate_callbacks(cfg)
    guard_against_overwrite(callbacks, resumed=resume_state is not None)

    seed_everything(cfg.seed)
    splits = build(cfg.dataset)
    log_class_counts(splits, run_dir, log)
    if resume_state is not None and resume_state["class_names"] != splits.class_names:
        raise ImgrecError(
            f"ckpt_path {cfg.ckpt_path} was trained on classes {resume_state['class_names']} but dataset "
            f"has {splits.class_names}; resume with the dataset the checkpoint was trained on"
        )
    model = build(cfg.model, in_channels=splits.channels, num_classes=len(splits.class_names))
    optimizer = build(cfg.optimizer)(model.parameters())
    logger = build(cfg.logger) if cfg.get("logger") else None
    extras = {
        "config": OmegaConf.to_container(cfg, resolve=True),  # plain containers: safe to load back
        "class_names": splits.class_names,
        "normalization": {"mean": splits.mean, "std": splits.std},
        "input_shape": [splits.channels, splits.image_size, splits.image_size],
    }
    # runtime objects go to the partial, not through instantiate, which would walk into `extras`
    trainer = build(cfg.trainer, _partial_=True)(
        model=model, optimizer=optimizer, scheduler=build(cfg.scheduler),
        callbacks=callbacks, logger=logger, checkpoint_extras=extras,
    )

    def loader(split: str, train: bool) -> InMemoryLoader:
        return InMemoryLoader(
            getattr(splits, split), settings.batch_size if train else settings.eval_batch_size,
            splits.mean, splits.std, device, shuffle=train, seed=cfg.seed, limit_batches=settings.limit_batches,
        )

    log.info(f"training {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) "
             f"on {device} for up to {settings.max_epochs} epochs; run dir {run_dir}")
    metrics = trainer.fit(loader("train", True), loader("val", False), resume_state, cfg.ckpt_path)

    checkpoint = callbacks.get("model_checkpoint")
    result = {"metrics": metrics, "best_score": checkpoint.best_score if checkpoint else None, "test": None}
    if cfg.test:
        if checkpoint is not None and checkpoint.best_path.is_file():
            model.load_state_dict(load_checkpoint(checkpoint.best_path)["model"])
            source = f"best.pt (epoch {checkpoint.best_epoch}, {checkpoint.monitor} {checkpoint.best_score:.4f})"
        else:
            source = "the final weights (no best.pt was written)"
        log.info(f"testing {source} on {len(splits.test)} test images")
        logits, labels = trainer.predict(loader("test", False))
        result["test"] = write_test_report(logits, labels, splits.class_names, run_dir, log)
        if logger is not None:
            logger.log_metrics({f"test/{k}": v for k, v in result["test"]["scores"].items()}, step=trainer.epoch)
    if logger is not None:
        final = {**metrics, **({f"test/{k}": v for k, v in result["test"]["scores"].items()} if result["test"] else {})}
        logger.log_hyperparams(hyperparameters(cfg), final)
        logger.close()
    log.info(f"run saved in {run_dir.resolve()}")
    if logger is not None:
        log.info(f"see its curves with: tensorboard --logdir {Path(cfg.paths.log_dir).resolve()}   (or: make tb)")
    return result


def guard_against_overwrite(callbacks: dict, resumed: bool) -> None:
    """A fresh run never writes over another run's checkpoints (two runs started in the same second)."""
    checkpoint = callbacks.get("model_checkpoint")
    if not resumed and checkpoint is not None and checkpoint.last_path.exists():
        raise ImgrecError(
            f"{checkpoint.last_path} already exists and this is not a resume; pass ckpt_path={checkpoint.last_path} "
            "to continue that run, or start the new run in another directory (hydra.run.dir=...)"
        )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        result = train(cfg)
    except ImgrecError as error:
        log.error(f"error: {error}")
        sys.exit(2)
    return result["best_score"]  # what a sweeper optimises


if __name__ == "__main__":
    main()
