"""imgrec-gallery: enrol people's face embeddings in a gallery file, identify and verify faces against it,
choose its acceptance threshold, remove people, list who is enrolled."""

import logging
from pathlib import Path

from omegaconf import DictConfig

from imgrec.commands.entry import hydra_command, run_command
from imgrec.config import check_tool_config, resolve_checkpoint_shortcut
from imgrec.errors import ImgrecError
from imgrec.values import is_number, is_whole

log = logging.getLogger("imgrec")
ACTIONS = ("enroll", "identify", "verify", "remove", "list", "calibrate")
NEEDS_MODEL = ("enroll", "identify", "verify", "calibrate")


def check_settings(cfg: DictConfig) -> None:
    if cfg.action is None:
        raise ImgrecError(f"action= is required: one of {', '.join(ACTIONS)} (imgrec-gallery --help shows examples)")
    if cfg.action not in ACTIONS:
        raise ImgrecError(f"action={cfg.action!r} must be one of {', '.join(ACTIONS)}")
    if cfg.action in NEEDS_MODEL and not cfg.ckpt_path:
        raise ImgrecError(f"action={cfg.action} needs ckpt_path=<a task=embedding checkpoint> (its best.pt)")
    if not cfg.gallery:
        raise ImgrecError("gallery=<file> is required, e.g. gallery=staff.db")
    if not is_whole(cfg.top_k, 1):
        raise ImgrecError(f"top_k={cfg.top_k!r} must be a whole number >= 1")
    if cfg.threshold is not None and (not is_number(cfg.threshold) or not -1 <= cfg.threshold <= 1):
        raise ImgrecError(f"threshold={cfg.threshold!r} must be null (the gallery's) or a cosine score in [-1, 1]")
    if not is_number(cfg.target_far) or not 0 < cfg.target_far < 1:
        raise ImgrecError(f"target_far={cfg.target_far!r} must be a false-accept rate in (0, 1), e.g. 0.001")
    if cfg.index not in ("matrix", "faiss"):
        raise ImgrecError(f"index={cfg.index!r} must be matrix (exact) or faiss (approximate, for large galleries)")
    if not isinstance(cfg.show_paths, bool):
        raise ImgrecError(f"show_paths={cfg.show_paths!r} must be true or false")
    if cfg.action == "enroll" and (cfg.folder is None) == (cfg.person is None):
        raise ImgrecError("action=enroll takes person=<id> with images=[...], or folder=<root/<person>/<image>>, "
                          "not both or neither")
    for key in ("person", "display_name"):
        value = cfg.get(key)
        if value is not None and not isinstance(value, str):
            raise ImgrecError(f"{key}={value!r} was read as a {type(value).__name__}, not a name; quote it: "
                              f"{key}='{value}' (in a shell: \"{key}='{value}'\")")
    if cfg.action == "remove" and not cfg.person:
        raise ImgrecError("action=remove needs person=<id> (`imgrec-gallery action=list` shows who is enrolled)")


def gallery_command(cfg: DictConfig) -> dict:
    import sqlite3

    try:
        return gallery_action(cfg)
    except sqlite3.OperationalError as error:  # a read-only file or folder, a locked or vanished database
        raise ImgrecError(f"gallery '{cfg.gallery}' could not be used: {error}; check that the file and its folder "
                          "are writable (SQLite writes a journal beside the file)") from None
    except sqlite3.DatabaseError as error:
        raise ImgrecError(f"gallery '{cfg.gallery}' is damaged ({error}); use a backup, or a new gallery "
                          "file") from None


def gallery_action(cfg: DictConfig) -> dict:
    from imgrec.gallery.database import Gallery

    check_tool_config(cfg)
    if cfg.ckpt_path:
        resolve_checkpoint_shortcut(cfg)
    check_settings(cfg)
    if cfg.action == "list":
        with Gallery.open_existing(cfg.gallery) as gallery:
            return list_people(gallery)
    if cfg.action == "remove":
        with Gallery.open_existing(cfg.gallery) as gallery:
            removed = gallery.remove(str(cfg.person))
            log.info(f"removed '{cfg.person}' and their {removed} embedding(s) from {gallery.path}; the file was "
                     "rebuilt without them")
            return {"removed": str(cfg.person), "embeddings": removed}
    from imgrec.evaluation.inference import inference_device
    from imgrec.gallery.embedder import FaceEmbedder

    embedder = FaceEmbedder.load(cfg.ckpt_path, inference_device(cfg), cfg.batch_size)
    if cfg.action == "verify":
        return verify(cfg, embedder)
    if cfg.action == "identify" and not Path(str(cfg.gallery)).expanduser().is_file():
        raise ImgrecError(f"gallery '{cfg.gallery}' does not exist; enrol people first (action=enroll)")
    with Gallery.open(cfg.gallery, embedder.fingerprint, embedder.dimension) as gallery:
        if cfg.action == "enroll":
            return enroll(cfg, embedder, gallery)
        if cfg.action == "calibrate":
            return calibrate(cfg, embedder, gallery)
        return identify(cfg, embedder, gallery)


def list_people(gallery) -> dict:
    people = gallery.people()
    threshold, rates = gallery.threshold, gallery.threshold_rates
    chosen = f" (chosen at FAR {rates[0]:.5f}, FRR {rates[1]:.4f})" if rates else ""
    shown = f"; threshold {threshold:.4f}{chosen}" if threshold is not None else "; no threshold yet (action=calibrate)"
    lines = [f"{len(people)} people in {gallery.path}{shown}"]
    lines += [f"  {p.person}" + (f" ({p.display_name})" if p.display_name else "") + f": {p.embeddings} embedding(s)"
              for p in people]
    log.info("\n".join(lines))
    return {"people": [{"person": p.person, "display_name": p.display_name, "embeddings": p.embeddings}
                       for p in people], "threshold": threshold}


def enroll(cfg: DictConfig, embedder, gallery) -> dict:
    from imgrec.data.identities import person_folders
    from imgrec.gallery.embedder import image_files

    if cfg.folder is not None:
        root = Path(str(cfg.folder)).expanduser()
        if not root.is_dir():
            raise ImgrecError(f"folder={cfg.folder} is not a folder; expected root/<person>/<image>")
        paths, persons = person_folders(root)
        groups: dict[str, list[Path]] = {}
        for path, person in zip(paths, persons):
            groups.setdefault(person, []).append(path)
    else:
        groups = {str(cfg.person): image_files(list(cfg.images))}
        if not groups[str(cfg.person)]:
            raise ImgrecError("action=enroll person=... needs images=[file, folder or glob, ...]")
    enrolled, skipped = {}, []
    for person, paths in groups.items():
        vectors, kept, left_out = embedder.embed(paths)
        skipped += left_out
        if left_out and not cfg.show_paths:  # which files: only when asked (their names may name the person)
            reasons = sorted({reason for _, reason in left_out})
            log.warning(f"'{person}': {len(left_out)} image(s) left out ({'; '.join(reasons)}); show_paths=true "
                        "names them")
        if not len(vectors):
            log.warning(f"'{person}': no usable face in {len(paths)} image(s); not enrolled")
            continue
        total = gallery.enroll(person, vectors, cfg.display_name if cfg.folder is None else None)
        enrolled[person] = total
        detail = f" ({', '.join(map(str, kept))})" if cfg.show_paths else ""
        log.info(f"enrolled '{person}': {len(kept)} image(s){detail}; {total} embedding(s) in the gallery")
    for path, reason in skipped if cfg.show_paths else []:
        log.warning(f"left out {path}: {reason}")
    if not enrolled:
        raise ImgrecError(f"nobody was enrolled: no usable face in any of the images ({len(skipped)} left out)")
    return {"enrolled": enrolled, "skipped": len(skipped)}


def identify(cfg: DictConfig, embedder, gallery) -> dict:
    from imgrec.evaluation.reports import csv_text, write_whole
    from imgrec.gallery.embedder import image_files

    paths = image_files(list(cfg.images))
    if not paths:
        raise ImgrecError("action=identify needs images=[file, folder or glob, ...]")
    vectors, kept, skipped = embedder.embed(paths)
    for path, reason in skipped:
        log.warning(f"{path}: {reason}")
    if not len(vectors):
        raise ImgrecError(f"no usable face in any of the {len(paths)} image(s)")
    threshold = cfg.threshold if cfg.threshold is not None else gallery.threshold
    if threshold is None:
        log.warning("no threshold: every face is named as its best match, strangers too; choose one with "
                    "action=calibrate (or give threshold=...)")
    matches = gallery.identify(vectors, cfg.top_k, threshold, index=cfg.index)
    rows = []
    for path, match in zip(kept, matches):
        candidates = "; ".join(f"{person} {score:.4f}" for person, score in match.candidates)
        log.info(f"{path}: {match.person} ({match.score:.4f})   candidates: {candidates}")
        rows.append([str(path), match.person, f"{match.score:.6f}", candidates])
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_whole(run_dir / "identify.csv", csv_text(["image", "person", "score", "candidates"],
                                                   rows + [[p, "", "", r] for p, r in skipped]))
    return {"threshold": threshold, "matches": [{"image": str(path), "person": m.person, "score": m.score,
                                                 "candidates": m.candidates} for path, m in zip(kept, matches)]}


def verify(cfg: DictConfig, embedder) -> dict:
    from imgrec.gallery.database import Gallery
    from imgrec.gallery.embedder import image_files

    paths = image_files(list(cfg.images))
    if len(paths) != 2:
        raise ImgrecError(f"action=verify compares two images: images=[first.jpg,second.jpg]; got {len(paths)}")
    vectors, kept, skipped = embedder.embed(paths)
    if len(kept) != 2:
        raise ImgrecError(f"action=verify: {skipped[0][0]}: {skipped[0][1]}")
    threshold = cfg.threshold
    if threshold is None:
        if not Path(str(cfg.gallery)).expanduser().is_file():
            raise ImgrecError("action=verify needs a threshold: threshold=<cosine>, or gallery=<file> calibrated with "
                              "action=calibrate")
        with Gallery.open(cfg.gallery, embedder.fingerprint, embedder.dimension) as gallery:
            threshold = gallery.threshold
        if threshold is None:
            raise ImgrecError(f"gallery {cfg.gallery} has no threshold yet: run action=calibrate, or give "
                              "threshold=...")
    score = float(vectors[0] @ vectors[1])
    same = score >= threshold
    log.info(f"{'same person' if same else 'different people'}: score {score:.4f}, threshold {threshold:.4f}")
    return {"same": bool(same), "score": score, "threshold": float(threshold)}


def calibrate(cfg: DictConfig, embedder, gallery) -> dict:
    """The threshold accepting at most target_far of impostor pairs, chosen on people apart from the test:
    the checkpoint's validation split (its people were not trained on with split_by=identity), or `folder`."""
    from imgrec.commands.eval import stored_dataset
    from imgrec.data.building import build_dataset
    from imgrec.data.identities import person_folders
    from imgrec.tasks.embedding_scores import pair_scores, threshold_for_far

    if cfg.folder is not None:
        root = Path(str(cfg.folder)).expanduser()
        if not root.is_dir():
            raise ImgrecError(f"folder={cfg.folder} is not a folder; expected root/<person>/<image>")
        paths, persons = person_folders(root)
        vectors, kept, _ = embedder.embed(paths)
        person_of = dict(zip(paths, persons))
        labels = [person_of[path] for path in kept]
        source = f"folder {cfg.folder}"
    else:
        from imgrec.evaluation.inference import evaluate
        from imgrec.data.loaders import make_loader

        trained = embedder.trained
        dataset_cfg = stored_dataset(trained.state["config"].get("dataset"))
        try:
            splits = build_dataset(dataset_cfg, "embedding")
        except ImgrecError as error:
            raise ImgrecError(f"{error} (the checkpoint's own data, read to calibrate on its validation people; "
                              "give folder=<person folders> to calibrate on others)") from None
        evaluation = evaluate(trained, make_loader(splits.val, cfg.batch_size, trained.mean, trained.std,
                                                   embedder.device, num_workers=0))
        vectors, labels = evaluation.embeddings.numpy(), evaluation.labels.numpy()
        source = "the checkpoint's validation split"
    genuine, impostor = pair_scores(vectors, labels)
    point = threshold_for_far(genuine, impostor, cfg.target_far)
    gallery.set_threshold(point.threshold, point.far, point.frr)
    finest = 1 / len(impostor)
    log.info(f"threshold {point.threshold:.4f} chosen on {source} ({len(genuine)} genuine, {len(impostor)} impostor "
             f"pairs): FAR {point.far:.5f}, FRR {point.frr:.4f} (target FAR {cfg.target_far}); stored in "
             f"{gallery.path}")
    if cfg.target_far < finest:
        log.warning(f"target_far={cfg.target_far} is below the finest rate {len(impostor)} impostor pairs can measure "
                    f"({finest:.2g}): the threshold sits just above the best impostor score; calibrate on more people "
                    f"(about {int(10 / cfg.target_far):,} impostor pairs measure it to +-30%)")
    return {"threshold": point.threshold, "far": point.far, "frr": point.frr, "genuine_pairs": len(genuine),
            "impostor_pairs": len(impostor)}


@hydra_command("gallery", task_name="gallery",
                interrupted_note="the gallery holds everyone enrolled before it (each person is one transaction); "
                                 "`action=list` shows who, and enrolling a listed person again adds their images again")
def main(cfg: DictConfig) -> None:
    run_command(gallery_command, cfg, record_command=False)


if __name__ == "__main__":
    main()
