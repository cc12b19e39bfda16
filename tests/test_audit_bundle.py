"""The audit's evidence bundle, report and CLI.

A valid bundle verifies; altering any byte of any file, deleting a file or adding one makes ``verify`` fail
naming that file; a bundle re-signed with another key passes only when nobody pins the signer; a crash while
writing leaves nothing that looks like a bundle; the HTML report renders in a real headless browser with all
its figures, and fetches nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli_run import run_cli
from distillguard.audit import bundle as bundle_mod
from distillguard.audit import report as report_mod
from distillguard.audit.bundle import (
    MANIFEST,
    PUBLIC_KEY,
    SIGNATURE,
    default_signing_key_path,
    fingerprint,
    generate_signing_key,
    load_signing_key,
    verify_bundle,
    write_bundle,
)
from distillguard.errors import UserError

HOSTILE = '<img src="http://198.51.100.7/pixel.png"><script>document.title="pwned"</script>'


def make_result(seed: int = 0, *, verdict: str = "distilled", series: bool = True) -> dict[str, Any]:
    """A result shaped like ``run_audit``'s, with every series present (``series=False``: none, no plots,
    for the tests about files and keys, where drawing figures would only cost time)."""
    rng = random.Random(seed)
    tokens = [int(round(10 ** (1 + 3 * i / 29))) for i in range(30)]
    rates = [0.25 + 0.04 + rng.uniform(-0.02, 0.02) for _ in tokens]
    ci = [[r - 1.0 / math.sqrt(n), r + 1.0 / math.sqrt(n)] for r, n in zip(rates, tokens, strict=True)]
    transcripts = []
    for i in range(10):
        transcripts.append(
            {"kind": "radioactivity", "prompt": f"How do I sort a list? ({i})",
             "response": f"Use sorted() {i}", "model": "suspect"}
        )  # fmt: skip
        transcripts.append(
            {"kind": "identity", "prompt": "Who are you?", "response": "I am Aster, made by Northwind Labs.",
             "model": "suspect" if i % 2 else "control-1"}
        )  # fmt: skip
    transcripts.insert(  # first, so that the report's excerpt shows it
        0, {"kind": "identity", "prompt": "Who made you?", "response": HOSTILE, "model": "suspect"}
    )
    result = {
        "verdict": verdict,
        "combined_p_value": 2.4e-12,
        "log10_combined_p_value": -11.62,
        "alpha": 1e-3,
        "reasons": ["radioactivity: p = 2.4e-12 (Holm-adjusted) <= alpha = 0.001"],
        "tests": [
            {
                "name": "radioactivity",
                "null": "the suspect was not trained on our watermarked outputs",
                "statistic": 0.289,
                "statistic_name": "green fraction",
                "n": 1000,
                "p_value": 8e-13,
                "log10_p_value": -12.1,
                "p_value_holm": 2.4e-12,
                "log10_p_value_holm": -11.62,
                "caveats": ["windows of 4+ tokens barely transfer"],
                "details": {"gamma": 0.25},
            },
            {
                "name": "identity",
                "null": "names us no more often than the controls",
                "statistic": 0.5,
                "n": 11,
                "p_value": 0.004,
                "log10_p_value": -2.4,
                "caveats": [],
                "details": {},
            },
            {
                "name": "provenance",
                "null": "no closer to the reference than the controls",
                "statistic": None,
                "n": 0,
                "p_value": 1.0,
                "log10_p_value": 0.0,
                "caveats": ["no controls"],
                "details": {},
                "refusal": "no control models",
            },
        ],  # fmt: skip
        "skipped": [{"name": "provenance_extra", "reason": "not asked for"}],
        "queries_used": len(transcripts),
        "stopped_early": False,
        "transcripts": transcripts,
        "series": {
            "radioactivity": {
                "tokens_scored": tokens,
                "log10_p": [-0.4 * i for i in range(30)],
                "log10_p_anytime": [-0.3 * i for i in range(30)],
                "green_rate": rates,
                "green_rate_ci": ci,
                "null_rate": 0.25,
                "ci_level": 0.95,
                "statistic": "green fraction",
            },
            "decoys": {
                "our_score": 0.289,
                "decoy_scores": [0.25 + rng.gauss(0, 0.01) for _ in range(100)],
                "empirical_p_value": 1 / 101,
            },
            "identity": {
                "names": ["Aster", "Northwind"],
                "suspect": {"named": 6, "n": 11, "rate": 6 / 11},
                "controls": {"control-1": {"named": 0, "n": 10, "rate": 0.0}},
            },
            "radioactivity_open": {
                "tokens_scored": tokens,
                "log10_p": [-0.2 * i for i in range(30)],
                "green_rate": rates,
                "green_rate_ci": ci,
                "null_rate": 0.25,
            },
            "decoys_open": {
                "our_score": 0.27,
                "decoy_scores": [0.25 + rng.gauss(0, 0.01) for _ in range(50)],
            },
        },
        "config": {
            "suspect": "http://127.0.0.1:1/v1",
            "api_keys": ["sk-live-secret"],
            "alpha": 1e-3,
            "spec": {"scheme": "kgw", "gamma": 0.25, "key": "our-secret-key"},
            "seed": seed,
        },
        "versions": {"python": "3.11.2", "distillguard": "0.1.0"},
        "started": "2031-05-04T10:00:00Z",
        "finished": "2031-05-04T10:07:12Z",
    }
    if not series:
        del result["series"]
    return result


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DISTILLGUARD_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One bundle written once for the module (tests that alter it restore it), with its signing key."""
    root = tmp_path_factory.mktemp("bundle")
    key_path = root / "signer.pem"
    key = generate_signing_key(key_path)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(20)))
    model_dir = root / "suspect"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"vocab_size": 512}')
    (model_dir / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    out = write_bundle(
        make_result(), root / "case-1", signing_key=key_path,
        inputs={"prompts": prompts, "suspect": model_dir, "api": "http://127.0.0.1:1/v1"},
    )  # fmt: skip
    return {"dir": out, "key": key, "key_path": key_path, "prompts": prompts, "model": model_dir}


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- a valid bundle -----------------------------------------------------------------------------------------


def test_valid_bundle_verifies_and_holds_the_evidence(built: dict[str, Any]) -> None:
    root: Path = built["dir"]
    res = verify_bundle(root)
    assert res.ok and res.problems == []
    assert res.fingerprint == fingerprint(built["key"]) and not res.pinned and res.verdict == "distilled"
    assert verify_bundle(root, public_key=built["key_path"]).ok  # pinned with the signer's own PEM
    assert verify_bundle(root, public_key=built["key"].public_key()).pinned

    manifest = json.loads((root / MANIFEST).read_text())
    listed = set(manifest["files"])
    assert listed == set(_files(root)) - {MANIFEST, SIGNATURE}  # every other file, nothing more
    assert res.files == len(listed)
    for rel, entry in manifest["files"].items():
        data = (root / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert manifest["signer"]["fingerprint"] == fingerprint(built["key"])
    expected = {"results.json", "transcripts.jsonl", "config.json", "versions.json", "timestamps.json",
                "inputs.json", "report.html", PUBLIC_KEY, "inputs/prompts.jsonl"}  # fmt: skip
    figures = ("pvalue", "green_rate", "identity", "decoys", "pvalue_open", "green_rate_open", "decoys_open")
    expected |= {f"plots/{n}.png" for n in figures}
    assert listed == expected

    # the signature is a plain Ed25519 signature over the exact manifest bytes (checkable without us)
    sig = json.loads((root / SIGNATURE).read_text())
    pub = serialization.load_pem_public_key((root / PUBLIC_KEY).read_bytes())
    pub.verify(base64.b64decode(sig["signature"]), (root / MANIFEST).read_bytes())  # raises if invalid

    result = make_result()
    results = json.loads((root / "results.json").read_text())
    assert "transcripts" in results and results["transcripts"] == {"file": "transcripts.jsonl", "count": 21}
    assert results["verdict"] == "distilled" and results["tests"][0]["p_value"] == 8e-13
    lines = [json.loads(x) for x in (root / "transcripts.jsonl").read_text().splitlines()]
    assert [x["response"] for x in lines] == [t["response"] for t in result["transcripts"]]
    config_text = (root / "config.json").read_text() + (root / "results.json").read_text()
    assert "sk-live-secret" not in config_text and "our-secret-key" not in config_text
    assert json.loads((root / "config.json").read_text())["api_keys"] == "[redacted]"
    assert json.loads((root / "config.json").read_text())["seed"] == 0
    assert bundle_mod._redact({"api_keys": 2, "watermark": {"key": 15485863, "gamma": 0.25}}) == {
        "api_keys": 2,  # a count, as run_audit records it
        "watermark": {"key": "[redacted]", "gamma": 0.25},
    }
    versions = json.loads((root / "versions.json").read_text())
    assert {"python", "platform", "torch", "transformers", "distillguard"} <= set(versions)
    stamps = json.loads((root / "timestamps.json").read_text())
    assert stamps["started"] == result["started"] and stamps["bundle_written"].endswith("Z")
    inputs = json.loads((root / "inputs.json").read_text())
    assert inputs["prompts"]["sha256"] == hashlib.sha256(built["prompts"].read_bytes()).hexdigest()
    assert (root / inputs["prompts"]["copy"]).read_bytes() == built["prompts"].read_bytes()
    assert inputs["suspect"]["kind"] == "directory" and set(inputs["suspect"]["files"]) == {
        "config.json",
        "model.safetensors",
    }
    assert inputs["api"] == {"kind": "url", "location": "http://127.0.0.1:1/v1"}
    for png in (root / "plots").iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- tampering ----------------------------------------------------------------------------------------------


def _flip(path: Path, offset: int) -> bytes:
    original = path.read_bytes()
    data = bytearray(original)
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return original


def test_flipping_any_byte_of_any_file_is_named(built: dict[str, Any]) -> None:
    root: Path = built["dir"]
    rng = random.Random(7)
    checked = 0
    for rel in _files(root):
        path = root / rel
        size = path.stat().st_size
        if rel in (SIGNATURE, PUBLIC_KEY):
            offsets = range(size)  # where blame is subtle: every single byte
        else:  # any change to these is a hash mismatch: first, middle, last and a seeded sample
            sample = rng.sample(range(size), min(60 if rel == MANIFEST else 6, size))
            offsets = sorted({0, size // 2, size - 1, *sample})
        for off in offsets:
            original = _flip(path, off)
            try:
                res = verify_bundle(root)
            finally:
                path.write_bytes(original)
            assert not res.ok, (rel, off)
            assert res.problems[0].startswith(f"{rel}: "), (rel, off, res.problems)
            checked += 1
    assert checked > 500
    assert verify_bundle(root).ok  # restored


def test_flip_names_the_file_on_the_command_line(
    built: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    root: Path = built["dir"]
    for rel in ("results.json", "plots/pvalue.png", "report.html", MANIFEST, SIGNATURE):
        original = _flip(root / rel, 10)
        try:
            code, out, err = _cli(capsys, "audit", "verify", str(root))
        finally:
            (root / rel).write_bytes(original)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith("error: ") and f"failed verification: {rel}: " in err
    code, out, err = _cli(capsys, "audit", "verify", str(root))
    assert code == 0 and err == "" and out.startswith("bundle OK: 16 files intact, verdict distilled")
    assert out.count("\n") == 1 and "pass --public-key" in out


def test_deleted_files_are_named(built: dict[str, Any]) -> None:
    root: Path = built["dir"]
    for rel in _files(root):
        path = root / rel
        original = path.read_bytes()
        path.unlink()
        try:
            res = verify_bundle(root)
        finally:
            path.write_bytes(original)
        assert not res.ok and f"{rel}: missing" in res.problems, (rel, res.problems)
        assert res.problems[0].startswith(rel), res.problems
    assert verify_bundle(root).ok


def test_added_files_are_flagged(built: dict[str, Any], tmp_path: Path) -> None:
    root: Path = built["dir"]
    for rel in ("notes.txt", "plots/extra.png", "inputs/more.jsonl", "new/dir/file.bin"):
        target = root / rel
        created_dir = not target.parent.exists()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"added after signing")
        try:
            res = verify_bundle(root)
        finally:
            target.unlink()
            if created_dir:
                shutil.rmtree(root / "new")
        assert not res.ok and res.problems == [f"{rel}: not listed in {MANIFEST} (added after signing)"]
    # a listed file swapped for a symlink to an identical copy elsewhere is not the evidence either
    outside = tmp_path / "copy.json"
    shutil.copyfile(root / "results.json", outside)
    original = (root / "results.json").read_bytes()
    (root / "results.json").unlink()
    (root / "results.json").symlink_to(outside)
    try:
        res = verify_bundle(root)
    finally:
        (root / "results.json").unlink()
        (root / "results.json").write_bytes(original)
    assert not res.ok and res.problems[0] == "results.json: replaced by a symbolic link"
    assert verify_bundle(root).ok


def _resign(root: Path, attacker: Ed25519PrivateKey) -> None:
    """What a forger does: change the verdict, recompute every hash, sign with their own key."""
    results = json.loads((root / "results.json").read_text())
    results["verdict"] = "no_evidence"
    (root / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (root / PUBLIC_KEY).write_bytes(bundle_mod.public_key_pem(attacker))
    manifest = json.loads((root / MANIFEST).read_text())
    for rel in manifest["files"]:
        data = (root / rel).read_bytes()
        manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest["signer"]["fingerprint"] = fingerprint(attacker)
    manifest["summary"]["verdict"] = "no_evidence"
    manifest_bytes = bundle_mod._canonical(manifest)
    (root / MANIFEST).write_bytes(manifest_bytes)
    (root / SIGNATURE).write_bytes(bundle_mod._signature_doc(attacker, manifest_bytes))


def test_resigned_bundle_is_rejected_only_when_the_key_is_pinned(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    forged = tmp_path / "forged"
    shutil.copytree(built["dir"], forged)
    attacker = Ed25519PrivateKey.generate()
    _resign(forged, attacker)
    assert verify_bundle(forged).ok  # self-consistent: why the signer must be pinned
    ours = built["key"]
    pub_pem = tmp_path / "northwind.pub.pem"
    pub_pem.write_bytes(bundle_mod.public_key_pem(ours))
    for pin in (pub_pem, built["key_path"], ours.public_key(), fingerprint(ours), fingerprint(ours).upper()):
        res = verify_bundle(forged, public_key=pin)
        assert not res.ok and res.pinned
        assert res.problems[0].startswith(
            f"{SIGNATURE}: signed by {fingerprint(attacker)}, not by the pinned"
        )
        assert verify_bundle(built["dir"], public_key=pin).ok
    code, _, err = _cli(capsys, "audit", "verify", str(forged), "--public-key", str(pub_pem))
    assert code == 1 and "not by the pinned key" in err and err.count("\n") == 1
    code, out, _ = _cli(capsys, "audit", "verify", str(built["dir"]), "--public-key", fingerprint(ours))
    assert code == 0 and "(pinned key)" in out
    code, _, err = _cli(capsys, "audit", "verify", str(built["dir"]), "--public-key", "sha256:abc")
    assert code == 2 and "64 hex digits" in err

    # swapping only public_key.pem for the attacker's is caught even without a pin
    swapped = tmp_path / "swapped"
    shutil.copytree(built["dir"], swapped)
    (swapped / PUBLIC_KEY).write_bytes(bundle_mod.public_key_pem(attacker))
    res = verify_bundle(swapped)
    assert not res.ok and res.problems[0].startswith(f"{PUBLIC_KEY}: ")
    # ... and with the right key pinned, it is the stray public key that is named
    res = verify_bundle(swapped, public_key=ours.public_key())
    assert not res.ok and res.problems[0].startswith(f"{PUBLIC_KEY}: ")


# -- writing ------------------------------------------------------------------------------------------------


def test_crash_mid_write_leaves_no_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(result: dict) -> dict:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report_mod, "render_plots", boom)
    parent = tmp_path / "cases"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_bundle(make_result(series=False), parent / "case-2")
    assert not (parent / "case-2").exists()
    assert list(parent.iterdir()) == []  # no hidden partial directory either

    # replacing an older bundle: a crash keeps the old one, intact
    monkeypatch.undo()
    monkeypatch.setenv("DISTILLGUARD_HOME", str(tmp_path / "home"))
    old = write_bundle(make_result(verdict="no_evidence", series=False), parent / "case-3")
    monkeypatch.setattr(report_mod, "render_plots", boom)
    with pytest.raises(RuntimeError):
        write_bundle(make_result(series=False), old, overwrite=True)
    assert verify_bundle(old).ok and verify_bundle(old).verdict == "no_evidence"
    assert sorted(p.name for p in parent.iterdir()) == ["case-3"]


def test_target_rules_and_overwrite(tmp_path: Path) -> None:
    stranger = tmp_path / "not-a-bundle"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not empty and is not an audit bundle"):
        write_bundle(make_result(series=False), stranger, overwrite=True)
    assert _files(stranger) == ["thesis.tex"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        write_bundle(make_result(series=False), afile)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert verify_bundle(write_bundle(make_result(series=False), empty)).ok
    with pytest.raises(UserError, match="--overwrite"):
        write_bundle(make_result(verdict="no_evidence", series=False), empty)
    write_bundle(make_result(verdict="no_evidence", series=False), empty, overwrite=True)
    res = verify_bundle(empty)
    assert res.ok and res.verdict == "no_evidence"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "home", "not-a-bundle"]
    assert stat.S_IMODE(empty.stat().st_mode) == 0o755


def test_signing_keys(tmp_path: Path, _home: Path) -> None:
    # no key given: one is generated under home()/audit (0600) and reused
    a = write_bundle(make_result(series=False), tmp_path / "a")
    b = write_bundle(make_result(series=False), tmp_path / "b")
    default = default_signing_key_path()
    assert default == _home / "audit" / "signing_key.pem"
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    assert verify_bundle(a).fingerprint == verify_bundle(b).fingerprint == fingerprint(load_signing_key())
    assert verify_bundle(a, public_key=default).ok
    with pytest.raises(UserError, match="signing key not found"):
        write_bundle(make_result(series=False), tmp_path / "c", signing_key=tmp_path / "typo.pem")
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(UserError, match="not an Ed25519 key"):
        write_bundle(make_result(series=False), tmp_path / "c", signing_key=ec_key)
    assert not (tmp_path / "c").exists()


def test_keygen_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "keys" / "northwind.pem"
    code, stdout, _ = _cli(capsys, "audit", "keygen", "--out", str(out), "--json")
    doc = json.loads(stdout)
    assert code == 0 and doc["private_key"] == str(out) and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert doc["fingerprint"] == fingerprint(load_signing_key(out))
    assert Path(doc["public_key"]).name == "northwind.pub.pem"
    code, _, err = _cli(capsys, "audit", "keygen", "--out", str(out))
    assert code == 2 and err == f"error: signing key {out} already exists; pass --force to replace it\n"
    bundle = write_bundle(make_result(series=False), tmp_path / "bundle", signing_key=out)
    code, stdout, _ = _cli(
        capsys, "audit", "verify", str(bundle), "--public-key", doc["public_key"], "--json"
    )
    assert code == 0 and json.loads(stdout)["ok"] is True and json.loads(stdout)["pinned"] is True
    code, stdout, _ = _cli(capsys, "audit", "public-key", "--signing-key", str(out))
    assert code == 0 and stdout.startswith("-----BEGIN PUBLIC KEY-----") and doc["fingerprint"] in stdout


def test_verify_cli_on_a_non_bundle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _cli(capsys, "audit", "verify", str(tmp_path / "nowhere"))
    assert code == 1 and out == "" and "not a directory" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, _, err = _cli(capsys, "audit", "verify", str(tmp_path / "empty"))
    assert code == 1 and f"failed verification: {MANIFEST}: missing (and 2 more)" in err


def test_run_refuses_bad_suspects_before_writing_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "bundle"
    not_model = tmp_path / "not-a-model"
    not_model.mkdir()
    (not_model / "weights.txt").write_text("nope")
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    cases = [
        (["--suspect", str(not_model)], "is not a model directory (no config.json)"),
        (["--suspect", str(tmp_path / "missing")], "suspect model directory not found"),
        (["--suspect", dead], f"suspect URL {dead} is unreachable"),
        (["--suspect", "ftp://example.invalid/model"], "only http(s) URLs and local model directories"),
        (["--suspect", str(not_model.parent), "--control", str(not_model)], "control"),
        (
            ["--suspect", str(not_model.parent), "--key", "k1", "--retired-key", "k1"],
            "equals the current one",
        ),
        (
            ["--suspect", str(not_model.parent), "--key", "7", "--retired-key", "k", "--retired-key", "k"],
            "twice",
        ),
    ]
    (tmp_path / "config.json").write_text("{}")  # tmp_path itself now looks like a model dir
    for args, message in cases:
        code, stdout, err = _cli(capsys, "audit", "run", *args, "--out", str(out), "--json")
        assert code == 2 and stdout == "" and err.startswith("error: ") and message in err, (args, err)
        assert err.count("\n") == 1
        assert not out.exists()
    stranger = tmp_path / "occupied"
    stranger.mkdir()
    (stranger / "x").write_text("x")
    code, _, err = _cli(capsys, "audit", "run", "--suspect", str(tmp_path), "--out", str(stranger))
    assert code == 2 and "not empty and is not an audit bundle" in err


def test_run_writes_a_verifiable_bundle_and_prints_the_design_json(
    tiny_world, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The real engine on the tiny world (identity test only, to stay fast): the CLI's JSON has the
    shape in docs/architecture.md and the bundle it names verifies; an audit that fails writes nothing."""
    out = tmp_path / "case"
    common = ["audit", "run", "--suspect", str(tiny_world.teacher), "--reference", str(tiny_world.teacher),
              "--control", str(tiny_world.reference), "--prompts", str(tiny_world.prompts),
              "--test", "identity", "--key", "7", "--max-tokens", "8", "--out", str(out)]  # fmt: skip
    code, _, err = _cli(capsys, *common, "--budget", "1", "--json")  # run_audit refuses: nothing written
    assert code == 2 and "budget of 1 queries is too small" in err and not out.exists()
    assert list(tmp_path.iterdir()) == []

    code, stdout, err = _cli(capsys, *common, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["verdict"] in ("distilled", "no_evidence", "inconclusive")
    assert isinstance(doc["combined_p_value"], float) and 0.0 <= doc["combined_p_value"] <= 1.0
    assert [t["name"] for t in doc["tests"]] == ["identity"]
    assert set(doc["tests"][0]) >= {"name", "null", "statistic", "n", "p_value", "caveats"}
    assert doc["bundle"] == str(out) and doc["report"] == str(out / "report.html")
    res = verify_bundle(out, public_key=doc["signer"])
    assert res.ok and res.verdict == doc["verdict"] and res.pinned
    lines = (out / "transcripts.jsonl").read_text().splitlines()
    results = json.loads((out / "results.json").read_text())
    # the suspect and the one control each answer the whole battery; the test's unit is the question
    assert results["transcripts"]["count"] == len(lines) == 2 * results["queries_used"]
    assert doc["tests"][0]["n"] == 16 and results["queries_used"] == 48
    assert {json.loads(x)["kind"] for x in lines} == {"identity"}
    inputs = json.loads((out / "inputs.json").read_text())
    assert inputs["suspect"]["kind"] == "directory" and "config.json" in inputs["suspect"]["files"]
    assert (out / "inputs" / "prompts.jsonl").read_bytes() == Path(tiny_world.prompts).read_bytes()
    code, _, err = _cli(capsys, *common)  # the bundle is there now: not silently replaced
    assert code == 2 and "--overwrite" in err


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    return run_cli(argv, capsys)


# -- the report in a real browser ---------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium on PATH (`make test` installs Debian's chromium package when run as root)")


class Browser:
    """Headless Chromium driven over the DevTools protocol: navigate, wait for load, evaluate, record
    every network request the page makes."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1100,1600",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                pytest.fail("chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        from websockets.sync.client import connect

        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=64 << 20))
        self.next_id = 0
        self.requests: list[str] = []
        self.events: list[dict] = []
        self.call("Network.enable")
        self.call("Page.enable")

    def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]
            self._event(msg)

    def _event(self, msg: dict) -> None:
        self.events.append(msg)
        if msg.get("method") == "Network.requestWillBeSent":
            self.requests.append(msg["params"]["request"]["url"])

    def load(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self._event(json.loads(self.ws.recv(timeout=30)))

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"]["value"]

    def close(self) -> None:
        if getattr(self, "stack", None) is not None:
            self.stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


PAGE_FACTS = """JSON.stringify({
  title: document.title,
  verdict: document.querySelector('#verdict .verdict').textContent,
  verdictAttr: document.querySelector('#verdict').dataset.verdict,
  combined: document.querySelector('#combined-p').textContent,
  images: [...document.images].map(i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
                                           fig: i.closest('figure').id, scheme: i.src.split(':')[0]})),
  links: [...document.querySelectorAll('[src],[href]')]
           .map(e => e.getAttribute('src') || e.getAttribute('href')),
  tests: [...document.querySelectorAll('#tests tr')].length - 1,
  identity: [...document.querySelectorAll('#identity tr')].length - 1,
  transcriptText: (document.querySelector('#transcripts') || {innerText: ''}).innerText,
  scripts: document.scripts.length,
  fingerprint: document.querySelector('#fingerprint').textContent,
  height: document.body.scrollHeight,
})"""


def test_report_renders_in_a_real_browser(built: dict[str, Any], tmp_path: Path) -> None:
    sparse = make_result(verdict="inconclusive")
    sparse["series"] = {"decoys": sparse["series"]["decoys"]}  # only one series: the rest must cope
    sparse["tests"] = sparse["tests"][1:]
    sparse.pop("transcripts")
    sparse_dir = write_bundle(sparse, tmp_path / "sparse")

    browser = Browser(tmp_path / "profile")
    try:
        browser.load((built["dir"] / "report.html").as_uri())
        facts = json.loads(browser.evaluate(PAGE_FACTS))
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        browser.events.clear()
        browser.load((sparse_dir / "report.html").as_uri())
        sparse_facts = json.loads(browser.evaluate(PAGE_FACTS))
    finally:
        browser.close()

    assert facts["verdict"] == "Evidence of distillation" and facts["verdictAttr"] == "distilled"
    assert facts["combined"] == "2.4e-12" and facts["title"].startswith("distillguard audit")
    figures = ["decoys", "decoys_open", "green_rate", "green_rate_open", "identity", "pvalue", "pvalue_open"]
    assert sorted(i["fig"] for i in facts["images"]) == [f"fig-{f}" for f in figures]
    for img in facts["images"]:  # every figure decoded from its data URI
        assert img["complete"] and img["w"] >= 400 and img["h"] >= 150 and img["scheme"] == "data", img
    assert all(link.startswith("data:image/png;base64,") for link in facts["links"])
    assert facts["tests"] == 3 and facts["identity"] == 2 and facts["scripts"] == 0
    assert HOSTILE in facts["transcriptText"]  # the suspect's markup is shown as text, never run or loaded
    assert facts["fingerprint"] == fingerprint(built["key"])
    assert facts["height"] > 1500
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
    # nothing but the page itself and its own data URIs was requested
    assert browser.requests and all(u.startswith(("file://", "data:")) for u in browser.requests), (
        browser.requests
    )

    assert sparse_facts["verdictAttr"] == "inconclusive" and sparse_facts["verdict"] == "Inconclusive"
    assert [i["fig"] for i in sparse_facts["images"]] == ["fig-decoys"] and sparse_facts["images"][0]["w"] > 0
    assert (
        sparse_facts["tests"] == 2 and sparse_facts["identity"] == -1 and sparse_facts["transcriptText"] == ""
    )


def test_report_survives_missing_and_non_finite_values() -> None:
    result = {"verdict": "no_evidence", "combined_p_value": float("nan"), "tests": [{"name": "x"}],
              "series": {"radioactivity": {"tokens_scored": [1, 2], "log10_p": [float("-inf"), -1.0]},
                         "identity": {"names": ["Aster"]}, "decoys": {"decoy_scores": []}}}  # fmt: skip
    assert report_mod.render_plots(result) == {}
    page = report_mod.render_html(result, plots={})
    assert "No evidence of distillation" in page and "n/a" in page and "<img" not in page
    assert report_mod.format_p(0.0, -412.3) == "10^-412.3"
    assert report_mod.format_p(3.2e-5) == "3.2e-05"


def test_bundle_of_a_result_with_non_finite_numbers_is_strict_json(tmp_path: Path) -> None:
    result = make_result(series=False)
    result["tests"][0]["statistic"] = float("nan")
    result["tests"][0]["log10_p_value"] = float("-inf")
    out = write_bundle(result, tmp_path / "b")
    text = (out / "results.json").read_text()
    assert "NaN" not in text and json.loads(text)["tests"][0]["log10_p_value"] == "-Infinity"
    assert verify_bundle(out).ok


def test_unreadable_timestamps_do_not_matter_to_the_check(built: dict[str, Any]) -> None:
    # verification depends on bytes only: copying a bundle elsewhere (new mtimes, new path) keeps it valid
    root: Path = built["dir"]
    stamp = time.time() - 86_400
    for rel in _files(root):
        os.utime(root / rel, (stamp, stamp))
    assert verify_bundle(root).ok
