"""The judge of generated images: a classifier imgrec trained on the real data, whose penultimate-layer
features place real and generated images in one space (Fréchet distance, k-NN precision/recall) and whose
predictions say whether the generator drew the class it was asked for."""

import numpy as np
import torch

from imgrec.errors import ImgrecError
from imgrec.gan.quality import quality_report
from imgrec.gan.sampling import draw


class Judge:
    def __init__(self, ckpt_path: str, real_images: torch.Tensor, real_labels: torch.Tensor, class_names: list[str],
                 per_class: int = 100, k: int = 3, seed: int = 0, device: torch.device = torch.device("cpu")):
        """`real_images`: uint8 (N, C, H, W), the real set generated ones are compared with."""
        from imgrec.evaluation.inference import check_same_classes, load_trained
        from imgrec.models.backbones import last_linear

        self.trained = trained = load_trained(ckpt_path, device)
        check_same_classes(trained.class_names, class_names, f"quality.ckpt_path {ckpt_path}: the GAN's")
        shape = list(real_images.shape[1:])
        if trained.input_shape != shape:
            raise ImgrecError(f"quality.ckpt_path {ckpt_path} takes images of shape {trained.input_shape} but the GAN "
                              f"makes {shape}; judge with a classifier trained on this dataset at this size")
        if trained.task.name != "classification":
            raise ImgrecError(f"quality.ckpt_path {ckpt_path} is a {trained.task.name} checkpoint; the judge is a "
                              "classifier imgrec-train trained on the real images")
        self.class_names, self.per_class, self.k, self.seed, self.device = class_names, per_class, k, seed, device
        self.mean = torch.tensor(trained.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(trained.std, device=device).view(1, -1, 1, 1)
        self.features_in: list[torch.Tensor] = []
        # the last Linear layer's input is the feature vector: caught on the way, so one pass gives both
        _, _, head = last_linear(trained.model)
        head.register_forward_hook(lambda module, inputs, output: self.features_in.append(inputs[0].flatten(1)))
        self.real_features, _ = self.features_and_predictions(real_images)
        self.real_labels = real_labels.numpy()

    def features_and_predictions(self, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        features, predictions = [], []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size].to(self.device).float() / 255
                self.features_in.clear()
                logits = self.trained.model((batch - self.mean) / self.std)
                if len(self.features_in) != 1 or len(self.features_in[0]) != len(batch):
                    raise ImgrecError("the judge's last Linear layer is not its one classifier head (it ran "
                                      f"{len(self.features_in)} times for one batch); judge with a small_cnn or "
                                      "torchvision classifier imgrec-train trained")
                features.append(self.features_in[0].float().cpu())
                predictions.append(logits.argmax(1).cpu())
        return torch.cat(features).numpy().astype(np.float64), torch.cat(predictions).numpy()

    def measure(self, generator, device: torch.device) -> dict:
        """Measures of `per_class` images of every class drawn with the judge's own noise (the same each call)."""
        images, labels = draw(generator, self.per_class, self.seed, device)
        features, predicted = self.features_and_predictions(images)
        return quality_report(self.real_features, self.real_labels, features, labels.numpy(), predicted,
                              self.class_names, k=self.k)
