"""imgrec-gallery end to end on synthetic people: enrol a folder of person folders, calibrate a threshold for a
target FAR, identify and verify, refuse another model's embeddings, remove a person for good; and
imgrec-predict's embeddings and imgrec-eval's classical baselines on the same people."""

import json
import stat

import numpy as np
import pytest

from imgrec.errors import ImgrecError
from tests.conftest import tool_cfg


def run_gallery(tmp_path, name: str, *overrides: str) -> dict:
    from imgrec.commands.gallery import gallery_command

    return gallery_command(tool_cfg("gallery", tmp_path / name, "device=cpu", *overrides))


@pytest.fixture
def enrolled(embedding_run, tmp_path):
    """A gallery with the 3 test people (never trained on) enrolled from 4 images each; the rest kept as probes."""
    _, run_dir, root = embedding_run
    best = run_dir / "checkpoints" / "best.pt"
    test_people = json.loads((run_dir / "classes.json").read_text())["class_names"][7:]
    enrol_root = tmp_path / "enrol"
    for person in test_people:
        (enrol_root / person).mkdir(parents=True)
        for image in sorted((root / person).iterdir())[:4]:
            (enrol_root / person / image.name).symlink_to(image)
    gallery = tmp_path / "staff.db"
    result = run_gallery(tmp_path, "enroll", "action=enroll", f"ckpt_path={best}", f"gallery={gallery}",
                         f"folder={enrol_root}")
    return best, gallery, root, test_people, result


def test_enroll_a_folder_of_people_into_an_owner_only_file(enrolled, tmp_path):
    best, gallery, _, people, result = enrolled
    assert result["enrolled"] == {person: 4 for person in people}
    assert stat.S_IMODE(gallery.stat().st_mode) == 0o600
    listed = run_gallery(tmp_path, "list", "action=list", f"gallery={gallery}")
    assert [p["person"] for p in listed["people"]] == sorted(people) and listed["threshold"] is None


def test_calibrated_threshold_gives_the_target_far_on_the_calibration_pairs(enrolled, tmp_path):
    from imgrec.evaluation.inference import load_trained
    from imgrec.gallery.embedder import FaceEmbedder, image_files
    from imgrec.tasks.embedding_scores import pair_scores

    best, gallery, root, _, _ = enrolled
    result = run_gallery(tmp_path, "calibrate", "action=calibrate", f"ckpt_path={best}", f"gallery={gallery}",
                         f"folder={root}", "target_far=0.05")
    # the same pairs scored here: the accepted share of impostor pairs is at most the target
    import torch

    embedder = FaceEmbedder(load_trained(str(best), torch.device("cpu")), torch.device("cpu"))
    paths = image_files([root])
    vectors, kept, _ = embedder.embed(paths)
    genuine, impostor = pair_scores(vectors, [p.parent.name for p in kept])
    assert len(impostor) == result["impostor_pairs"] == 80 * 79 // 2 - 10 * 28
    far = float((impostor >= result["threshold"]).mean())
    assert far == pytest.approx(result["far"]) and far <= 0.05
    # one step lower would accept more impostors than the target allows
    assert float((impostor >= np.max(impostor[impostor < result["threshold"]])).mean()) > 0.05
    listed = run_gallery(tmp_path, "list", "action=list", f"gallery={gallery}")
    assert listed["threshold"] == pytest.approx(result["threshold"])
    from imgrec.gallery.database import Gallery

    with Gallery.open_existing(gallery) as opened:
        assert opened.threshold_rates == pytest.approx((result["far"], result["frr"]))


def test_identify_names_enrolled_people_and_rejects_strangers(enrolled, tmp_path):
    best, gallery, root, people, _ = enrolled
    probes = [sorted((root / person).iterdir())[6] for person in people]
    result = run_gallery(tmp_path, "identify", "action=identify", f"ckpt_path={best}", f"gallery={gallery}",
                         f"images=[{','.join(map(str, probes))}]", "top_k=2", "threshold=-1")
    assert [m["person"] for m in result["matches"]] == people
    assert all(len(m["candidates"]) == 2 for m in result["matches"])
    rows = (tmp_path / "identify" / "identify.csv").read_text().splitlines()
    assert rows[0] == "image,person,score,candidates" and len(rows) == 4
    strict = run_gallery(tmp_path, "identify_strict", "action=identify", f"ckpt_path={best}", f"gallery={gallery}",
                         f"images=[{probes[0]}]", "threshold=1.0")
    assert strict["matches"][0]["person"] == "unknown"


def test_verify_two_images_with_the_given_or_calibrated_threshold(enrolled, tmp_path):
    best, gallery, root, people, _ = enrolled
    first, second = sorted((root / people[0]).iterdir())[:2]
    other = sorted((root / people[1]).iterdir())[0]
    same = run_gallery(tmp_path, "v1", "action=verify", f"ckpt_path={best}", f"images=[{first},{second}]",
                       "threshold=0.0", f"gallery={tmp_path / 'none.db'}")
    different = run_gallery(tmp_path, "v2", "action=verify", f"ckpt_path={best}", f"images=[{first},{other}]",
                            "threshold=0.999999", f"gallery={tmp_path / 'none.db'}")
    assert same["same"] and not different["same"]
    assert same["score"] > different["score"]
    with pytest.raises(ImgrecError, match=r"has no threshold yet: run action=calibrate"):
        run_gallery(tmp_path, "v3", "action=verify", f"ckpt_path={best}", f"images=[{first},{other}]",
                    f"gallery={gallery}")


def test_remove_leaves_no_byte_of_the_person(enrolled, tmp_path):
    best, gallery, _, people, _ = enrolled
    from imgrec.gallery.database import Gallery

    with Gallery.open_existing(gallery) as opened:
        vectors, owners = opened.embeddings()
    theirs = vectors[[owner == people[0] for owner in owners]]
    result = run_gallery(tmp_path, "remove", "action=remove", f"gallery={gallery}", f"person={people[0]}")
    assert result == {"removed": people[0], "embeddings": 4}
    content = gallery.read_bytes()
    assert people[0].encode() not in content
    assert not any(vector.tobytes()[:16] in content for vector in theirs)
    with pytest.raises(ImgrecError, match=rf"'{people[0]}' is not in gallery"):
        run_gallery(tmp_path, "remove_again", "action=remove", f"gallery={gallery}", f"person={people[0]}")


def test_another_models_embeddings_are_refused(enrolled, tmp_path):
    import torch

    best, gallery, root, people, _ = enrolled
    state = torch.load(best, weights_only=True)
    key = next(k for k in state["model"] if k.startswith("backbone.") and k.endswith("weight"))
    state["model"][key] = state["model"][key] + 0.01  # the same architecture, other weights: another model
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(ImgrecError, match=r"holds embeddings of model .* cannot be compared"):
        run_gallery(tmp_path, "mismatch", "action=enroll", f"ckpt_path={other}", f"gallery={gallery}",
                    "person=x", f"images=[{root / people[0]}]")


def test_bad_gallery_settings_are_one_line_errors(embedding_run, digits_checkpoint, tmp_path):
    best = embedding_run[1] / "checkpoints" / "best.pt"
    with pytest.raises(ImgrecError, match=r"action='find' must be one of enroll, identify"):
        run_gallery(tmp_path, "a", "action=find")
    with pytest.raises(ImgrecError, match=r"action= is required: one of enroll, identify"):
        run_gallery(tmp_path, "a2")
    with pytest.raises(ImgrecError, match=r"takes person=<id> with images=\[...\], or folder="):
        run_gallery(tmp_path, "b", "action=enroll", f"ckpt_path={best}")
    with pytest.raises(ImgrecError, match=r"is a classification model; imgrec-gallery needs an embedding model"):
        run_gallery(tmp_path, "c", "action=identify", f"ckpt_path={digits_checkpoint}", "images=[x.png]")
    with pytest.raises(ImgrecError, match=r"gallery '.*missing.db' does not exist"):
        run_gallery(tmp_path, "d", "action=list", f"gallery={tmp_path / 'missing.db'}")
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(ImgrecError, match=r"is not an imgrec gallery or is damaged"):
        run_gallery(tmp_path, "e", "action=list", f"gallery={tmp_path / 'notes.db'}")


def test_predict_writes_unit_embeddings_row_by_row(embedding_run, tmp_path):
    from imgrec.commands.predict import predict_images

    _, run_dir, root = embedding_run
    cfg = tool_cfg("predict", tmp_path / "predict", f"ckpt_path={run_dir / 'checkpoints' / 'best.pt'}",
                   f"inputs={root / 'person00'}", "device=cpu")
    result = predict_images(cfg)
    vectors = np.load(tmp_path / "predict" / "embeddings.npy")
    assert vectors.shape == (8, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vectors, result["embeddings"])
    rows = (tmp_path / "predict" / "predictions.csv").read_text().splitlines()
    assert rows[1].endswith("0.png,0") and len(rows) == 9


@pytest.mark.parametrize("baseline", ["eigenfaces", "lbp"])
def test_classical_baselines_get_the_embedding_report(embedding_run, baseline, tmp_path):
    from imgrec.commands.eval import evaluate_checkpoint

    _, _, root = embedding_run
    cfg = tool_cfg("eval", tmp_path / baseline, f"baseline={baseline}", "dataset=faces", f"dataset.root={root}",
                   "dataset.detect=none", "dataset.image_size=24", "dataset.test_fraction=0.3",
                   "enrolled_per_person=2")
    summary = evaluate_checkpoint(cfg)
    assert summary["baseline"] == baseline and summary["people"] == 3 and summary["images"] == 24
    # each synthetic person is a fixed pattern: both classical methods tell them apart (LBP 0.90, eigenfaces 0.97)
    assert summary["roc_auc"] > 0.85
    assert json.loads((tmp_path / baseline / "report.json").read_text())["eer"] == summary["eer"]
    assert (tmp_path / baseline / "roc.png").is_file()


def test_person_ids_hydra_would_retype_and_an_unwritable_gallery_are_one_line_errors(enrolled, tmp_path,
                                                                                      monkeypatch):
    import sqlite3

    from imgrec.gallery.database import Gallery

    _, gallery, _, people, _ = enrolled
    with pytest.raises(ImgrecError, match=r"person=True was read as a bool, not a name; quote it"):
        run_gallery(tmp_path, "typed", "action=remove", f"gallery={gallery}", "person=true")

    def read_only(self, person):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Gallery, "remove", read_only)
    with pytest.raises(ImgrecError, match=r"could not be used: attempt to write a readonly database; check that"):
        run_gallery(tmp_path, "readonly", "action=remove", f"gallery={gallery}", f"person={people[0]}")


def test_predict_reads_a_folder_of_images_without_extensions(embedding_run, tmp_path):
    from imgrec.commands.predict import predict_images

    _, run_dir, root = embedding_run
    bare = tmp_path / "bare"
    bare.mkdir()
    for image in sorted((root / "person01").iterdir())[:3]:
        (bare / image.stem).write_bytes(image.read_bytes())  # '0', '1', '2': PNG files named like Yale's
    best = run_dir / "checkpoints" / "best.pt"
    result = predict_images(tool_cfg("predict", tmp_path / "predict", f"ckpt_path={best}", f"inputs={bare}",
                                     "device=cpu"))
    assert len(result["predictions"]) == 3 and result["embeddings"].shape == (3, 16)
