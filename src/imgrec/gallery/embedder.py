"""Face images to embeddings with a trained task=embedding checkpoint, read the way it was trained: the same
face detection and crop, size, channels and normalisation; and the model's fingerprint, which a gallery
records so that embeddings of two different models are never compared."""

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from imgrec.errors import ImgrecError
from imgrec.evaluation.inference import TrainedModel, load_trained, predict_batches

log = logging.getLogger("imgrec")


def image_files(entries) -> list[Path]:
    """Image files from a list of files, folders (their files, recursively; hidden ones aside) and globs.
    Any file is tried (face sets such as Yale's have no extensions); unreadable ones are reported."""
    import glob

    if isinstance(entries, (str, Path)):
        entries = [entries]
    found: list[Path] = []
    for entry in entries or []:
        path = Path(str(entry)).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in
                                                                                 p.relative_to(path).parts))
            if not files:
                raise ImgrecError(f"'{entry}' is an empty folder")
            found += files
        elif path.is_file():
            found.append(path)
        elif any(char in str(entry) for char in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            if not matches:
                raise ImgrecError(f"'{entry}': the pattern matches no files")
            found += matches
        else:
            raise ImgrecError(f"'{entry}': no such file or folder")
    return found


def fingerprint(trained: TrainedModel) -> str:
    """sha256 of the weights that make embeddings (the training-only margin head aside) and of how images are
    prepared for them: two checkpoints share it only when they embed every image alike."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trained.state["model"].items()):
        if name.startswith("head."):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    dataset = (trained.state.get("config") or {}).get("dataset") or {}
    preparation = {"input_shape": trained.input_shape, "mean": trained.mean, "std": trained.std,
                   **{key: dataset.get(key) for key in ("detect", "crop_margin", "min_face")}}
    digest.update(json.dumps(preparation, sort_keys=True).encode())
    return digest.hexdigest()[:32]


class FaceEmbedder:
    """embed(paths) -> unit embeddings of the images in which a face was found, and what was left out."""

    def __init__(self, trained: TrainedModel, device: torch.device, batch_size: int = 64):
        from imgrec.data.face_detection import FaceCropper

        self.trained = trained
        dataset = (self.trained.state.get("config") or {}).get("dataset") or {}
        self.cropper = FaceCropper(dataset.get("detect", "none"), dataset.get("crop_margin", 0.2),
                                   dataset.get("min_face", 0.1), on_no_face="skip")
        self.device, self.batch_size = device, batch_size
        self.fingerprint = fingerprint(self.trained)
        self.dimension = self.trained.task.embedding_size

    @classmethod
    def load(cls, ckpt_path: str, device: torch.device, batch_size: int = 64) -> "FaceEmbedder":
        trained = load_trained(ckpt_path, device)
        if trained.task.name != "embedding":
            raise ImgrecError(f"ckpt_path {ckpt_path} is a {trained.task.name} model; imgrec-gallery needs an "
                              "embedding model: imgrec-train task=embedding dataset=faces ...")
        return cls(trained, device, batch_size)

    def embed(self, paths: list[Path]) -> tuple[np.ndarray, list[Path], list[tuple[str, str]]]:
        from imgrec.data.faces import decode_faces
        from imgrec.data.loaders import make_loader
        from imgrec.data.splits import ImageTensors

        if not paths:
            return np.zeros((0, self.dimension), np.float32), [], []
        try:
            images, kept, skipped = decode_faces(paths, self.cropper, self.trained.channels, self.trained.image_size,
                                                 on_bad_image="skip")
        except ImgrecError:  # not one usable image: the caller says what that means for its action
            return np.zeros((0, self.dimension), np.float32), [], [(str(p), "no usable face") for p in paths]
        data = ImageTensors(images, torch.zeros(len(images), dtype=torch.int64))
        loader = make_loader(data, self.batch_size, self.trained.mean, self.trained.std, self.device, num_workers=0)
        vectors: list[torch.Tensor] = []
        predict_batches(self.trained.model, loader, lambda outputs, _: vectors.append(outputs.float().cpu()))
        return torch.cat(vectors).numpy(), [paths[i] for i in kept], skipped
