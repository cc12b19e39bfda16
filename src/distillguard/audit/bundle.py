"""The audit's evidence bundle: one directory that a third party can check without trusting us.

Layout (every path relative to the bundle)::

    results.json        the audit result (verdict, tests, series) without the transcripts
    transcripts.jsonl   every prompt sent and every response received, one JSON object per line
    config.json         how the audit was run (no secrets: API keys and the watermark key are redacted)
    versions.json       python, platform, torch, transformers, distillguard, ... that produced it
    timestamps.json     audit started / finished, bundle written (UTC)
    inputs.json         every input (prompt file, model dirs, URLs): original location, SHA-256, size
    inputs/             copies of the input files small enough to carry (prompt files)
    plots/*.png         the figures of the report
    report.html         self-contained report (inline CSS, images as data URIs, no network)
    public_key.pem      the Ed25519 public key that signed the manifest
    manifest.json       SHA-256 and size of every file above, the signer's fingerprint, the verdict
    manifest.sig        Ed25519 signature over the exact bytes of manifest.json

Why this shape: evidence has to survive someone asking "how do you know nobody changed it since?". The
manifest pins every byte of every other file; the signature pins the manifest; ``verify_bundle`` recomputes
all of it and names the file that no longer matches (or that was added or removed).

**Pin the public key.** A bundle carries its own public key, so on its own the signature only proves that the
files are as *someone* signed them: whoever alters a file can recompute the manifest, generate a fresh key and
re-sign. The protection against that is to verify against a key obtained independently (published, handed
to the court, kept with the case file): ``distillguard audit verify BUNDLE --public-key signer.pem`` (or the
``sha256:...`` fingerprint that ``distillguard audit keygen`` prints). Without a pinned key ``verify`` says
so.

The signature can also be checked without distillguard: ``manifest.sig`` is canonical JSON whose
``signature`` field is the base64 of a raw Ed25519 signature over ``manifest.json``; e.g.
``openssl pkeyutl -verify -pubin -inkey public_key.pem -rawin -in manifest.json -sigfile sig.bin`` after
base64-decoding that field into ``sig.bin``, and ``sha256sum`` for each file listed in the manifest.

Writing is atomic: the bundle is built in a hidden ``.NAME.partial-*`` directory next to the target and
renamed into place only once it is signed, so a crash never leaves something at the target that looks like a
finished bundle.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import platform
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from distillguard.config import home
from distillguard.errors import UserError

FORMAT = "distillguard-audit-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = "public_key.pem"
RESULTS = "results.json"
TRANSCRIPTS = "transcripts.jsonl"
REPORT = "report.html"
#: Input files up to this size are copied into ``inputs/``; larger ones (and model dirs) are only hashed.
COPY_LIMIT = 64 * 1024 * 1024
#: Config fields whose values are secrets: never written into a bundle that may be handed to others.
SECRET_FIELDS = frozenset(
    {"api_key", "api_keys", "key", "keys", "watermark_key", "secret", "password", "passphrase", "token"}
)
REDACTED = "[redacted]"


# -- keys ---------------------------------------------------------------------------------------------------


def default_signing_key_path() -> Path:
    """Where the installation's audit signing key lives: ``home()/audit/signing_key.pem``."""
    return home() / "audit" / "signing_key.pem"


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key: short enough to read out, long enough to pin."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of a key (what ``public_key.pem`` holds)."""
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_signing_key(out: Path, *, overwrite: bool = False) -> Ed25519PrivateKey:
    """Write a new Ed25519 private key to ``out`` (PKCS#8 PEM, mode 0600) and ``<stem>.pub.pem`` beside it.

    Refuses to replace an existing key unless ``overwrite``: losing a signing key means earlier bundles can
    only be checked against the public key published at the time.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"signing key {out} already exists; pass --force to replace it")
    key = Ed25519PrivateKey.generate()
    _write_private_key(out, key, exclusive=False)
    public_path(out).write_bytes(public_key_pem(key))
    return key


def public_path(private_key_path: Path) -> Path:
    """``key.pem`` -> ``key.pub.pem``: where keygen writes the public half to publish."""
    return private_key_path.with_name(private_key_path.stem + ".pub.pem")


def _write_private_key(path: Path, key: Ed25519PrivateKey, *, exclusive: bool) -> None:
    """Write via a 0600 temp file and a link/rename, so the key is never briefly world-readable or torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            with contextlib.suppress(FileExistsError):  # another process won the race: keep theirs
                os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_signing_key(path: Path | None = None) -> Ed25519PrivateKey:
    """The key that signs bundles: the PEM at ``path``, or the installation's default, created on first use.

    An explicitly given key must exist (a typo must not silently sign with a fresh key nobody published).
    """
    if path is None:
        path = default_signing_key_path()
        if not path.exists():
            _write_private_key(path, Ed25519PrivateKey.generate(), exclusive=True)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"signing key not found: {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UserError(f"signing key {path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"signing key {path} is not an Ed25519 key")
    return key


def load_public_key(source: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file holding the public key or the private key."""
    path = Path(source)
    if not path.is_file():
        raise UserError(f"public key file not found: {path}")
    data = path.read_bytes()
    try:
        key: Any = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise UserError(f"{path} is not a PEM public or private key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 key")
    return key


# -- writing ------------------------------------------------------------------------------------------------


def write_bundle(
    result: dict[str, Any],
    out_dir: Path,
    *,
    signing_key: Path | None = None,
    inputs: dict[str, Path | str] | None = None,
    overwrite: bool = False,
    hash_only: Collection[str] = (),
) -> Path:
    """Write ``result`` (what ``run_audit`` returns) as a signed evidence bundle at ``out_dir``.

    ``inputs`` names what the audit read (``{"prompts": Path, "suspect": Path | URL, ...}``): files up to
    ``COPY_LIMIT`` are copied into ``inputs/``, directories are hashed file by file, URLs are recorded.
    Inputs named in ``hash_only`` are hashed, never copied (a ledger export holds other accounts' traffic).
    ``out_dir`` must not exist, be empty, or (with ``overwrite``) hold an older bundle; anything else is
    refused so that no unrelated file ever ends up inside the signed evidence. Returns ``out_dir``.
    """
    from distillguard.audit import report

    out_dir = Path(out_dir)
    check_target(out_dir, overwrite=overwrite)
    key = load_signing_key(signing_key)
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    try:
        written = _now()
        fp = fingerprint(key)
        result = _json_safe(result)
        transcripts = list(result.get("transcripts") or [])
        body = {k: v for k, v in result.items() if k != "transcripts"}
        body["config"] = _redact(body.get("config") or {})
        body["transcripts"] = {"file": TRANSCRIPTS, "count": len(transcripts)}
        _write_json(tmp / RESULTS, body)
        with (tmp / TRANSCRIPTS).open("w", encoding="utf-8") as fh:
            for i, t in enumerate(transcripts):
                fh.write(json.dumps({"index": i, **t}, ensure_ascii=False, sort_keys=True) + "\n")
        _write_json(tmp / "config.json", body["config"])
        _write_json(tmp / "versions.json", {**collect_versions(), **(result.get("versions") or {})})
        _write_json(
            tmp / "timestamps.json",
            {"started": result.get("started"), "finished": result.get("finished"), "bundle_written": written},
        )
        _write_json(tmp / "inputs.json", _record_inputs(inputs or {}, tmp / "inputs", hash_only))
        plots = report.render_plots(result)
        if plots:
            (tmp / "plots").mkdir()
        for name, png in plots.items():
            (tmp / "plots" / f"{name}.png").write_bytes(png)
        html = report.render_html(result, plots=plots, fingerprint=fp, written=written)
        (tmp / REPORT).write_text(html, encoding="utf-8")
        (tmp / PUBLIC_KEY).write_bytes(public_key_pem(key))
        manifest = {
            "format": FORMAT,
            "created": written,
            "generator": {"name": "distillguard", "version": _version("distillguard")},
            "signer": {"algorithm": "ed25519", "public_key": PUBLIC_KEY, "fingerprint": fp},
            "summary": {
                "verdict": result.get("verdict"),
                "combined_p_value": result.get("combined_p_value"),
                "alpha": result.get("alpha"),
            },
            "files": {rel: _file_entry(tmp / rel) for rel in _walk(tmp)},
        }
        manifest_bytes = _canonical(manifest)
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        (tmp / SIGNATURE).write_bytes(_signature_doc(key, manifest_bytes))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the evidence from the other people who must read it
        _fsync_tree(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def check_target(out_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse a target that would mix unrelated files into the evidence, before any work is done."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"bundle target {out_dir} exists and is not a directory")
    if not any(out_dir.iterdir()):
        return
    if not _is_bundle(out_dir):
        raise UserError(f"bundle target {out_dir} is not empty and is not an audit bundle; refusing to write")
    if not overwrite:
        raise UserError(f"{out_dir} already holds an audit bundle; pass --overwrite to replace it")


def _is_bundle(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """rename(2) is atomic; an empty target directory is replaced by it, an old bundle is swapped out."""
    old: Path | None = None
    if out_dir.exists() and any(out_dir.iterdir()):
        old = out_dir.with_name(f".{out_dir.name}.old-{secrets.token_hex(4)}")
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out_dir.absolute().parent)


def _signature_doc(key: Ed25519PrivateKey, manifest_bytes: bytes) -> bytes:
    return _canonical(
        {
            "algorithm": "ed25519",
            "fingerprint": fingerprint(key),
            "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
            "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii"),
        }
    )


def _record_inputs(
    inputs: dict[str, Path | str], dest: Path, hash_only: Collection[str] = ()
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, source in sorted(inputs.items()):
        text = str(source)
        if text.startswith(("http://", "https://")):
            out[name] = {"kind": "url", "location": text}
            continue
        path = Path(source)
        if path.is_file():
            entry: dict[str, Any] = {"kind": "file", "location": str(path.absolute()), **_file_entry(path)}
            if entry["size"] <= COPY_LIMIT and name not in hash_only:
                dest.mkdir(exist_ok=True)
                copy = dest / f"{_safe_name(name)}{''.join(path.suffixes)[-16:]}"
                shutil.copyfile(path, copy)
                if _file_entry(copy)["sha256"] != entry["sha256"]:  # changed while we read it
                    raise UserError(f"input {path} changed while it was being copied into the bundle")
                entry["copy"] = copy.relative_to(dest.parent).as_posix()
            out[name] = entry
        elif path.is_dir():
            files = {rel: _file_entry(path / rel) for rel in _walk(path)}
            tree = hashlib.sha256(_canonical(files)).hexdigest()
            out[name] = {
                "kind": "directory",
                "location": str(path.absolute()),
                "sha256": tree,
                "files": files,
            }
        else:
            raise UserError(f"input {name} not found: {path}")
    return out


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "input"


def collect_versions() -> dict[str, Any]:
    """The software that wrote the bundle (read from package metadata: importing torch is not needed)."""
    out: dict[str, Any] = {
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    for pkg in ("distillguard", "torch", "transformers", "tokenizers", "numpy", "scipy", "matplotlib"):
        out[pkg] = _version(pkg)
    out["cryptography"] = _version("cryptography")
    return out


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _redact(config: Any) -> Any:
    """Secrets never go into evidence that is handed around; their presence is still recorded.

    A number under a plural name (``"api_keys": 2``) is a count, not a key, and is kept."""
    if isinstance(config, dict):
        return {k: (REDACTED if _is_secret(str(k).lower(), v) else _redact(v)) for k, v in config.items()}
    if isinstance(config, list):
        return [_redact(v) for v in config]
    return config


def _is_secret(name: str, value: Any) -> bool:
    if name not in SECRET_FIELDS or value in (None, [], ""):
        return False
    return not (name.endswith("s") and isinstance(value, int) and not isinstance(value, bool))


def _json_safe(obj: Any) -> Any:
    """Strict JSON: NaN becomes null, infinities become the strings "Infinity"/"-Infinity", paths strings."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _json_safe(obj.item())
    if hasattr(obj, "tolist"):
        return _json_safe(obj.tolist())
    return str(obj)


def _canonical(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _write_json(path: Path, obj: Any) -> None:
    path.write_bytes(_canonical(obj))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": _sha256(path), "size": path.stat().st_size}


def _walk(root: Path) -> list[str]:
    """Every regular file under ``root`` as a sorted POSIX relative path (symlinks are not followed)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_file() and not p.is_symlink():
                out.append(p.relative_to(root).as_posix())
    return sorted(out)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(Path(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- verifying ----------------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """Outcome of ``verify_bundle``: ``problems`` name the file each one is about, first problem first."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # who signed (the bundle's public key)
    pinned: bool = False  # checked against a key given by the caller, not only the bundle's own
    files: int = 0  # files listed in the manifest
    verdict: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_bundle(path: Path, *, public_key: Ed25519PublicKey | Path | str | None = None) -> VerifyResult:
    """Check the signature, then every listed file's SHA-256 and size, and look for unlisted files.

    ``public_key`` pins the signer: an ``Ed25519PublicKey``, a PEM file (public or private key), or a
    ``sha256:...`` fingerprint. Without it the bundle's own ``public_key.pem`` is used, which proves only
    that nobody altered the files *without re-signing* (see the module docstring).

    Blame is assigned so that a change to any single byte of any single file names that file: the signature
    document records the manifest's SHA-256, which separates "manifest altered" from "signature altered".
    """
    root = Path(path)
    res = VerifyResult(ok=False)
    if not root.is_dir():
        res.problems.append(f"{root}: not a directory")
        return res
    pin_key, pin_fp = _pin(public_key)
    res.pinned = pin_fp is not None
    problems = res.problems

    manifest_bytes = _read(root / MANIFEST)
    if manifest_bytes is None:
        problems.append(f"{MANIFEST}: missing")
    sig_doc, sig_problem = _read_signature(root / SIGNATURE)
    if sig_problem:
        problems.append(sig_problem)
    bundle_key, key_problem = _read_public_key(root / PUBLIC_KEY)
    if bundle_key is not None:
        res.fingerprint = fingerprint(bundle_key)

    manifest: dict[str, Any] | None = None
    if manifest_bytes is not None:
        try:
            parsed = json.loads(manifest_bytes)
            manifest = parsed if isinstance(parsed, dict) else None
        except ValueError:
            manifest = None

    if manifest_bytes is not None and sig_doc is not None:
        hash_ok = hashlib.sha256(manifest_bytes).hexdigest() == sig_doc["manifest_sha256"]
        if pin_key is not None:
            verify_key: Ed25519PublicKey | None = pin_key
        elif pin_fp is not None:  # pinned by fingerprint: the bundle's own key, if it is that one
            verify_key = bundle_key if res.fingerprint == pin_fp else None
        else:
            verify_key = bundle_key
        sig_ok = verify_key is not None and _sig_valid(verify_key, sig_doc["signature"], manifest_bytes)
        manifest_fp = _get(manifest, "signer", "fingerprint")
        other_signer = pin_fp is not None and res.fingerprint is not None and res.fingerprint != pin_fp
        if not hash_ok:
            if sig_ok:
                problems.append(f"{SIGNATURE}: altered (its manifest_sha256 does not match {MANIFEST})")
            else:
                problems.append(f"{MANIFEST}: altered (its SHA-256 is not the one signed in {SIGNATURE})")
        elif sig_ok:
            signer_fp = fingerprint(verify_key)  # type: ignore[arg-type]
            if sig_doc["fingerprint"] != signer_fp:
                problems.append(f"{SIGNATURE}: altered (fingerprint field does not match the signer)")
            if manifest_fp != signer_fp:
                problems.append(f"{MANIFEST}: its signer fingerprint does not match the key that signed it")
            if key_problem:
                problems.append(key_problem)
            elif res.fingerprint != signer_fp:
                problems.append(f"{PUBLIC_KEY}: altered (not the key that signed {MANIFEST})")
        elif other_signer and (
            pin_key is None or _sig_valid(bundle_key, sig_doc["signature"], manifest_bytes)  # type: ignore[arg-type]
        ):
            problems.append(
                f"{SIGNATURE}: signed by {res.fingerprint}, not by the pinned key {pin_fp} "
                "(re-signed, or signed by someone else)"
            )
        elif key_problem:
            problems.append(key_problem)
        elif pin_fp is None and manifest_fp is not None and manifest_fp != res.fingerprint:
            problems.append(f"{PUBLIC_KEY}: altered (does not match the signer fingerprint in {MANIFEST})")
        else:
            pinned = " with the pinned key" if pin_fp is not None else ""
            problems.append(f"{SIGNATURE}: altered (the Ed25519 signature does not verify{pinned})")
    elif key_problem:
        problems.append(key_problem)

    if manifest_bytes is not None and manifest is None:
        if not problems:
            problems.append(f"{MANIFEST}: altered (not valid JSON)")
        return res
    if manifest is None:
        return res
    if manifest.get("format") != FORMAT:
        problems.append(f"{MANIFEST}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    res.verdict = _get(manifest, "summary", "verdict")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        problems.append(f"{MANIFEST}: no file list")
        return res
    res.files = len(listed)
    for rel, entry in sorted(listed.items()):
        problems.extend(_check_file(root, rel, entry))
    for rel in _all_entries(root):
        if rel not in listed and rel not in (MANIFEST, SIGNATURE):
            problems.append(f"{rel}: not listed in {MANIFEST} (added after signing)")
    res.ok = not problems
    return res


def _pin(public_key: Ed25519PublicKey | Path | str | None) -> tuple[Ed25519PublicKey | None, str | None]:
    if public_key is None:
        return None, None
    if isinstance(public_key, Ed25519PublicKey):
        return public_key, fingerprint(public_key)
    text = str(public_key).strip()
    if text.lower().startswith("sha256:"):
        digest = text[len("sha256:") :].lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise UserError(f"fingerprint {text!r} is not sha256: followed by 64 hex digits")
        return None, "sha256:" + digest
    key = load_public_key(Path(text))
    return key, fingerprint(key)


def _read(path: Path) -> bytes | None:
    try:
        if path.is_symlink() or not path.is_file():
            return None
        return path.read_bytes()
    except OSError:
        return None


def _read_signature(path: Path) -> tuple[dict[str, str] | None, str | None]:
    data = _read(path)
    if data is None:
        return None, f"{SIGNATURE}: missing"
    try:
        doc = json.loads(data)
    except ValueError:
        return None, f"{SIGNATURE}: altered (not valid JSON)"
    keys = {"algorithm", "fingerprint", "manifest_sha256", "signature"}
    if not isinstance(doc, dict) or set(doc) != keys or not all(isinstance(v, str) for v in doc.values()):
        return None, f"{SIGNATURE}: altered (unexpected fields)"
    if doc["algorithm"] != "ed25519":
        return None, f"{SIGNATURE}: altered (algorithm {doc['algorithm']!r})"
    if _canonical(doc) != data:  # written canonically: any other byte sequence was edited
        return None, f"{SIGNATURE}: altered (not in the canonical form it was written in)"
    return doc, None


def _read_public_key(path: Path) -> tuple[Ed25519PublicKey | None, str | None]:
    data = _read(path)
    if data is None:
        return None, f"{PUBLIC_KEY}: missing"
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None, f"{PUBLIC_KEY}: altered (not a valid PEM public key)"
    if not isinstance(key, Ed25519PublicKey):
        return None, f"{PUBLIC_KEY}: altered (not an Ed25519 key)"
    return key, None


def _sig_valid(key: Ed25519PublicKey, signature_b64: str, data: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), data)
        return True
    except (InvalidSignature, ValueError):
        return False


def _check_file(root: Path, rel: str, entry: Any) -> list[str]:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or rel in (MANIFEST, SIGNATURE) or not rel:
        return [f"{rel}: not a valid path inside a bundle ({MANIFEST} altered?)"]
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return [f"{rel}: malformed entry in {MANIFEST}"]
    path = root / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return [f"{rel}: missing"]
    except OSError as exc:
        return [f"{rel}: unreadable ({exc.strerror})"]
    if stat.S_ISLNK(st.st_mode):
        return [f"{rel}: replaced by a symbolic link"]
    if not stat.S_ISREG(st.st_mode):
        return [f"{rel}: not a regular file"]
    size = st.st_size
    if size != entry.get("size"):
        return [f"{rel}: altered (size {size} bytes, manifest says {entry.get('size')})"]
    if _sha256(path) != entry["sha256"]:
        return [f"{rel}: altered (SHA-256 differs from {MANIFEST})"]
    return []


def _all_entries(root: Path) -> list[str]:
    """Everything under ``root`` that is not a directory (files, symlinks, fifos), as relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out += [prefix + n for n in filenames]
        out += [prefix + d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
    return sorted(out)


def _get(obj: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def summarize(result: dict[str, Any], bundle: Path, signer: str, alpha: float) -> dict[str, Any]:
    """The audit JSON of docs/architecture.md: verdict, combined p, each test's null and n, bundle paths."""
    return {
        "verdict": result["verdict"],
        "combined_p_value": result["combined_p_value"],
        "alpha": result.get("alpha", alpha),
        "tests": [
            {k: t.get(k) for k in ("name", "null", "statistic", "n", "p_value", "log10_p_value", "caveats")}
            for t in result.get("tests") or []
        ],
        "queries_used": result.get("queries_used"),
        "meaning": result.get("meaning"),
        "bundle": str(bundle),
        "report": str(Path(bundle) / REPORT),
        "signer": signer,
    }
