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


def random_gallery(path, count=200, per_person=25, dimension=64, seed=0):
    """`count` people of `per_person` independent random unit embeddings: no structure for IVF's k-means to
    find (its hardest case), 5,000 in all by default, past faiss_index.IVF_FROM, so index=faiss searches lists."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng.normal(size=(count, per_person, dimension)))
    gallery = Gallery.open(path, "model-a", dimension)
    gallery.enroll_many((f"p{i:03d}", vectors[i], None) for i in range(count))
    return gallery, vectors.reshape(-1, dimension), rng


def test_faiss_names_the_same_best_person_as_the_matrix_for_noisy_copies_of_enrolled_faces(tmp_path):
    pytest.importorskip("faiss")
    from imgrec.gallery.faiss_index import FaissIndex

    gallery, vectors, rng = random_gallery(tmp_path / "g.db")
    with gallery:
        assert "IVF" in type(FaissIndex(*gallery.embeddings()).index).__name__
        # a new photo's noise: the true person scores ~0.78 (a stranger ~0.0 +- 0.13)
        queries = unit(vectors[rng.choice(len(vectors), 500)] + 0.1 * rng.normal(size=(500, vectors.shape[1])))
        exact = gallery.identify(queries, top_k=3, index="matrix")
        approximate = gallery.identify(queries, top_k=3, index="faiss")
    same = [a.person == b.person for a, b in zip(exact, approximate)]
    assert np.mean(same) >= 0.95  # measured: 495 of 500 (32 of 128 lists searched; 485 with 16, 250 with 1)
    for a, b in zip(exact, approximate):
        if a.person == b.person:  # here FAISS found the same best embedding too, scored by its own inner product
            assert b.score == pytest.approx(a.score, abs=1e-5) and len(b.candidates) == 3


def test_faiss_gives_the_same_unknowns_threshold_and_candidates_as_the_matrix(tmp_path):
    pytest.importorskip("faiss")
    enrolled, centres = people(count=6, per_person=4)
    with Gallery.open(tmp_path / "g.db", "model-a", DIMENSION) as gallery:
        for person, vectors in enrolled.items():
            gallery.enroll(person, vectors)
        gallery.set_threshold(0.8, far=0.001, frr=0.05)
        strangers = unit(np.random.default_rng(9).normal(size=(3, DIMENSION)))
        queries = np.vstack([centres, strangers])
        for top_k, threshold in ((1, None), (3, None), (6, 0.5), (10, 0.95)):  # 10 > people: everyone listed
            exact = gallery.identify(queries, top_k, threshold, index="matrix")
            approximate = gallery.identify(queries, top_k, threshold, index="faiss")
            assert [m.person for m in approximate] == [m.person for m in exact]
            for a, b in zip(exact, approximate):  # below IVF_FROM a flat index: the same answer exactly
                assert [name for name, _ in b.candidates] == [name for name, _ in a.candidates]
                assert [s for _, s in b.candidates] == pytest.approx([s for _, s in a.candidates], abs=1e-5)
        assert [m.person for m in gallery.identify(queries, index="faiss")][-3:] == [UNKNOWN] * 3  # gallery's 0.8


def test_faiss_completes_a_query_whose_searched_lists_hold_too_few_people(tmp_path):
    pytest.importorskip("faiss")
    gallery, vectors, _ = random_gallery(tmp_path / "g.db")
    with gallery:
        # one list of 128 searched holds ~40 embeddings, not 200 people: those queries are scored exactly
        approximate = gallery.identify(vectors[:3], top_k=200, index="faiss", nprobe=1)
        exact = gallery.identify(vectors[:3], top_k=200, index="matrix")
    assert [[name for name, _ in m.candidates] for m in approximate] == [
        [name for name, _ in m.candidates] for m in exact]


def test_matrix_search_in_blocks_matches_a_full_sort_with_ties_by_name(tmp_path, monkeypatch):
    from imgrec.gallery import database

    monkeypatch.setattr(database, "SCORES_BLOCK_BYTES", 4 * 18 * 3)  # blocks of 3 queries x 18 embeddings
    enrolled, centres = people(count=5, per_person=3)
    enrolled["twin"] = enrolled["person_2"]  # ties: the same vectors under two names
    with Gallery.open(tmp_path / "g.db", "model-a", DIMENSION) as gallery:
        gallery.enroll_many((person, vectors, None) for person, vectors in enrolled.items())
        queries = np.vstack([centres, unit(np.random.default_rng(3).normal(size=(4, DIMENSION)))])
        matches = gallery.identify(queries, top_k=4)
        vectors, owners = gallery.embeddings()
    names = sorted(set(owners))
    scores = queries @ vectors.T
    for row, match in zip(scores, matches):
        best = np.array([max(s for s, o in zip(row, owners) if o == name) for name in names])
        order = np.argsort(-best, kind="stable")[:4]
        assert [name for name, _ in match.candidates] == [names[i] for i in order]
        assert [score for _, score in match.candidates] == pytest.approx(best[order].tolist(), abs=1e-6)
    assert [name for name, _ in matches[2].candidates][:2] == ["person_2", "twin"]


def test_a_bad_index_top_k_or_nprobe_and_a_missing_faiss_are_named(tmp_path, monkeypatch):
    enrolled, centres = people()
    with Gallery.open(tmp_path / "g.db", "model-a", DIMENSION) as gallery:
        gallery.enroll("person_0", enrolled["person_0"])
        with pytest.raises(ImgrecError, match=r"index='annoy' is not one of matrix \| faiss"):
            gallery.identify(centres, index="annoy")
        with pytest.raises(ImgrecError, match=r"top_k=0 must be a whole number >= 1"):
            gallery.identify(centres, top_k=0)
        with pytest.raises(ImgrecError, match=r"nprobe=0 must be a whole number >= 1"):
            gallery.identify(centres, index="faiss", nprobe=0)
        monkeypatch.setitem(sys.modules, "faiss", None)  # what `import faiss` meets without faiss-cpu
        with pytest.raises(ImgrecError, match=r"index=faiss needs faiss-cpu: pip install 'imgrec\[faiss\]' "
                                              r"\(or index=matrix\)"):
            gallery.identify(centres, index="faiss")
        assert gallery.identify(centres[:1])[0].person == "person_0"  # index=matrix needs no faiss


def test_enroll_many_is_one_transaction_all_or_none(tmp_path):
    enrolled, _ = people(count=3)
    with Gallery.open(tmp_path / "g.db", "model-a", DIMENSION) as gallery:
        totals = gallery.enroll_many([("person_0", enrolled["person_0"], "Zero"),
                                      ("person_1", enrolled["person_1"], None),
                                      ("person_0", enrolled["person_0"][:1], None)])  # someone twice: counts add up
        assert totals == {"person_0": 4, "person_1": 3}
        with pytest.raises(ImgrecError, match=r"the embeddings of 'bad' have shape \[2, 8\]"):
            gallery.enroll_many([("person_2", enrolled["person_2"], None), ("bad", np.ones((2, 8)), None)])
        assert [(p.person, p.display_name, p.embeddings) for p in gallery.people()] == [
            ("person_0", "Zero", 4), ("person_1", None, 3)]  # person_2 was not written either


def test_damaged_contents_are_named_not_a_traceback_or_a_wrong_answer(tmp_path):
    import sqlite3

    enrolled, centres = people(count=3)
    path = tmp_path / "g.db"
    with Gallery.open(path, "model-a", DIMENSION) as gallery:
        for person, vectors in enrolled.items():
            gallery.enroll(person, vectors)
    connection = sqlite3.connect(path)
    connection.execute("INSERT INTO embeddings (person_id, vector) VALUES (1, ?)",
                       (np.full(DIMENSION, np.nan, np.float32).tobytes(),))
    connection.commit()
    with Gallery.open(path, "model-a", DIMENSION) as gallery, \
            pytest.raises(ImgrecError, match=r"damaged: an embedding of 'person_0' holds NaN"):
        gallery.identify(centres[:1])
    connection.execute("UPDATE embeddings SET vector = ? WHERE id = (SELECT MAX(id) FROM embeddings)", (b"1234567",))
    connection.commit()
    with Gallery.open(path, "model-a", DIMENSION) as gallery, \
            pytest.raises(ImgrecError, match=rf"is not {DIMENSION} float32 values"):
        gallery.embeddings()
    connection.execute("INSERT OR REPLACE INTO meta VALUES ('threshold', 'abc')")
    connection.commit()
    with pytest.raises(ImgrecError, match=r"damaged: its meta table holds a value that is not a number"):
        Gallery.open_existing(path)
    connection.close()


def test_person_ids_with_control_characters_are_refused(tmp_path):
    enrolled, _ = people(count=1)
    with Gallery.open(tmp_path / "g.db", "m", DIMENSION) as gallery, \
            pytest.raises(ImgrecError, match=r"control characters"):
        gallery.enroll("ann\nbob", enrolled["person_0"])
