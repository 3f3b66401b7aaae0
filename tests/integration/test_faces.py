"""Face (identity) datasets and task=embedding end to end on a synthetic identity set made here: person
folders, a CSV and file-name patterns, both split modes, training, the test report and imgrec-eval."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrec.data.faces import digits_people, face_images
from imgrec.errors import ImgrecError


def person_face(person: int, image: int, size: int = 24) -> np.ndarray:
    """A grey 'face' of one person: their own fixed 6x6 pattern, enlarged, with per-image brightness and noise."""
    template = np.random.default_rng(1000 + person).integers(0, 256, (6, 6)).astype(np.float64)
    face = np.kron(template, np.ones((size // 6, size // 6)))
    rng = np.random.default_rng(person * 100 + image)
    face = face * rng.uniform(0.8, 1.2) + rng.normal(0, 12, face.shape)
    return np.clip(face, 0, 255).astype(np.uint8)


def make_people(root: Path, people: int = 8, per_person: int = 6, size: int = 24, layout: str = "folders") -> Path:
    """root/<person>/<n>.png (layout=folders) or root/personNN_<n>.png (layout=names)."""
    root.mkdir(parents=True, exist_ok=True)
    for person in range(people):
        for image in range(per_person):
            if layout == "folders":
                path = root / f"person{person:02d}" / f"{image}.png"
                path.parent.mkdir(exist_ok=True)
            else:
                path = root / f"person{person:02d}_{image}.png"
            Image.fromarray(person_face(person, image, size)).save(path)
    return root


def test_person_folders_split_by_identity_numbers_training_people_first(tmp_path):
    splits = face_images(str(make_people(tmp_path / "faces")), image_size=24, val_fraction=0.25, test_fraction=0.25)
    train_people = set(splits.train.labels.tolist())
    held_out = set(splits.val.labels.tolist()) | set(splits.test.labels.tolist())
    assert train_people == set(range(4)) and held_out == set(range(4, 8))  # 8 people: 4 train, 2 val, 2 test
    assert not train_people & held_out
    assert splits.people and splits.channels == 1 and splits.train.images.shape[1:] == (1, 24, 24)
    person_of = {Path(p).parent.name for p in splits.val.paths}
    assert person_of == {splits.class_names[i] for i in set(splits.val.labels.tolist())}


def test_split_by_image_keeps_every_person_in_every_split(tmp_path):
    splits = face_images(str(make_people(tmp_path / "faces", per_person=7)), image_size=24, split_by="image")
    for split in (splits.train, splits.val, splits.test):
        assert set(split.labels.tolist()) == set(range(8))


def test_file_name_pattern_and_csv_give_the_same_people(tmp_path):
    root = make_people(tmp_path / "named", layout="names")
    by_name = face_images(str(root), pattern=r"person(\d+)_", image_size=24)
    assert by_name.class_names[0] == "00" or sorted(by_name.class_names) == [f"{i:02d}" for i in range(8)]
    rows = "path,person\n" + "".join(f"person{p:02d}_{i}.png,p{p}\n" for p in range(8) for i in range(6))
    (tmp_path / "people.csv").write_text(rows)
    by_csv = face_images(str(root), file=str(tmp_path / "people.csv"), image_size=24)
    assert sorted(by_csv.class_names) == [f"p{p}" for p in range(8)]
    assert len(by_csv.train) + len(by_csv.val) + len(by_csv.test) == 48


def test_too_few_people_or_images_is_named(tmp_path):
    with pytest.raises(ImgrecError, match=r"split_by=image puts every person in train, val and test, which needs 5"):
        face_images(str(make_people(tmp_path / "few", per_person=3)), image_size=24, split_by="image")
    with pytest.raises(ImgrecError, match=r"3 people, 3 of them with at least 2 images: too few"):
        face_images(str(make_people(tmp_path / "three", people=3)), image_size=24)
    with pytest.raises(ImgrecError, match=r"dataset.root '.*missing' does not exist"):
        face_images(str(tmp_path / "missing"))


def test_haar_on_images_without_faces_skips_them_then_says_none_was_usable(tmp_path):
    with pytest.raises(ImgrecError,
                       match=r"none of the 48 images could be used; first: .*0.png: no face found .* try detect=none"):
        face_images(str(make_people(tmp_path / "faces")), image_size=24, detect="haar")


def test_digits_people_hold_out_whole_digits():
    splits = digits_people(image_size=8)
    assert set(splits.train.labels.tolist()).isdisjoint(splits.test.labels.tolist())
    assert len(splits.class_names) == 10


def test_embedding_run_learns_unseen_people_and_writes_its_test_report(embedding_run):
    result, run_dir, _ = embedding_run
    report = json.loads((run_dir / "test_report.json").read_text())
    assert report["people"] == 3 and report["images"] == 24  # 10 people: 3 test people of 8 images
    assert report["genuine_pairs"] == 3 * 28 and report["impostor_pairs"] == 24 * 23 // 2 - 84
    # synthetic people differ by a fixed pattern: six epochs separate people the model never saw
    assert report["roc_auc"] > 0.9 and report["eer"] < 0.2
    assert report["closed_set"]["people"] == 3 and report["closed_set"]["probes"] == 18
    assert set(report["tar_at_far"]) == {"0.01", "0.001"}
    assert result["best_metrics"]["val/roc_auc"] == pytest.approx(result["best_score"])
    classes = json.loads((run_dir / "classes.json").read_text())
    assert classes["counts"]["train"][:5] == [8] * 5 and classes["counts"]["train"][5:] == [0] * 5


def test_imgrec_eval_of_an_embedding_matches_sklearn_roc(embedding_run, tmp_path):
    from sklearn.metrics import roc_auc_score, roc_curve

    from imgrec.commands.eval import evaluate_checkpoint
    from imgrec.evaluation.inference import evaluate, load_trained
    from imgrec.data.loaders import make_loader
    from imgrec.tasks.embedding_scores import pair_scores
    from tests.conftest import tool_cfg

    _, run_dir, root = embedding_run
    best = run_dir / "checkpoints" / "best.pt"
    summary = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={best}", "device=cpu"))
    # the same pairs, scored here from the model's own embeddings with scikit-learn
    trained = load_trained(str(best), __import__("torch").device("cpu"))
    splits = face_images(str(root), image_size=24, test_fraction=0.3, detect="none")
    cpu = __import__("torch").device("cpu")
    evaluation = evaluate(trained, make_loader(splits.test, 64, trained.mean, trained.std, cpu))
    genuine, impostor = pair_scores(evaluation.embeddings.numpy(), evaluation.labels.numpy())
    labels, scores = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))], np.r_[genuine, impostor]
    assert summary["roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    far, tar, thresholds = roc_curve(labels, scores)
    written = np.loadtxt(tmp_path / "eval" / "roc.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(written[:, 1:], np.c_[far, tar], atol=1e-6)
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 1000
    assert summary["headline"] == "roc_auc" and summary["split"] == "test"


def test_an_embedding_exports_with_its_normalisation_and_without_its_head(embedding_run, tmp_path):
    from safetensors.torch import load_file

    from imgrec.commands.export import export_checkpoint
    from tests.conftest import tool_cfg

    _, run_dir, _ = embedding_run
    export_checkpoint(tool_cfg("export", tmp_path / "export", f"ckpt_path={run_dir / 'checkpoints' / 'best.pt'}",
                               "format=safetensors"))
    described = json.loads((tmp_path / "export" / "model.json").read_text())
    assert described["task"] == "embedding" and "unit-length embeddings" in described["output"]
    weights = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert weights and not any(name.startswith("head.") for name in weights)


YALE = Path(__file__).resolve().parents[3] / "shared" / "data" / "yalefaces"  # beside the checkout, when present


@pytest.mark.skipif(not YALE.is_dir(), reason="needs ../shared/data/yalefaces (not shipped with imgrec)")
def test_haar_crops_of_real_faces_are_the_same_every_run():
    first = face_images(str(YALE), pattern=r"subject(\d+)", detect="haar")
    second = face_images(str(YALE), pattern=r"subject(\d+)", detect="haar")
    assert len(first.train) + len(first.val) + len(first.test) == 164  # a face in every image
    assert all(bool((a.images == b.images).all()) for a, b in ((first.train, second.train), (first.test, second.test)))


def test_on_no_face_error_stops_at_the_first_face_less_image(tmp_path):
    with pytest.raises(ImgrecError, match=r"image '.*person00/0.png': no face found"):
        face_images(str(make_people(tmp_path / "faces")), image_size=24, detect="haar", on_no_face="error")


def test_a_folder_of_new_people_is_scored_whole_with_split_by_none(embedding_run, tmp_path):
    from imgrec.commands.eval import evaluate_checkpoint
    from imgrec.commands.train import train
    from tests.conftest import tool_cfg

    _, run_dir, _ = embedding_run
    new_people = make_people(tmp_path / "new", people=4, per_person=5)  # too few to split 2 / 2 / 2
    best = run_dir / "checkpoints" / "best.pt"
    summary = evaluate_checkpoint(tool_cfg("eval", tmp_path / "eval", f"ckpt_path={best}", "dataset=faces", f"dataset.root={new_people}", "dataset.detect=none",
                                           "dataset.split_by=none", "split=all", "enrolled_per_person=2"))
    assert summary["images"] == 20 and summary["people"] == 4 and summary["split"] == "all"
    with pytest.raises(ImgrecError, match=r"the dataset's val split is empty .* split_by=none is for scoring"):
        train(tool_cfg("train", tmp_path / "run", "task=embedding", "dataset=faces", f"dataset.root={new_people}",
                       "dataset.detect=none", "dataset.split_by=none", "dataset.image_size=24"))
