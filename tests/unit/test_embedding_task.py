"""The embedding task's settings, losses and model wrapper, without Hydra or files."""

import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.models.embedding_net import EmbeddingNet
from imgrec.tasks.embedding import EmbeddingEvaluation, EmbeddingTask


@pytest.mark.parametrize("loss", ["arcface", "cosface", "softmax", "triplet", "multi_similarity"])
def test_every_loss_trains_the_net_and_its_head(loss):
    torch.manual_seed(0)
    task = EmbeddingTask(embedding_size=8, loss={"name": loss})
    task.bind(["p0", "p1", "p2", "held_out"], [4, 4, 4, 0])  # a held-out person gets no head row
    net = task.complete_model(torch.nn.Linear(6, 8))
    assert isinstance(net, EmbeddingNet)
    images, labels = torch.randn(12, 6), torch.arange(3).repeat(4)
    embeddings = net(images)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(12), atol=1e-6)
    loss_value = task.loss(embeddings, labels)
    loss_value.backward()
    assert loss_value.item() > 0 and net.backbone.weight.grad.abs().sum() > 0
    if loss in ("arcface", "cosface", "softmax"):
        [weight] = net.head.parameters()
        assert 3 in weight.shape and weight.grad is not None  # one row per trained person, trained with the net
    else:
        assert net.head is None


def test_inference_net_drops_the_head_weights_of_a_training_checkpoint():
    task = EmbeddingTask(embedding_size=8)
    task.bind(["p0", "p1"], [3, 3])
    trained = task.complete_model(torch.nn.Linear(6, 8))
    inference = EmbeddingTask(embedding_size=8)
    inference.bind(["p0", "p1"], None)
    net = inference.complete_model(torch.nn.Linear(6, 8))
    net.load_state_dict(trained.state_dict())
    assert torch.equal(net.backbone.weight, trained.backbone.weight) and net.head is None


@pytest.mark.parametrize("settings, message", [
    ({"name": "center"}, r"task.loss.name='center' must be one of arcface, cosface"),
    ({"name": "arcface", "margin": 2.0}, r"task.loss.margin=2.0 must be null .* radians below pi/2"),
    ({"name": "multi_similarity", "margin": 0.1}, r"margin does not apply to multi_similarity"),
    ({"scale": 0}, r"task.loss.scale=0 must be a number > 0"),
    ({"miner": "hard"}, r"task.loss.miner='hard' must be auto"),
    ({"margn": 0.3}, r"task.loss has unknown key\(s\) \['margn'\]"),
])
def test_bad_loss_settings_are_named(settings, message):
    with pytest.raises(ImgrecError, match=message):
        EmbeddingTask(loss=settings)


def test_bad_report_settings_and_sizes_are_named():
    with pytest.raises(ImgrecError, match=r"task.report.far_levels=\[0.5, 2\] must be a list of false-accept"):
        EmbeddingTask(report={"far_levels": [0.5, 2]})
    with pytest.raises(ImgrecError, match=r"task.embedding_size=1 must be a whole number >= 2"):
        EmbeddingTask(embedding_size=1)
    task = EmbeddingTask()
    with pytest.raises(ImgrecError, match=r"the train split holds 1 person"):
        task.bind(["a", "b"], [5, 0])
    with pytest.raises(ImgrecError, match=r"training people must be numbered first"):
        task.bind(["a", "b", "c"], [5, 0, 3])


def test_validation_scores_match_the_pairs():
    from sklearn.metrics import roc_auc_score

    embeddings = torch.nn.functional.normalize(torch.randn(30, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.arange(6).repeat_interleave(5)
    scores = EmbeddingEvaluation(embeddings, labels).scores("val")
    similarity = embeddings @ embeddings.T
    upper = torch.triu_indices(30, 30, 1)
    same = labels[upper[0]] == labels[upper[1]]
    assert scores["val/roc_auc"] == pytest.approx(roc_auc_score(same.numpy(), similarity[upper[0], upper[1]].numpy()))
    assert set(scores) == {"val/roc_auc", "val/eer", "val/rank1"}


def test_the_monitor_direction_and_the_report_seed_are_checked_before_any_work():
    with pytest.raises(ImgrecError,
                       match=r"task.monitor=val/eer is better lower, but task.mode=max: set task.mode=min"):
        EmbeddingTask(monitor="val/eer", mode="max")
    assert EmbeddingTask(monitor="val/eer", mode="min").mode == "min"
    with pytest.raises(ImgrecError, match=r"task.report.seed='abc' must be a whole number >= 0"):
        EmbeddingTask(report={"seed": "abc"})
    with pytest.raises(ImgrecError, match=r"^seed=1.5 must be a whole number >= 0"):
        EmbeddingTask().check_eval_settings({"seed": 1.5})
