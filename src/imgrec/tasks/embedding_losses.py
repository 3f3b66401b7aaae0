"""The losses an embedding trains with, from pytorch-metric-learning (tested against the papers' numbers
there, so not rewritten here). Margins are given in the papers' own units: ArcFace's additive angular
margin in radians (0.5), CosFace's additive cosine margin (0.35)."""

import math

import torch
from torch import nn

from imgrec.errors import ImgrecError
from imgrec.values import is_number

NAMES = ("arcface", "cosface", "softmax", "triplet", "multi_similarity")
HEADED = ("arcface", "cosface", "softmax")  # a weight row per training person: trained with the model
DEFAULTS = {"name": "arcface", "margin": None, "scale": 30.0, "temperature": 0.05, "miner": "auto"}
USUAL_MARGIN = {"arcface": 0.5, "cosface": 0.35, "triplet": 0.05}


class EmbeddingLoss(nn.Module):
    """loss(embeddings, person ids); `head` holds the class weights of the margin and softmax losses."""

    def __init__(self, settings: dict, num_people: int, embedding_size: int):
        from pytorch_metric_learning import losses, miners

        super().__init__()
        settings = self.check(settings)
        name, margin = settings["name"], settings["margin"]
        margin = USUAL_MARGIN.get(name) if margin is None else margin
        self.head: nn.Module | None = None
        self.miner = None
        if name == "arcface":  # pytorch-metric-learning takes the angle in degrees
            self.head = losses.ArcFaceLoss(num_people, embedding_size, margin=math.degrees(margin),
                                           scale=settings["scale"])
        elif name == "cosface":
            self.head = losses.CosFaceLoss(num_people, embedding_size, margin=margin, scale=settings["scale"])
        elif name == "softmax":
            self.head = losses.NormalizedSoftmaxLoss(num_people, embedding_size, temperature=settings["temperature"])
        elif name == "triplet":
            self.pair_loss = losses.TripletMarginLoss(margin=margin)
            if settings["miner"] != "none":  # the hardest useful triplets: closer negatives than the margin allows
                self.miner = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")
        else:
            self.pair_loss = losses.MultiSimilarityLoss()
            if settings["miner"] != "none":
                self.miner = miners.MultiSimilarityMiner()

    @staticmethod
    def check(settings: dict) -> dict:
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise ImgrecError(f"task.loss has unknown key(s) {unknown}; it takes {sorted(DEFAULTS)}")
        settings = {**DEFAULTS, **settings}
        if settings["name"] not in NAMES:
            raise ImgrecError(f"task.loss.name={settings['name']!r} must be one of {', '.join(NAMES)}")
        margin = settings["margin"]
        if margin is not None and (not is_number(margin) or not 0 <= margin < (math.pi / 2 if settings["name"] ==
                                                                               "arcface" else 2)):
            raise ImgrecError(f"task.loss.margin={margin!r} must be null (the loss's usual) or a number >= 0 (arcface: "
                              "radians below pi/2, e.g. 0.5; cosface 0.35; triplet 0.05)")
        if settings["name"] == "multi_similarity" and margin is not None:
            raise ImgrecError("task.loss.margin does not apply to multi_similarity; leave it null")
        for key in ("scale", "temperature"):
            if not is_number(settings[key]) or settings[key] <= 0:
                raise ImgrecError(f"task.loss.{key}={settings[key]!r} must be a number > 0")
        if settings["miner"] not in ("auto", "none"):
            raise ImgrecError(f"task.loss.miner={settings['miner']!r} must be auto (the loss's own miner) or none")
        return settings

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return self.head(embeddings, labels)
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.pair_loss(embeddings, labels, pairs)
