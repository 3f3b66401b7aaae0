"""The start-up summary (issue #22): the config as a tree, the model's layer table in train.log only, and the
whole run's ETA after the first epoch."""

import logging

import torch

from imgrec.commands.train import train
from imgrec.evaluation.run_summary import announce_model, model_summary


def test_a_run_writes_its_config_tree_and_logs_the_model_line_and_an_eta(compose_cfg, tmp_path, caplog):
    caplog.set_level("INFO", logger="imgrec")
    train(compose_cfg("experiment=smoke", "trainer.max_epochs=3", "optimizer.lr=0.0025", "~logger",
                      run_dir=tmp_path / "run"))
    tree = (tmp_path / "run" / "config_tree.log").read_text()
    assert tree.startswith("config\n├── task")
    optimizer_branch = tree[tree.index("├── optimizer"):tree.index("├── scheduler")]
    assert "_target_: torch.optim.Adam" in optimizer_branch and "lr: 0.0025" in optimizer_branch
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("config (print_config=false hides this") and "lr: 0.0025" in m for m in messages)
    parameters = [m for m in messages if m.startswith("SmallCNN: ")]
    assert len(parameters) == 1 and "M multiply-adds per 16x16 image" in parameters[0]
    eta = [m for m in messages if m.startswith("about ")]
    assert len(eta) == 1 and "left for the other 2 epochs at this pace" in eta[0]  # once, after epoch 1 of 3


def test_print_config_false_keeps_the_tree_off_the_console(compose_cfg, tmp_path, caplog):
    caplog.set_level("INFO", logger="imgrec")
    train(compose_cfg("experiment=smoke", "trainer.max_epochs=1", "print_config=false", "~logger", "test=false",
                      run_dir=tmp_path / "run"))
    assert (tmp_path / "run" / "config_tree.log").is_file()
    assert not any(r.getMessage().startswith("config (") for r in caplog.records)
    assert not any(r.getMessage().startswith("about ") for r in caplog.records)  # one epoch: nothing left


def test_the_layer_table_goes_to_the_log_file_only_and_leaves_the_model_untouched(tmp_path):
    from imgrec.models.small_cnn import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(1, 10, widths=[8, 16], hidden=[], dropout=0.5).train()
    statistics_before = [b.clone() for b in model.buffers()]
    rng_before = torch.get_rng_state()
    table, mult_adds = model_summary(model, [1, 16, 16], torch.device("cpu"))
    # conv 1x8 3x3 on 16x16 + conv 8x16 3x3 on 8x8 + linear 16->10 (per_stage 2 adds their second convs)
    assert "Conv2d" in table and "Output Shape" in table and mult_adds > 8 * 9 * 16 * 16
    assert model.training and torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), statistics_before))

    log = logging.getLogger("imgrec.test_summary")
    log.setLevel("INFO")
    file_handler, console = logging.FileHandler(tmp_path / "train.log"), logging.StreamHandler()
    records: list[str] = []
    console.emit = lambda record: records.append(record.getMessage())
    log.addHandler(file_handler)
    log.addHandler(console)
    try:
        announce_model(model, [1, 16, 16], torch.device("cpu"), log)
    finally:
        log.removeHandler(file_handler)
        log.removeHandler(console)
        file_handler.close()
    written = (tmp_path / "train.log").read_text()
    assert "model summary (torchinfo, one 1x16x16 image)" in written and "Mult-Adds" in written
    assert len(records) == 1 and records[0].startswith("SmallCNN: ") and "layer table in train.log" in records[0]
