"""What a run prints before its first epoch: the composed config as a tree (as lightning-hydra-template
does, with rich) and the model's layers, output shapes, parameters and multiply-adds (torchinfo)."""

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# the groups people change most, first; the rest follow in the config's own order
FIRST_GROUPS = ("task", "dataset", "augment", "model", "optimizer", "scheduler", "trainer", "callbacks", "logger")


def config_tree(cfg: DictConfig, width: int = 110) -> str:
    """The resolved config as a rich tree, one branch per group, rendered to plain text (no colour codes, so
    it reads the same in a terminal, a log file and a CI log)."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    order = [key for key in FIRST_GROUPS if key in cfg] + [key for key in cfg if key not in FIRST_GROUPS]
    top_level = {}
    for key in order:
        value = cfg[key]
        if isinstance(value, DictConfig):
            text = OmegaConf.to_yaml(value, resolve=True).rstrip()
            tree.add(str(key)).add(Syntax(text or "{}", "yaml", theme="ansi_dark", background_color="default"))
        else:
            top_level[key] = OmegaConf.to_container(cfg, resolve=True)[key]
    if top_level:
        tree.add("top level").add(Syntax(OmegaConf.to_yaml(OmegaConf.create(top_level)).rstrip(), "yaml",
                                         theme="ansi_dark", background_color="default"))
    console = Console(width=width, no_color=True, color_system=None, record=True, file=open("/dev/null", "w"))
    console.print(tree)
    return console.export_text()


def model_summary(model, input_shape: list[int], device) -> tuple[str, int]:
    """torchinfo's table for one image and its multiply-adds, in eval mode, without gradients and without
    touching the random number generators or batch-norm statistics (a seeded run must not notice it)."""
    import torch
    from torchinfo import summary

    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            statistics = summary(model, input_data=[torch.zeros(1, *input_shape, device=device)], device=device,
                                 col_names=("output_size", "num_params", "mult_adds"), depth=3, verbose=0,
                                 mode="eval")
        # torchinfo labels the multiply-add count with a memory unit ("Units.MEGABYTES"); it is a count (millions)
        table = str(statistics).replace("(Units.MEGABYTES)", "(millions)").replace("(Units.GIGABYTES)", "(billions)")
        return table, int(statistics.total_mult_adds)
    finally:
        model.train(was_training)


def log_to_files_only(logger: logging.Logger, message: str) -> None:
    """Write `message` into the run's log file(s) (train.log) but not the console: a long table for the record."""
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers + logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def announce_config(cfg: DictConfig, run_dir: Path, log: logging.Logger, show: bool) -> None:
    """The tree into config_tree.log, and to the console and train.log when `show` (print_config)."""
    text = config_tree(cfg)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "config_tree.log").write_text(text)
    if show:
        log.info("config (print_config=false hides this; config_tree.log keeps it):\n" + text.rstrip())


def announce_model(model, input_shape: list[int], device, log: logging.Logger) -> None:
    """One console line (parameters, multiply-adds per image); the whole table into train.log only."""
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    try:
        table, mult_adds = model_summary(model, input_shape, device)
    except Exception as error:  # a model torchinfo cannot trace still trains; the summary is a courtesy
        log.info(f"{type(model).__name__}: {parameters:,} parameters ({trainable:,} trainable); no layer table "
                 f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
        return
    log.info(f"{type(model).__name__}: {parameters:,} parameters ({trainable:,} trainable), {mult_adds / 1e6:,.1f} M "
             f"multiply-adds per {'x'.join(map(str, input_shape[1:]))} image; layer table in train.log")
    log_to_files_only(log, f"model summary (torchinfo, one {'x'.join(map(str, input_shape))} image):\n{table}")
