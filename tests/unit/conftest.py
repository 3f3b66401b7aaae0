"""Fixtures the attack tests share."""

import pytest
import torch
from torch import nn

from imgrec.robustness.attacks import PixelModel


@pytest.fixture(scope="module")
def digits_model():
    """(PixelModel, [0, 1] images, labels): a small CNN trained 300 steps on the digits, normalised inside."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    bunch = load_digits()
    pixels = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(bunch.target)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))
    model = PixelModel(net, mean=[0.3], std=[0.4])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        batch = torch.randint(0, 1500, (64,))
        loss = nn.functional.cross_entropy(model(pixels[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = slice(1500, 1628)  # 128 images never trained on
    return model.eval(), pixels[test], labels[test]
