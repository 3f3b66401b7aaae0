"""The SQLite gallery: enrol, identify, remove (really gone from the file), fingerprints, damaged files,
two processes at once."""

import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from imgrec.errors import ImgrecError
from imgrec.gallery.database import UNKNOWN, Gallery

DIMENSION = 16


def unit(vectors):
    vectors = np.asarray(vectors, np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def people(count=5, per_person=3, seed=0):
    """Each person a random direction; their embeddings that direction plus a little noise."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(count, DIMENSION)))
    return {f"person_{i}": unit(centres[i] + 0.1 * rng.normal(size=(per_person, DIMENSION))) for i in range(count)}, centres


def test_enrolled_people_are_identified_and_strangers_are_unknown(tmp_path):
    enrolled, centres = people()
    with Gallery.open(tmp_path / "g.db", "model-a", DIMENSION) as gallery:
        for person, vectors in enrolled.items():
            assert gallery.enroll(person, vectors, display_name=person.title()) == 3
        assert gallery.enroll("person_0", enrolled["person_0"][:1]) == 4  # more images of someone enrolled
        assert [(p.person, p.display_name, p.embeddings) for p in gallery.people()][:2] == [
            ("person_0", "Person_0", 4), ("person_1", "Person_1", 3)]
        gallery.set_threshold(0.8, far=0.001, frr=0.05)
        stranger = unit(np.random.default_rng(9).normal(size=DIMENSION))
        matches = gallery.identify(np.vstack([centres, stranger]), top_k=3)
    assert [m.person for m in matches] == [*enrolled, UNKNOWN]
    assert all(m.score > 0.9 for m in matches[:-1]) and matches[-1].score < 0.8
    assert len(matches[0].candidates) == 3 and matches[0].candidates[0][0] == "person_0"
    scores = [score for _, score in matches[0].candidates]
    assert scores == sorted(scores, reverse=True)
    # a person scores their best-matching embedding: the exact stored vector scores 1
    with Gallery.open(tmp_path / "g.db", "model-a", DIMENSION) as gallery:
        assert gallery.threshold == 0.8
        assert gallery.identify(enrolled["person_3"][1])[0].score == pytest.approx(1.0, abs=1e-6)


def test_remove_leaves_no_byte_of_the_person_in_the_file(tmp_path):
    enrolled, _ = people()
    path = tmp_path / "g.db"
    with Gallery.open(path, "model-a", DIMENSION) as gallery:
        for person, vectors in enrolled.items():
            gallery.enroll(person, vectors, display_name=f"Name of {person}")
        vectors, owners = gallery.embeddings()
        secret = vectors[owners.index("person_2")].tobytes()  # as stored
        kept = vectors[owners.index("person_3")].tobytes()
        assert secret in path.read_bytes() and b"Name of person_2" in path.read_bytes()
        assert gallery.remove("person_2") == 3
        assert "person_2" not in [p.person for p in gallery.people()]
        with pytest.raises(ImgrecError, match=r"'person_2' is not in gallery"):
            gallery.remove("person_2")
    data = path.read_bytes()
    assert secret not in data and b"person_2" not in data and b"Name of person_2" not in data
    assert kept in data  # the others are still there


def test_the_file_is_owner_only_and_another_models_embeddings_are_refused(tmp_path):
    path = tmp_path / "g.db"
    Gallery.open(path, "model-a", DIMENSION).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(ImgrecError, match=r"holds embeddings of model model-a \(16 values each\) and this model is "
                                          r"model-b \(16\): embeddings of different models cannot be compared"):
        Gallery.open(path, "model-b", DIMENSION)
    with pytest.raises(ImgrecError, match=r"this model is model-a \(32\)"):
        Gallery.open(path, "model-a", 32)
    with Gallery.open(path, "model-a", DIMENSION) as gallery:
        with pytest.raises(ImgrecError, match=r"the embeddings of 'x' have shape \[2, 8\]; this gallery takes \(N, 16\)"):
            gallery.enroll("x", np.ones((2, 8)))
        with pytest.raises(ImgrecError, match=r"has nobody enrolled yet"):
            gallery.identify(np.ones(DIMENSION))
        with pytest.raises(ImgrecError, match=r"person id ' x' must be a non-empty name"):
            gallery.enroll(" x", np.ones(DIMENSION))


def test_a_damaged_or_foreign_file_is_named(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ImgrecError, match=r"gallery '.*junk.db' is not an imgrec gallery or is damaged"):
        Gallery.open(junk, "m", DIMENSION)
    import sqlite3

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE meta (key TEXT, value TEXT)").connection.commit()
    with pytest.raises(ImgrecError, match=r"is a SQLite file but not an imgrec gallery"):
        Gallery.open(other, "m", DIMENSION)
    with pytest.raises(ImgrecError, match=r"is a folder; give a file name"):
        Gallery.open(tmp_path, "m", DIMENSION)


def test_two_processes_enrolling_and_identifying_at_once_lose_nothing(tmp_path):
    path = tmp_path / "g.db"
    Gallery.open(path, "m", DIMENSION).close()
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from imgrec.gallery.database import Gallery
        role, start = sys.argv[1], int(sys.argv[2])
        rng = np.random.default_rng(start)
        for i in range(start, start + 40):
            gallery = Gallery.open({str(path)!r}, "m", {DIMENSION})
            if role == "enrol" or i == start:
                gallery.enroll(f"p{{i}}", rng.normal(size=(2, {DIMENSION})))
            else:
                gallery.identify(rng.normal(size=(4, {DIMENSION})))
            gallery.close()
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script, role, str(start)], stderr=subprocess.PIPE, text=True)
            for role, start in (("enrol", 0), ("enrol", 100), ("identify", 200))]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    with Gallery.open(path, "m", DIMENSION) as gallery:
        enrolled = {p.person: p.embeddings for p in gallery.people()}
    assert len(enrolled) == 81 and set(enrolled.values()) == {2}  # 40 + 40 + the identifier's one
