"""A small class-conditional DCGAN: a generator with conditional batch norm and a projection discriminator."""

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as spectral_normed

from imgrec.errors import ImgrecError

SIZE_STARTS = range(3, 9)  # the generator's first feature map is start x start pixels
MAX_RESAMPLINGS = 5


def generator_sizes(upsamplings: int) -> list[int]:
    return [start * 2**upsamplings for start in SIZE_STARTS]


def check_resamplings(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_RESAMPLINGS:
        raise ImgrecError(
            f"{name}={value!r} must be a whole number in 1..{MAX_RESAMPLINGS}, e.g. {name}=2 for 28 px images")
    return value


def check_image_size(image_size: int, upsamplings: int) -> int:
    """The start size the generator grows into `image_size`, or an error listing the sizes it can make."""
    check_resamplings(upsamplings, "gan.upsamplings")
    sizes = generator_sizes(upsamplings)
    if image_size not in sizes:
        raise ImgrecError(
            f"dataset.image_size={image_size!r} cannot be made by the generator with "
            f"gan.upsamplings={upsamplings}: it makes {', '.join(map(str, sizes))} "
            f"({2**upsamplings} x a start of {SIZE_STARTS[0]}..{SIZE_STARTS[-1]} px); "
            f"set dataset.image_size to one of them, or change gan.upsamplings")
    return image_size // 2**upsamplings


def check_positive(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ImgrecError(f"{name}={value!r} must be a whole number >= 1")
    return value


# Weights keep PyTorch's default init rather than DCGAN's N(0, 0.02): batch norm after every generator conv and
# spectral norm on every discriminator layer set the activation scale themselves, so the init scale buys nothing.


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose per-channel gain and bias are looked up by class (de Vries et al. 2017; BigGAN)."""

    def __init__(self, num_classes: int, features: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(features, affine=False)
        self.gain = nn.Embedding(num_classes, features)
        self.bias = nn.Embedding(num_classes, features)
        nn.init.ones_(self.gain.weight)  # starts as plain batch norm; the classes pull apart as it trains
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


class UpBlock(nn.Module):
    def __init__(self, num_classes: int, in_features: int, out_features: int):
        super().__init__()
        self.norm = ConditionalBatchNorm2d(num_classes, in_features)
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(x, labels))
        # Nearest upsample + conv instead of a transposed conv: no checkerboard artefacts (Odena et al. 2016)
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """z (N, latent_dim) and labels (N,) -> images (N, channels, image_size, image_size) in [-1, 1].

    The label is concatenated to z as a learned embedding and also sets every block's batch-norm gain and bias:
    the embedding conditions the image from the first step, when the conditional norms are still plain batch norm.
    """

    def __init__(self, num_classes: int, channels: int, image_size: int, latent_dim: int = 64, width: int = 128,
                 upsamplings: int = 2):
        super().__init__()
        for name, value in (("dataset.num_classes", num_classes), ("dataset.channels", channels),
                            ("gan.latent_dim", latent_dim), ("gan.width", width)):
            check_positive(value, name)
        self.start = check_image_size(image_size, upsamplings)
        self.latent_dim, self.num_classes, self.channels = latent_dim, num_classes, channels
        self.image_size, self.width = image_size, width
        self.class_embedding = nn.Embedding(num_classes, latent_dim)
        self.stem = nn.Linear(2 * latent_dim, width * self.start * self.start)
        features = [width]
        for _ in range(upsamplings):
            features.append(max(features[-1] // 2, 16))
        self.blocks = nn.ModuleList(UpBlock(num_classes, a, b) for a, b in zip(features, features[1:]))
        self.head = nn.Sequential(nn.BatchNorm2d(features[-1]), nn.ReLU(),
                                  nn.Conv2d(features[-1], channels, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.stem(torch.cat([z, self.class_embedding(labels)], dim=1))
        x = x.view(len(z), self.width, self.start, self.start)
        for block in self.blocks:
            x = block(x, labels)
        return self.head(x)


class Discriminator(nn.Module):
    """images (N, C, H, W) and labels (N,) -> real/fake logits (N,), with the class projection term of
    Miyato & Koyama 2018 (cGANs with Projection Discriminator): logits = linear(h) + <embed(y), h>.

    No batch norm: spectral norm on every layer (Miyato et al. 2018) keeps D Lipschitz instead. With `batch_std`
    (the default) one feature is the spread of the batch, so a batch of copies is told from real data.
    """

    def __init__(self, num_classes: int, channels: int, image_size: int, width: int = 128, downsamplings: int = 2,
                 spectral_norm: bool = True, batch_std: bool = True):
        super().__init__()
        for name, value in (("dataset.num_classes", num_classes), ("dataset.channels", channels),
                            ("dataset.image_size", image_size), ("gan.width", width)):
            check_positive(value, name)
        check_resamplings(downsamplings, "gan.upsamplings")
        if image_size < 2**downsamplings:
            raise ImgrecError(f"dataset.image_size={image_size} is too small for "
                              f"gan.upsamplings={downsamplings}; use at least {2**downsamplings} px "
                              f"or fewer downsamplings")
        normed = spectral_normed if spectral_norm else (lambda layer: layer)
        features = [max(width // 2**downsamplings, 16)]
        for _ in range(downsamplings):
            features.append(min(features[-1] * 2, width))
        layers = [normed(nn.Conv2d(channels, features[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for a, b in zip(features, features[1:]):
            layers += [normed(nn.Conv2d(a, b, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.batch_std = batch_std
        if batch_std:  # one more conv that also sees how much the batch varies (below)
            self.features_with_std = nn.Sequential(
                normed(nn.Conv2d(features[-1] + 1, features[-1], 3, padding=1)), nn.LeakyReLU(0.2))
        self.linear = normed(nn.Linear(features[-1], 1))
        self.class_embedding = normed(nn.Embedding(num_classes, features[-1]))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Sum, not mean, pooling (as SNGAN): with every layer spectrally normed, a mean would keep the logits
        # too small to reach the hinge loss's margin of 1
        h = self.features(images)
        if self.batch_std:
            # minibatch standard deviation (Karras et al. 2018, ProGAN): the spread of the features over the
            # batch as one extra channel, so a generator that draws one image per class (measured: it did,
            # within 1,500 steps, on 100 Fashion-MNIST images per class) is easy to tell from real data
            spread = h.float().std(dim=0, unbiased=False).mean().to(h.dtype)
            h = self.features_with_std(torch.cat([h, spread.expand(len(h), 1, *h.shape[2:])], dim=1))
        h = h.sum(dim=(2, 3))
        return self.linear(h).squeeze(1) + (self.class_embedding(labels) * h).sum(dim=1)
