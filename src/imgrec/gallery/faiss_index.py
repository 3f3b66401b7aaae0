"""Gallery search with FAISS (`identify(index="faiss")`, optional: pip install 'imgrec[faiss]'), answered per person."""

import math

import numpy as np

from imgrec.errors import ImgrecError

# IVF's k-means wants about 39 training points per list (FAISS warns below that), and a gallery this small is
# answered as fast by an exact flat index, so inverted lists start here
IVF_FROM = 4096
# The index is built again for every identify call, so its build time counts as much as its search time. At
# 100,000 random embeddings (2 cores) FAISS's usual nlist = 4 sqrt(N), trained on up to 256 points per list, took
# 10-15 s to build; 2 sqrt(N) lists trained on a sample of 39 points per list took 0.7-1.7 s, and searching 32 of
# them found the nearest embedding as often (96.4% of queries, against 96.3% searching 16 of 4 sqrt(N)).
LISTS_PER_SQRT = 2
TRAINING_POINTS_PER_LIST = 39
MIN_LISTS, MAX_LISTS = 16, 65536
NPROBE = 32


def load_faiss():
    try:
        import faiss
    except ImportError:
        raise ImgrecError("index=faiss needs faiss-cpu: pip install 'imgrec[faiss]' (or index=matrix)") from None
    return faiss


def check_nprobe(nprobe) -> int:
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise ImgrecError(f"nprobe={nprobe!r} must be a whole number >= 1: how many inverted lists each query "
                          f"searches (default {NPROBE}; more is slower and closer to index=matrix)")
    return int(nprobe)


def list_count(embeddings: int) -> int:
    """How many inverted lists for a gallery of `embeddings` vectors (FAISS's nlist)."""
    wanted = round(LISTS_PER_SQRT * math.sqrt(embeddings))
    return int(max(MIN_LISTS, min(wanted, MAX_LISTS, embeddings // TRAINING_POINTS_PER_LIST)))


class FaissIndex:
    """One snapshot of a gallery's unit embeddings in a FAISS index: inner product = cosine. Inverted lists
    (IndexIVFFlat, approximate: a query searches only the `nprobe` lists nearest it) from IVF_FROM embeddings,
    an exact IndexFlatIP below. Built from the gallery file for each identify call and never saved, so a
    removed person cannot survive in a side file; one build answers every query of the call."""

    def __init__(self, vectors: np.ndarray, owners: list[str], nprobe: int = NPROBE):
        faiss = load_faiss()
        nprobe = check_nprobe(nprobe)
        self.names = sorted(set(owners))
        column_of = {name: column for column, name in enumerate(self.names)}
        self.columns = np.fromiter((column_of[owner] for owner in owners), np.int64, len(owners))
        self.most_per_person = int(np.bincount(self.columns).max())
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dimension = vectors.shape[1]
        if len(vectors) < IVF_FROM:
            self.index = faiss.IndexFlatIP(dimension)
        else:
            self.quantizer = faiss.IndexFlatIP(dimension)  # held here: the IVF index does not own it
            self.index = faiss.IndexIVFFlat(self.quantizer, dimension, list_count(len(vectors)),
                                            faiss.METRIC_INNER_PRODUCT)
            self.index.cp.max_points_per_centroid = TRAINING_POINTS_PER_LIST  # k-means on a sample (seeded)
            self.index.train(vectors)
            self.index.nprobe = min(nprobe, self.index.nlist)
        self.index.add(vectors)

    def best_people(self, queries: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        """Each query's best people, best first, each scored by their best-matching embedding found.

        FAISS returns nearest embeddings, not people. Among the first (top_k - 1) * most_per_person + 1
        neighbours there are top_k different people (the first top_k - 1 people cannot fill them all), so a
        flat index gives exactly index=matrix's answer; inverted lists can miss embeddings in lists not searched,
        and a list shorter than top_k (unsearched lists hold everyone else) is the caller's to complete."""
        neighbours = min(self.index.ntotal, (top_k - 1) * self.most_per_person + 1)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), neighbours)
        answers = []
        for row_scores, row_ids in zip(scores, ids):
            best: dict[int, float] = {}  # column -> score, in order found: FAISS sorts neighbours best first
            for score, embedding in zip(row_scores.tolist(), row_ids.tolist()):
                if embedding < 0:  # FAISS pads with -1 when the searched lists held fewer than `neighbours`
                    break
                best.setdefault(int(self.columns[embedding]), score)
                if len(best) == top_k:
                    break
            answers.append([(self.names[column], score) for column, score in best.items()])
        return answers
