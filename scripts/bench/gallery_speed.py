"""How fast a gallery answers: Gallery.identify(index="matrix") against index="faiss", and where FAISS starts to win.

Builds a real gallery file in a temporary folder: `--embeddings` random unit embeddings of `--dimension`
values, `--per-person` per person (each person a random direction, their embeddings at cosine ~0.77 to it,
~0.6 to each other, as one face's photos). The first `--one-by-one` people are enrolled one `enroll` call each
(one commit each), the rest with one `enroll_many`; both are timed per person. The queries are noisy copies
of enrolled embeddings (cosine ~0.8 to the copied one, as a new photo).

Each index then runs in a fresh process, so its peak resident memory (VmHWM) is its own: the parts of
one identify call (reading the file, building the index, searching every query at once), one query at a time
against the built index, whole identify calls of all queries and of one query, and top-1 against the matrix.
Last, the crossover in this process: the time per single query, search only, at growing gallery sizes (the
first N embeddings), and how many queries one identify call needs before FAISS's build pays for itself.
Prints one JSON line, then a Markdown table.

    .venv/bin/python scripts/bench/gallery_speed.py                       # 100,000 embeddings, ~2 min on 2 cores
    .venv/bin/python scripts/bench/gallery_speed.py --embeddings 5000 --sizes 1000,5000 --queries 100 --single 50
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/gallery_speed.py   # one thread each

On a machine where other work holds a core, numpy's two BLAS threads wait for each other: one query against
10,000+ embeddings then took ~8 ms instead of well under 1 (2 cores); one thread each shows the work itself.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imgrec.gallery.database import Gallery, MatrixIndex
from imgrec.gallery.faiss_index import IVF_FROM, NPROBE, FaissIndex, list_count, load_faiss

FINGERPRINT = "gallery_speed-random"
SPREAD = 0.82  # a person's embeddings: cosine 1/sqrt(1 + 0.82^2) ~ 0.77 to their direction, ~0.6 to each other
NOISE = 0.75  # a query: cosine 1/sqrt(1 + 0.75^2) = 0.8 to the enrolled embedding it copies
TOP_K = 5


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def noisy(vectors: np.ndarray, scale: float, rng) -> np.ndarray:
    """Unit vectors at cosine ~1/sqrt(1 + scale^2) to `vectors` (the noise has length ~scale)."""
    return unit(vectors + scale / np.sqrt(vectors.shape[-1]) * rng.normal(size=vectors.shape).astype(np.float32))


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM, since ru_maxrss carries over the parent's peak into a
    child it forks (here, the 100,000 generated embeddings), while VmHWM starts again at exec."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thread_counts() -> dict:
    """The BLAS and OpenMP thread pools numpy and FAISS run on (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set them)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"faiss_openmp": load_faiss().omp_get_max_threads()}
    return {f"{info['internal_api']} ({Path(info['filepath']).parent.name})": info["num_threads"]
            for info in threadpool_info()}


def median_ms(function, inputs) -> float:
    times = []
    for value in inputs:
        started = time.perf_counter()
        function(value)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def built(kind: str, vectors: np.ndarray, owners: list[str], nprobe: int):
    """The index identify(index=kind) builds for each call (the same classes, so the parts time what it does)."""
    return MatrixIndex(vectors, owners) if kind == "matrix" else FaissIndex(vectors, owners, nprobe)


def parts(kind: str, gallery: Gallery, queries: np.ndarray, args) -> dict:
    """The parts of one identify call, timed apart: read the file, build the index, search every query at
    once; then single queries against the same built index."""
    started = time.perf_counter()
    vectors, owners = gallery.embeddings()
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    index = built(kind, vectors, owners, args.nprobe)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    index.best_people(queries, TOP_K)
    search_batch_s = time.perf_counter() - started
    return {"read_s": read_s, "build_s": build_s, "search_batch_ms_per_query": search_batch_s / len(queries) * 1e3,
            "search_single_ms": median_ms(lambda query: index.best_people(query[None], TOP_K), queries[:args.single])}


def worker(kind: str, folder: Path, args) -> dict:
    """One index's figures, measured in this (fresh) process."""
    baseline_mib = peak_rss_mib()
    queries = np.load(folder / "queries.npy")
    with Gallery.open(folder / "gallery.db", FINGERPRINT, args.dimension) as gallery:
        figures = parts(kind, gallery, queries, args)  # its index is freed before identify builds its own
        started = time.perf_counter()
        matches = gallery.identify(queries, TOP_K, index=kind, nprobe=args.nprobe)
        identify_batch_s = time.perf_counter() - started
        identify_call_ms = median_ms(lambda query: gallery.identify(query, TOP_K, index=kind, nprobe=args.nprobe),
                                     queries[:args.calls])
    return {**figures, "identify_batch_s": identify_batch_s,
            "identify_batch_ms_per_query": identify_batch_s / len(queries) * 1e3, "identify_call_ms": identify_call_ms,
            "baseline_rss_mib": baseline_mib, "peak_rss_mib": peak_rss_mib(),
            "top1": [match.person for match in matches]}


def run_worker(kind: str, folder: Path, args) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--folder", str(folder), *forwarded(args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the {kind} worker exited {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def forwarded(args) -> list[str]:
    return ["--dimension", str(args.dimension), "--nprobe", str(args.nprobe), "--single", str(args.single),
            "--calls", str(args.calls)]


def build_gallery(path: Path, vectors: np.ndarray, one_by_one: int) -> dict:
    """Enrol every person (vectors: people x per_person x dimension), the first `one_by_one` with one enroll
    call each and the rest with one enroll_many; ms per person for each way."""
    names = [f"person_{number:06d}" for number in range(len(vectors))]
    one_by_one = min(one_by_one, len(vectors))
    with Gallery.open(path, FINGERPRINT, vectors.shape[2]) as gallery:
        started = time.perf_counter()
        for name, embeddings in zip(names[:one_by_one], vectors[:one_by_one]):
            gallery.enroll(name, embeddings)
        one_by_one_s = time.perf_counter() - started
        started = time.perf_counter()
        gallery.enroll_many((name, embeddings, None)
                            for name, embeddings in zip(names[one_by_one:], vectors[one_by_one:]))
        bulk_s = time.perf_counter() - started
    bulk = len(vectors) - one_by_one
    return {"people_one_by_one": one_by_one, "enroll_ms_per_person": one_by_one_s / max(one_by_one, 1) * 1e3,
            "people_bulk": bulk, "enroll_many_ms_per_person": bulk_s / max(bulk, 1) * 1e3,
            "enroll_all_one_by_one_s_estimate": one_by_one_s / max(one_by_one, 1) * len(vectors),
            "file_mib": path.stat().st_size / 2**20}


def crossover(flat: np.ndarray, owners: list[str], sizes: list[int], args, rng) -> list[dict]:
    """Per gallery size: each index's build time and search time per query (one at a time, and all at once),
    and the queries one identify call needs before FAISS's longer build is paid back by its faster search."""
    rows = []
    for size in sizes:
        vectors, people = flat[:size], owners[:size]
        queries = noisy(vectors[rng.choice(size, args.queries)], NOISE, rng)
        row = {"embeddings": size, "faiss_kind": "IVFFlat" if size >= IVF_FROM else "FlatIP",
               "lists": list_count(size) if size >= IVF_FROM else None}
        indexes = {}
        for kind in ("matrix", "faiss"):
            started = time.perf_counter()
            indexes[kind] = built(kind, vectors, people, args.nprobe)
            row[f"{kind}_build_s"] = time.perf_counter() - started
        single = {kind: [] for kind in indexes}
        for query in queries[:args.single]:
            for kind, index in indexes.items():  # alternating, so a busy moment of the machine hits both alike
                started = time.perf_counter()
                index.best_people(query[None], TOP_K)
                single[kind].append(time.perf_counter() - started)
        for kind, index in indexes.items():
            row[f"{kind}_single_ms"] = statistics.median(single[kind]) * 1e3
            started = time.perf_counter()
            index.best_people(queries, TOP_K)
            row[f"{kind}_batch_ms_per_query"] = (time.perf_counter() - started) / len(queries) * 1e3
        saved_ms = row["matrix_batch_ms_per_query"] - row["faiss_batch_ms_per_query"]
        extra_build_ms = (row["faiss_build_s"] - row["matrix_build_s"]) * 1e3
        row["break_even_queries_per_call"] = round(max(extra_build_ms, 0) / saved_ms) if saved_ms > 0 else None
        rows.append(row)
        print(f"  {size} embeddings: single query {row['matrix_single_ms']:.3f} ms matrix, "
              f"{row['faiss_single_ms']:.3f} ms faiss; faiss build {row['faiss_build_s']:.2f} s", flush=True)
    return rows


def markdown(result: dict) -> str:
    setup, enrol = result["setup"], result["enrolment"]
    matrix, faiss = result["indexes"]["matrix"], result["indexes"]["faiss"]
    lines = [f"### gallery_speed: identify on {setup['embeddings']:,} embeddings ({setup['people']:,} people x "
             f"{setup['per_person']}, dimension {setup['dimension']}), {setup['queries']:,} queries, top_k {TOP_K}; "
             f"faiss: {setup['faiss_lists']} lists, nprobe {setup['nprobe']}; {setup['cores']} cores, load average "
             f"{setup['load_average_1min'][0]} at the start, {setup['load_average_1min'][1]} at the end", "",
             "| | matrix | faiss |", "|---|---|---|"]
    rows = [("read the gallery file, s", "read_s", "{:.3f}"), ("build the index, s", "build_s", "{:.3f}"),
            ("search, all queries at once: ms per query", "search_batch_ms_per_query", "{:.3f}"),
            ("search, one query at a time: median ms", "search_single_ms", "{:.3f}"),
            (f"identify({setup['queries']:,} queries): s in all", "identify_batch_s", "{:.2f}"),
            (f"identify({setup['queries']:,} queries): ms per query", "identify_batch_ms_per_query", "{:.3f}"),
            ("identify(one query): median ms per call", "identify_call_ms", "{:.1f}"),
            ("peak RSS of the process, MiB (after imports)", "peak_rss_mib", "{:.0f}")]
    for label, key, form in rows:
        cells = [form.format(figures[key]) for figures in (matrix, faiss)]
        if key == "peak_rss_mib":
            cells = [f"{cell} ({figures['baseline_rss_mib']:.0f})" for cell, figures in zip(cells, (matrix, faiss))]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    lines.append(f"| top-1 person right (the copied embedding's) | {result['top1_right']['matrix']:.4f} | "
                 f"{result['top1_right']['faiss']:.4f} |")
    lines += ["", f"- top-1 agreement, faiss with matrix: {result['top1_agreement']:.4f}",
              f"- enrolment: {enrol['enroll_ms_per_person']:.2f} ms per person with one enroll call each (first "
              f"{enrol['people_one_by_one']:,}; all {setup['people']:,} so: "
              f"~{enrol['enroll_all_one_by_one_s_estimate']:.0f} s), "
              f"{enrol['enroll_many_ms_per_person']:.3f} ms per person with enroll_many (the other "
              f"{enrol['people_bulk']:,}); file {enrol['file_mib']:.0f} MiB", "",
              "Crossover, search only (index built), median per query:", "",
              "| embeddings | faiss index | matrix 1 query ms | faiss 1 query ms | matrix batch ms/query | "
              "faiss batch ms/query | faiss build s | queries per call to repay the build |",
              "|---|---|---|---|---|---|---|---|"]
    for row in result["crossover"]:
        kind = f"{row['faiss_kind']} ({row['lists']} lists)" if row["lists"] else row["faiss_kind"]
        repay = "-" if row["break_even_queries_per_call"] is None else f"{row['break_even_queries_per_call']:,}"
        lines.append(f"| {row['embeddings']:,} | {kind} | {row['matrix_single_ms']:.3f} | "
                     f"{row['faiss_single_ms']:.3f} | {row['matrix_batch_ms_per_query']:.4f} | "
                     f"{row['faiss_batch_ms_per_query']:.4f} | {row['faiss_build_s']:.3f} | {repay} |")
    ratios = ", ".join(f"{row['faiss_single_ms'] / row['matrix_single_ms']:.2f} at {row['embeddings']:,}"
                       + ("" if row["lists"] else " (flat)") for row in result["crossover"])
    faster, largest = result["approximate_search_faster_from"], result["crossover"][-1]
    repay = largest["break_even_queries_per_call"]
    threads = ", ".join(f"{name} {count}" for name, count in setup["threads"].items())
    lines += ["", f"- one query against a built index, FAISS's time / the matrix's: {ratios}",
              f"- inverted lists answered one query faster than the matrix from {faster:,} embeddings on (every size "
              "measured from there)" if faster else "- inverted lists were not faster than the matrix at every size",
              f"- but each identify call builds the index again: at {largest['embeddings']:,} embeddings FAISS pays "
              f"that back past {'-' if repay is None else f'{repay:,}'} queries in one call; a call of one "
              "query is faster with the matrix (identify(one query) above)",
              f"- threads: {threads}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", type=int, default=100_000)
    parser.add_argument("--per-person", type=int, default=5)
    parser.add_argument("--dimension", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000, help="queries per batched identify call")
    parser.add_argument("--single", type=int, default=300, help="queries timed one at a time against a built index")
    parser.add_argument("--calls", type=int, default=10, help="identify calls of one query each (each builds)")
    parser.add_argument("--one-by-one", type=int, default=2000, help="people enrolled one enroll call each")
    parser.add_argument("--sizes", default="1000,3000,10000,30000,100000", help="gallery sizes for the crossover")
    parser.add_argument("--nprobe", type=int, default=NPROBE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("matrix", "faiss"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.folder), args)))
        return
    load_faiss()  # a missing faiss-cpu is named now, not after the gallery is built
    load_before = os.getloadavg()[0]  # other work on the machine slows what is measured: reported with it
    rng = np.random.default_rng(args.seed)
    people = args.embeddings // args.per_person
    directions = unit(rng.normal(size=(people, 1, args.dimension)).astype(np.float32))
    vectors = noisy(np.repeat(directions, args.per_person, axis=1), SPREAD, rng)
    flat = vectors.reshape(-1, args.dimension)
    owners = [f"person_{number:06d}" for number in range(people) for _ in range(args.per_person)]
    copied = rng.choice(len(flat), args.queries)
    sizes = [size for size in map(int, args.sizes.split(",")) if size <= len(flat)]
    with tempfile.TemporaryDirectory(prefix="gallery-speed-") as scratch:
        folder = Path(scratch)
        print(f"enrolling {people:,} people x {args.per_person} ...", flush=True)
        enrolment = build_gallery(folder / "gallery.db", vectors, args.one_by_one)
        np.save(folder / "queries.npy", noisy(flat[copied], NOISE, rng))
        indexes = {}
        for kind in ("matrix", "faiss"):
            print(f"{kind} ...", flush=True)
            indexes[kind] = run_worker(kind, folder, args)
    truth = [owners[i] for i in copied]
    top1 = {kind: indexes[kind].pop("top1") for kind in indexes}
    print("crossover ...", flush=True)
    rows = crossover(flat, owners, sizes, args, rng)
    faster = None  # the smallest size from which inverted lists (not FAISS's flat index, the same exact search as
    for row in reversed(rows):  # the matrix's) answer one query faster, at every size measured from there
        if not row["lists"] or row["faiss_single_ms"] >= row["matrix_single_ms"]:
            break
        faster = row["embeddings"]
    result = {
        "setup": {"embeddings": len(flat), "people": people, "per_person": args.per_person,
                  "dimension": args.dimension,
                  "queries": args.queries, "single": args.single, "calls": args.calls, "nprobe": args.nprobe,
                  "faiss_lists": list_count(len(flat)) if len(flat) >= IVF_FROM else "flat", "cores": os.cpu_count(),
                  "threads": thread_counts(),
                  "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "enrolment": enrolment, "indexes": indexes,
        "top1_agreement": float(np.mean([a == b for a, b in zip(top1["matrix"], top1["faiss"])])),
        "top1_right": {kind: float(np.mean([a == b for a, b in zip(top1[kind], truth)])) for kind in top1},
        "crossover": rows, "approximate_search_faster_from": faster,
    }
    print(json.dumps(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
