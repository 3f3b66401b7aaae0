"""An embedding network: any imgrec model whose last layer (num_classes outputs) is sized to the embedding,
its output L2-normalised, and the margin head of an ArcFace / CosFace / softmax loss kept beside it, so
the optimizer, the checkpoint, EMA and DDP see the head's weights like any other."""

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingNet(nn.Module):
    """forward(images) -> unit-length embeddings (batch, embedding_size), float32."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head  # the loss's class weights: used in training only (see EmbeddingTask.loss)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images).float(), dim=1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # inference needs no head: a checkpoint's head.* weights are left out when this net has none
        if self.head is None:
            state_dict = {key: value for key, value in state_dict.items() if not key.startswith("head.")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
