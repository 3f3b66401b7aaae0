"""Identity datasets (data/identities.py): where the person comes from, and person-disjoint splits."""

from pathlib import Path

import numpy as np
import pytest

from imgrec.data.identities import (
    identity_assignment,
    listed_files,
    named_files,
    person_folders,
)
from imgrec.data.splits import TEST, TRAIN, VAL
from imgrec.errors import ImgrecError

YALE = Path(__file__).resolve().parents[3] / "shared" / "data" / "yalefaces"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_the_person_comes_from_folders_file_names_or_a_csv(tmp_path):
    for person in ("ann", "bob"):
        for index in range(3):
            touch(tmp_path / "folders" / person / f"{index}.png")
    touch(tmp_path / "folders" / "ann" / ".DS_Store")
    paths, persons = person_folders(tmp_path / "folders")
    assert persons == ["ann"] * 3 + ["bob"] * 3 and paths[0].name == "0.png"
    for name in ("subject01.glasses", "subject01.happy", "subject02.sad", "subject10.normal"):
        touch(tmp_path / "named" / name)
    paths, persons = named_files(tmp_path / "named", r"subject(\d+)\.")
    assert persons == ["01", "01", "02", "10"]
    touch(tmp_path / "named" / "readme.txt")
    with pytest.raises(ImgrecError, match=r"1 file\(s\) in '.*named' do not match dataset.pattern='subject\(\\\\d\+\)\\\\.', "
                                          r"e.g. readme.txt"):
        named_files(tmp_path / "named", r"subject(\d+)\.")
    with pytest.raises(ImgrecError, match=r"has no group: put the person in parentheses"):
        named_files(tmp_path / "named", r"subject\d+")
    (tmp_path / "faces.csv").write_text("path,person\nfolders/ann/0.png,ann\nfolders/bob/1.png,bob\n")
    paths, persons = listed_files(tmp_path / "faces.csv", tmp_path, "path", "person")
    assert persons == ["ann", "bob"] and paths[1] == tmp_path / "folders" / "bob" / "1.png"
    (tmp_path / "bad.csv").write_text("path,person\nfolders/ann/0.png,\n")
    with pytest.raises(ImgrecError, match=r"bad.csv row 2: the path or person is empty"):
        listed_files(tmp_path / "bad.csv", tmp_path, "path", "person")


def test_split_by_identity_keeps_every_person_in_one_split_and_only_pairable_people_in_val_and_test():
    persons = [f"p{i}" for i in range(10) for _ in range(4)] + ["lonely"]  # one person with one image
    assignment = identity_assignment(persons, "identity", 0.2, 0.2, seed=0, min_images=2)
    split_of = {}
    for person, code in zip(persons, assignment):
        split_of.setdefault(person, set()).add(int(code))
    assert all(len(codes) == 1 for codes in split_of.values())  # nobody in two splits
    by_split = {code: sorted(p for p, codes in split_of.items() if code in codes) for code in (TRAIN, VAL, TEST)}
    assert len(by_split[VAL]) == 2 and len(by_split[TEST]) == 2 and "lonely" in by_split[TRAIN]
    assert np.array_equal(assignment, identity_assignment(persons, "identity", 0.2, 0.2, seed=0, min_images=2))
    assert not np.array_equal(assignment, identity_assignment(persons, "identity", 0.2, 0.2, seed=1, min_images=2))


def test_split_by_image_puts_every_person_in_every_split_with_enough_for_pairs():
    persons = [f"p{i}" for i in range(4) for _ in range(10)]
    assignment = identity_assignment(persons, "image", 0.2, 0.2, seed=0, min_images=2)
    for person in set(persons):
        codes = assignment[np.array(persons) == person]
        assert (codes == VAL).sum() >= 2 and (codes == TEST).sum() >= 2 and (codes == TRAIN).sum() >= 1
    with pytest.raises(ImgrecError, match=r"needs 5 images each .* too few: p0 \(3\)"):
        identity_assignment(["p0"] * 3 + ["p1"] * 6, "image", 0.2, 0.2, seed=0, min_images=2)


def test_too_few_people_or_bad_settings_say_what_to_change():
    with pytest.raises(ImgrecError, match=r"5 people, 5 of them with at least 2 images: too few for 2 validation and "
                                          r"2 test people and 2 to train on"):
        identity_assignment([p for p in "abcde" for _ in range(2)], "identity", 0.2, 0.2, seed=0, min_images=2)
    with pytest.raises(ImgrecError, match=r"dataset.split_by='person' must be identity"):
        identity_assignment(["a"], "person", 0.2, 0.2, seed=0, min_images=2)
    with pytest.raises(ImgrecError, match=r"dataset.min_images=1 must be a whole number >= 2"):
        identity_assignment(["a"], "identity", 0.2, 0.2, seed=0, min_images=1)


@pytest.mark.skipif(not YALE.is_dir(), reason="needs ../shared/data/yalefaces (not shipped with imgrec)")
def test_the_yale_faces_are_15_people_named_in_their_file_names():
    paths, persons = named_files(YALE, r"subject(\d+)\.")
    assert len(paths) == 164 and len(set(persons)) == 15
    assignment = identity_assignment(persons, "identity", 0.2, 0.2, seed=0, min_images=2)
    assert [len({p for p, c in zip(persons, assignment) if c == code}) for code in (TRAIN, VAL, TEST)] == [9, 3, 3]


def test_fractions_are_of_the_pairable_people_so_a_set_of_mostly_single_images_splits():
    # LFW-like: 100 people with one image, 20 with four; the fractions take 4 of the 20 pairable people each
    persons = [f"single{i}" for i in range(100)] + [f"p{i}" for i in range(20) for _ in range(4)]
    assignment = identity_assignment(persons, "identity", 0.2, 0.2, seed=0, min_images=2)
    people_in = {code: {p for p, c in zip(persons, assignment) if c == code} for code in (TRAIN, VAL, TEST)}
    assert len(people_in[VAL]) == len(people_in[TEST]) == 4
    assert all(p.startswith("single") for p in people_in[TRAIN] - {f"p{i}" for i in range(20)})
    assert len(people_in[TRAIN]) == 112

