"""Eigenfaces and LBP on a face set whose file names carry the person (the Yale faces: subjectNN.x):
closed-set rank-1 with k enrolled images per person, and person-disjoint verification EER.

    python scripts/face_baselines.py ../shared/data/yalefaces --pattern 'subject(\\d+)\\.' --k 3
"""

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgrec.data.face_detection import FaceCropper
from imgrec.data.identities import identity_assignment, named_files
from imgrec.data.splits import TRAIN
from imgrec.tasks.embedding_scores import equal_error_rate, pair_scores, rank1, roc_auc
from imgrec.models.classical_faces import Eigenfaces, LBPHistograms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--pattern", default=r"subject(\d+)\.")
    parser.add_argument("--k", type=int, default=3, help="enrolled images per person (closed set)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--detect", default="haar", choices=["none", "haar"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    paths, persons = named_files(args.root, args.pattern)
    cropper = FaceCropper(args.detect, margin=0.1)
    faces, kept = [], []
    for path, person in zip(paths, persons):
        with Image.open(path) as image:
            face = cropper.crop(image.convert("L"))
        if face is not None:
            faces.append(np.asarray(face.resize((args.size, args.size), Image.Resampling.BILINEAR), np.float64))
            kept.append(person)
    faces, labels = np.stack(faces), np.array(kept)
    print(f"{len(faces)} of {len(paths)} images with a face, {len(set(labels))} people, {args.size} px, detect={args.detect}")

    rng = np.random.default_rng(args.seed)
    enrolled = np.zeros(len(labels), bool)
    for person in np.unique(labels):
        enrolled[rng.choice(np.flatnonzero(labels == person), args.k, replace=False)] = True
    # person-disjoint verification: fit on the train people, pairs among the val + test people
    assignment = identity_assignment(list(labels), "identity", 0.2, 0.2, seed=args.seed, min_images=2)
    train, held_out = assignment == TRAIN, assignment != TRAIN
    print(f"closed set: {args.k} enrolled per person, {int((~enrolled).sum())} probes; verification: fitted on "
          f"{len(set(labels[train]))} people, pairs of the other {len(set(labels[held_out]))}")
    print("| method | rank-1 | EER | ROC AUC | fit + embed s |")
    print("|---|---|---|---|---|")
    for name, method in (("eigenfaces (50, whitened)", lambda: Eigenfaces(50)), ("LBP u2 8,1 grid 7", lambda: LBPHistograms())):
        start = time.perf_counter()
        closed = method().fit(faces[enrolled])
        accuracy = rank1(closed.embed(faces[enrolled]), labels[enrolled], closed.embed(faces[~enrolled]), labels[~enrolled])
        open_set = method().fit(faces[train])
        genuine, impostor = pair_scores(open_set.embed(faces[held_out]), labels[held_out])
        seconds = time.perf_counter() - start
        print(f"| {name} | {accuracy:.4f} | {equal_error_rate(genuine, impostor).far:.4f} | "
              f"{roc_auc(genuine, impostor):.4f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
