"""A gallery of enrolled people: their embeddings in one SQLite file, and the matching against it.

Faces are personal data, so the file holds embeddings, person ids and display names only (no images),
is created readable and writable by its owner alone, and `remove` leaves nothing of the person in it:
SQLite's secure_delete overwrites freed pages with zeros and VACUUM rebuilds the file without them.
Every gallery records the fingerprint of the model that made its embeddings; a different model's
embeddings are refused, never compared. Writes are transactions, so two processes enrolling and
identifying at once lose nothing.
"""

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from imgrec.errors import ImgrecError
from imgrec.gallery.faiss_index import NPROBE, FaissIndex, check_nprobe, load_faiss

FORMAT = "imgrec-gallery"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (id INTEGER PRIMARY KEY, person TEXT NOT NULL UNIQUE, display_name TEXT,
                     enrolled_at TEXT NOT NULL);
CREATE TABLE embeddings (id INTEGER PRIMARY KEY,
                         person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
                         vector BLOB NOT NULL);
CREATE INDEX embeddings_by_person ON embeddings (person_id);
"""
UNKNOWN = "unknown"
INDEXES = ("matrix", "faiss")
# the matrix path scores this many bytes of queries x embeddings at a time: 1,000 queries against
# 100,000 embeddings would otherwise hold 400 MB of scores at once
SCORES_BLOCK_BYTES = 64 * 2**20


@dataclass
class Match:
    """One query's answer: the best people by cosine score, and who it is (or `unknown`)."""

    person: str
    score: float
    candidates: list[tuple[str, float]]


@dataclass
class Enrolled:
    person: str
    display_name: str | None
    embeddings: int


class Gallery:
    """`Gallery.open(path, fingerprint, dimension)` creates the file or opens one made by the same model."""

    def __init__(self, connection: sqlite3.Connection, path: Path, fingerprint: str, dimension: int):
        self.connection, self.path, self.fingerprint, self.dimension = connection, path, fingerprint, dimension

    # ---- opening ------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path, fingerprint: str, dimension: int) -> "Gallery":
        path = Path(path).expanduser()
        if path.is_dir():
            raise ImgrecError(f"gallery '{path}' is a folder; give a file name, e.g. {path / 'gallery.db'}")
        if not path.parent.is_dir():
            raise ImgrecError(f"gallery '{path}': its folder '{path.parent}' does not exist")
        new = not path.exists()
        if new:  # created owner-only before SQLite writes anything into it (its journals take the same mode)
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except OSError as error:
                raise ImgrecError(f"gallery '{path}' cannot be created: {error.strerror}; choose a folder you can "
                                  "write to") from None
        connection = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA secure_delete = ON")
            if new:
                with transaction(connection):
                    for statement in filter(str.strip, SCHEMA.split(";")):
                        connection.execute(statement)
                    connection.executemany("INSERT INTO meta VALUES (?, ?)", [
                        ("format", FORMAT), ("schema_version", str(SCHEMA_VERSION)), ("fingerprint", fingerprint),
                        ("dimension", str(dimension))])
            meta = read_meta(connection, path)
        except sqlite3.DatabaseError as error:
            connection.close()
            raise ImgrecError(f"gallery '{path}' is not an imgrec gallery or is damaged ({error}); give the file "
                              "imgrec-gallery created, or a new file name") from None
        except ImgrecError:
            connection.close()
            raise
        if meta["fingerprint"] != fingerprint or int(meta["dimension"]) != dimension:
            connection.close()
            raise ImgrecError(f"gallery '{path}' holds embeddings of model {meta['fingerprint']} ({meta['dimension']} "
                              f"values each) and this model is {fingerprint} ({dimension}): embeddings of different "
                              "models cannot be compared; enrol the people again into a new gallery with this model")
        return cls(connection, path, fingerprint, dimension)

    @classmethod
    def open_existing(cls, path) -> "Gallery":
        """A gallery file that exists, with whatever model made it (to list or remove people: no model needed)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ImgrecError(f"gallery '{path}' does not exist; `imgrec-gallery action=enroll` creates it")
        try:
            connection = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=60, isolation_level=None)
            meta = read_meta(connection, path)
            connection.close()
        except sqlite3.DatabaseError as error:
            raise ImgrecError(f"gallery '{path}' is not an imgrec gallery or is damaged ({error}); give the file "
                              "imgrec-gallery created") from None
        return cls.open(path, meta["fingerprint"], int(meta["dimension"]))

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "Gallery":  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- changing it --------------------------------------------------------------------------------

    def enroll(self, person: str, vectors: np.ndarray, display_name: str | None = None) -> int:
        """Add a person's embeddings (N, dimension), the person too when new; returns how many they now have."""
        return self.enroll_many([(person, vectors, display_name)])[person]

    def enroll_many(self, entries: Iterable[tuple[str, np.ndarray, str | None]]) -> dict[str, int]:
        """`enroll` for many (person, vectors, display_name) at once, in one transaction: all are enrolled or none.
        Returns how many embeddings each person now has. One commit instead of one per person: on a 2-core
        machine one enroll call took 1.4-18 ms (the commit's fsync, by how busy the disk was), so 20,000 people
        half a minute to six minutes; enroll_many took 0.04 ms a person (scripts/bench/gallery_speed.py)."""
        checked = []
        for person, vectors, display_name in entries:  # every entry checked before anything is written
            person = check_person(person)
            checked.append((person, self._checked(vectors, f"the embeddings of '{person}'"), display_name))
        totals = {}
        with transaction(self.connection):
            for person, vectors, display_name in checked:
                row = self.connection.execute("SELECT id FROM people WHERE person = ?", (person,)).fetchone()
                if row is None:
                    cursor = self.connection.execute(
                        "INSERT INTO people (person, display_name, enrolled_at) VALUES (?, ?, ?)",
                        (person, display_name, datetime.now(timezone.utc).isoformat(timespec="seconds")))
                    person_id = cursor.lastrowid
                else:
                    person_id = row[0]
                    if display_name is not None:
                        self.connection.execute("UPDATE people SET display_name = ? WHERE id = ?",
                                                (display_name, person_id))
                self.connection.executemany("INSERT INTO embeddings (person_id, vector) VALUES (?, ?)",
                                            [(person_id, vector.tobytes()) for vector in vectors])
                totals[person] = self.connection.execute(
                    "SELECT COUNT(*) FROM embeddings WHERE person_id = ?", (person_id,)).fetchone()[0]
        return totals

    def remove(self, person: str) -> int:
        """Delete a person and every embedding of theirs, and rebuild the file so no byte of them remains."""
        with transaction(self.connection):
            row = self.connection.execute("SELECT id FROM people WHERE person = ?", (person,)).fetchone()
            if row is None:
                raise ImgrecError(f"'{person}' is not in gallery '{self.path}'; `imgrec-gallery action=list` shows "
                                  "who is")
            removed = self.connection.execute("DELETE FROM embeddings WHERE person_id = ?", (row[0],)).rowcount
            self.connection.execute("DELETE FROM people WHERE id = ?", (row[0],))
        self.connection.execute("VACUUM")  # outside the transaction: rewrites the file without the freed pages
        return removed

    def set_threshold(self, threshold: float, far: float, frr: float) -> None:
        """The acceptance threshold on cosine scores, with the false-accept / false-reject rates it was chosen at."""
        if not -1.0 <= threshold <= 1.0:
            raise ImgrecError(f"threshold={threshold} must be a cosine score between -1 and 1")
        with transaction(self.connection):
            self.connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                ("threshold", repr(float(threshold))), ("threshold_far", repr(float(far))), ("threshold_frr", repr(float(frr)))])

    # ---- reading it ---------------------------------------------------------------------------------

    @property
    def threshold(self) -> float | None:
        value = read_meta(self.connection, self.path).get("threshold")
        return None if value is None else float(value)  # read_meta checked it is a number

    @property
    def threshold_rates(self) -> tuple[float, float] | None:
        """The false-accept and false-reject rates the threshold was chosen at, when it was calibrated."""
        meta = read_meta(self.connection, self.path)
        if "threshold_far" not in meta:
            return None
        return float(meta["threshold_far"]), float(meta["threshold_frr"])

    def people(self) -> list[Enrolled]:
        rows = self.connection.execute(
            "SELECT p.person, p.display_name, COUNT(e.id) FROM people p LEFT JOIN embeddings e ON e.person_id = p.id "
            "GROUP BY p.id ORDER BY p.person").fetchall()
        return [Enrolled(person, name, count) for person, name, count in rows]

    def embeddings(self) -> tuple[np.ndarray, list[str]]:
        """Every enrolled embedding (M, dimension) and whose it is, read in one consistent snapshot."""
        rows = self.connection.execute(
            "SELECT p.person, e.vector FROM embeddings e JOIN people p ON p.id = e.person_id ORDER BY e.id").fetchall()
        if not rows:
            return np.zeros((0, self.dimension), np.float32), []
        size = 4 * self.dimension
        damaged = [person for person, vector in rows if not isinstance(vector, bytes) or len(vector) != size]
        if damaged:
            raise ImgrecError(f"gallery '{self.path}' is damaged: an embedding of '{damaged[0]}' is not "
                              f"{self.dimension} float32 values; remove that person (action=remove person=...) and enrol them again")
        vectors = np.frombuffer(b"".join(vector for _, vector in rows), dtype=np.float32).reshape(len(rows), -1)
        if not np.isfinite(vectors).all():
            person = rows[int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])][0]
            raise ImgrecError(f"gallery '{self.path}' is damaged: an embedding of '{person}' holds NaN or Inf values; "
                              "remove that person (action=remove person=...) and enrol them again")
        return vectors, [person for person, _ in rows]

    def identify(self, queries: np.ndarray, top_k: int = 5, threshold: float | None = None, index: str = "matrix",
                 nprobe: int = NPROBE) -> list[Match]:
        """Each query's top_k people by cosine score (a person scores their best-matching embedding), and who it
        is: the best person when their score reaches the threshold (given, else the gallery's), else unknown.

        index=matrix scores every enrolled embedding (exact). index=faiss (pip install 'imgrec[faiss]') searches
        a FAISS inverted-file index built for this call, `nprobe` lists per query: approximate, and only faster
        when one call holds many queries on a large gallery, since every call builds the index again
        (scripts/bench/gallery_speed.py measures where). Pass every query in one call: they share one read and
        one build."""
        if index not in INDEXES:
            raise ImgrecError(f"index={index!r} is not one of {' | '.join(INDEXES)}: matrix is exact, faiss is an "
                              "approximate index for large galleries (pip install 'imgrec[faiss]')")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ImgrecError(f"top_k={top_k!r} must be a whole number >= 1: how many people to list per query")
        nprobe = check_nprobe(nprobe)
        if index == "faiss":
            load_faiss()  # a missing faiss-cpu is named before the gallery is read
        queries = self._checked(queries, "the query embeddings")
        threshold = self.threshold if threshold is None else threshold
        vectors, owners = self.embeddings()
        if not owners:
            raise ImgrecError(f"gallery '{self.path}' has nobody enrolled yet; `imgrec-gallery action=enroll` first")
        if index == "matrix":
            answers = MatrixIndex(vectors, owners).best_people(queries, top_k)
        else:
            answers = FaissIndex(vectors, owners, nprobe).best_people(queries, top_k)
            expected = min(top_k, len(set(owners)))
            short = [row for row, people in enumerate(answers) if len(people) < expected]
            if short:  # the searched lists held too few people: those queries are scored exactly, so every Match
                # lists as many candidates as index=matrix would
                for row, people in zip(short, MatrixIndex(vectors, owners).best_people(queries[short], top_k)):
                    answers[row] = people
        return [decided(people, threshold) for people in answers]

    def _checked(self, vectors, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        vectors = vectors[None] if vectors.ndim == 1 else vectors
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension or len(vectors) == 0:
            raise ImgrecError(f"{what} have shape {list(vectors.shape)}; this gallery takes (N, {self.dimension})")
        if not np.isfinite(vectors).all():
            raise ImgrecError(f"{what} hold NaN or Inf values")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ImgrecError(f"{what} include an all-zero vector, which matches nobody")
        return np.ascontiguousarray(vectors / norms, dtype=np.float32)


class MatrixIndex:
    """Exact search: every query against every embedding in one matrix product (cosine: both are unit vectors)."""

    def __init__(self, vectors: np.ndarray, owners: list[str]):
        self.names = sorted(set(owners))
        column_of = {name: column for column, name in enumerate(self.names)}
        columns = np.fromiter((column_of[owner] for owner in owners), np.int64, len(owners))
        order = np.argsort(columns, kind="stable")
        # each person's embeddings side by side, in name order: one maximum.reduceat then takes every person's best
        # (reordering the vectors once is cheaper than reordering each block of scores)
        self.grouped = np.ascontiguousarray(vectors[order], dtype=np.float32)
        self.starts = np.flatnonzero(np.r_[True, np.diff(columns[order]) != 0])

    def best_people(self, queries: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        """Each query's top_k people, best first (ties: by name), each scored by their best-matching embedding."""
        queries = np.asarray(queries, dtype=np.float32)  # float64 queries would copy every embedding to float64
        top_k = min(top_k, len(self.names))
        block = max(1, SCORES_BLOCK_BYTES // (4 * len(self.grouped)))  # bounds memory: queries x embeddings scores
        answers = []
        for begin in range(0, len(queries), block):
            per_person = best_per_person(queries[begin:begin + block] @ self.grouped.T, self.starts)
            for row in per_person:
                answers.append([(self.names[column], float(row[column])) for column in top_columns(row, top_k)])
        return answers


def best_per_person(scores: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(queries, people): each query's highest score over each person's columns, people's columns being
    contiguous runs beginning at `starts`."""
    return np.maximum.reduceat(scores, starts, axis=1)


def top_columns(row: np.ndarray, top_k: int) -> np.ndarray:
    """The top_k highest columns of `row`, highest first, ties in column order (a stable sort's answer), without
    sorting every person: only those scoring at least the top_k-th score are sorted."""
    kth = np.partition(row, len(row) - top_k)[len(row) - top_k]
    contenders = np.flatnonzero(row >= kth)
    return contenders[np.argsort(-row[contenders], kind="stable")[:top_k]]


def decided(people: list[tuple[str, float]], threshold: float | None) -> Match:
    best, score = people[0]
    accepted = threshold is None or score >= threshold
    return Match(best if accepted else UNKNOWN, score, people)


def check_person(person) -> str:
    if not isinstance(person, str) or not person.strip() or person != person.strip() or person == UNKNOWN:
        raise ImgrecError(f"person id {person!r} must be a non-empty name without surrounding spaces (and not "
                          f"'{UNKNOWN}', which means no match)")
    if any(ord(char) < 32 or ord(char) == 127 for char in person):
        raise ImgrecError(f"person id {person!r} holds control characters (a newline, a tab ...); use a plain name")
    return person


def read_meta(connection: sqlite3.Connection, path: Path) -> dict[str, str]:
    meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise ImgrecError(f"gallery '{path}' is a SQLite file but not an imgrec gallery")
    try:
        schema, dimension = int(meta.get("schema_version", 0)), int(meta.get("dimension", ""))
        for key in ("threshold", "threshold_far", "threshold_frr"):
            if key in meta and not np.isfinite(float(meta[key])):
                raise ValueError(key)
    except ValueError:
        raise ImgrecError(f"gallery '{path}' is damaged: its meta table holds a value that is not a number (schema, "
                          "dimension or threshold); use a backup, or a new gallery file") from None
    if schema > SCHEMA_VERSION:
        raise ImgrecError(f"gallery '{path}' was written by a newer imgrec (schema {meta['schema_version']}); upgrade imgrec")
    if dimension < 1 or not meta.get("fingerprint"):
        raise ImgrecError(f"gallery '{path}' is damaged: no model fingerprint or embedding size in its meta table")
    return meta


class transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error): a writer holds the lock from its first statement,
    so concurrent writers queue (up to the connection's timeout) instead of failing half-way."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def __enter__(self):
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(self, kind, value, traceback):
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")
        return False
