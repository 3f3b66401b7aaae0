"""A fitted classical model (the method with its codebook, and the scikit-learn classifier) saved by
imgrec-features for imgrec-predict.

scikit-learn models can only be saved as pickles (joblib), and loading a pickle can run any code in it.
So the file is signed: an HMAC-SHA256 of its bytes with a key kept on this machine (created on first use,
readable by its owner only; IMGREC_SIGNING_KEY names another file) is written in the manifest beside it,
and a file is unpickled only when that signature matches. A model someone else sends, or a file changed
after imgrec wrote it, is refused before anything in it is read.
"""

import hashlib
import hmac
import io
import json
import os
import secrets
from pathlib import Path

from imgrec.errors import ImgrecError

MODEL_FILE, MANIFEST_FILE = "classical_model.joblib", "classical_model.json"
KEY_BYTES = 32


def key_path() -> Path:
    return Path(os.environ.get("IMGREC_SIGNING_KEY", Path.home() / ".config" / "imgrec" / "signing.key"))


def signing_key() -> bytes:
    """This machine's key, made (owner-only) the first time a model is saved."""
    path = key_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(descriptor, "wb") as file:
                file.write(secrets.token_bytes(KEY_BYTES))
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ImgrecError(f"the signing key {path} is damaged ({len(key)} bytes, not {KEY_BYTES}); delete it (models "
                          "saved with it will need refitting) or set IMGREC_SIGNING_KEY to the right file")
    return key


def _signature(data: bytes) -> str:
    return hmac.new(signing_key(), data, hashlib.sha256).hexdigest()


def _signed(data: bytes, manifest: dict) -> bytes:
    """What the signature covers: the pickle and the manifest beside it (class names, image size and the
    method's settings steer prediction, so an edited manifest is refused as an edited pickle is)."""
    described = {key: value for key, value in manifest.items() if key != "hmac_sha256"}
    return data + b"\0" + json.dumps(described, sort_keys=True, separators=(",", ":")).encode()


def save_classical_model(run_dir: Path, model: dict, manifest: dict) -> Path:
    """`model` (picklable: {features, classifier}) as classical_model.joblib, and the manifest (method, classes,
    image size, checksum, signature) as classical_model.json, each written whole."""
    import joblib

    from imgrec.evaluation.reports import write_whole

    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    data = buffer.getvalue()
    write_whole(run_dir / MODEL_FILE, data)
    manifest = {**manifest, "file": MODEL_FILE, "sha256": hashlib.sha256(data).hexdigest()}
    write_whole(run_dir / MANIFEST_FILE, json.dumps({**manifest, "hmac_sha256": _signature(_signed(data, manifest))},
                                                    indent=2))
    return run_dir / MODEL_FILE


def load_classical_model(run_dir: str | Path) -> tuple[dict, dict]:
    """(model, manifest) of a run folder imgrec-features wrote on this machine; anything else is refused."""
    import joblib

    run_dir = Path(run_dir).expanduser()
    manifest_path, model_path = run_dir / MANIFEST_FILE, run_dir / MODEL_FILE
    if not manifest_path.is_file() or not model_path.is_file():
        raise ImgrecError(f"features_run={run_dir}: no {MANIFEST_FILE} and {MODEL_FILE} there; give the run folder "
                          "of an imgrec-features run with a classical method (method=sift, hog, ...)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ImgrecError(f"{manifest_path} is not valid JSON ({error}); refit with imgrec-features") from error
    data = model_path.read_bytes()
    expected = manifest.get("hmac_sha256") if isinstance(manifest, dict) else None
    if not isinstance(expected, str) or not hmac.compare_digest(expected, _signature(_signed(data, manifest))):
        raise ImgrecError(f"refused to load {model_path}: its signature does not match this machine's key, so imgrec "
                          f"did not write it here, or it or {MANIFEST_FILE} changed since (a pickle can run code when "
                          "loaded). Refit it with imgrec-features on this machine")
    return joblib.load(io.BytesIO(data)), manifest
