"""What a student kept of our watermark: the mass statistic on our watermarked texts, beside a valid reading.

A diagnostic for the audit bench's students (``audit_bench.py --keep-students --work DIR``), not evidence.
For each student kept in ``DIR`` (a folder with ``student/`` and ``distill.json``) the mass reading's
statistic (``audit.mass``: the student's mean next-token probabilities after each distinct window minus
our model's, times each token's score under our key, in null standard deviations) is computed on two sets
of texts of the same size, the same for every student:

* ``plain``: our unwatermarked answers to the distiller's first prompts (the collection ``plain.jsonl``).
  They do not depend on the key, so this is a valid reading (the audit's own reading generates fresh plain
  answers to pool prompts instead, so its z differ a little). The students of our unwatermarked answers
  (``control_plain_*``, ``control_seed*``, ``control_shared_data``) were trained on these very texts.
* ``watermarked``: our watermarked answers, the first of the collection (``ours.jsonl``): every watermarked
  student trained on them. Our key chose their tuples when we sampled them, so this z is *not* a test: its
  offset under H0 is not zero. The controls never trained on them, so their z on the same texts are that
  offset's baseline. A watermarked student far above them still expresses our key where it was trained;
  one among them kept nothing that this statistic can see, even there.

For the controls (students that never saw our key) the plain reading is also repeated under ``--null-keys``
random keys (default 1,000, the same keys for every control): a null calibration of the mass reading on
real innocent models. Its p-value is a Chernoff bound, so the false claims at 0.01 and 0.001 should stay at
or below the level, and a one-sided KS test (are the p-values stochastically smaller than uniform?) should
not reject. The controls share our key and texts, so their calibrations are correlated, not replicates.

Results: ``bench/results/audit_retention[_<out>].json`` (and a PNG of z against rho).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True, help="an audit bench's --work with kept students")
    parser.add_argument("--texts", type=int, default=1024, help="texts read per set")
    parser.add_argument("--out", default="", help="suffix of the results file")
    parser.add_argument("--null-keys", type=int, default=1000, help="random keys per control (0: none)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    from distillguard.lm.io import load_tokenizer
    from distillguard.watermark.schemes import WatermarkSpec

    t0 = time.time()
    sidecar = json.loads((args.work / "ours.jsonl.spec.json").read_text())
    spec = WatermarkSpec(**sidecar["watermark"])
    teacher = sidecar["teacher"]
    tok, _ = load_tokenizer(teacher)
    ours = AutoModelForCausalLM.from_pretrained(teacher).eval()
    plain = _texts(tok, args.work / "plain.jsonl", args.texts)
    marked = _texts(tok, args.work / "ours.jsonl", args.texts)
    rows = {}
    kept = (p.parent.parent for p in args.work.glob("*/student/model.safetensors"))
    for d in sorted(d for d in kept if (d / "distill.json").is_file()):  # an interrupted student has none
        manifest = json.loads((d / "distill.json").read_text())
        student = AutoModelForCausalLM.from_pretrained(d / "student").eval()
        kind = "control" if d.name.startswith("control") else "watermarked"
        rows[d.name] = {
            "kind": kind,
            "rho": manifest["mix"]["rho_actual"],
            "teacher_tokens": manifest["mix"]["teacher_tokens"],
            "training_tokens": manifest["mix"]["teacher_tokens"] + manifest["mix"]["other_tokens"],
        }
        r = rows[d.name]
        r["plain"], table = _reading(spec, student, ours, plain, tok)
        r["watermarked"], _ = _reading(spec, student, ours, marked, tok)
        plain_z, plain_p, marked_z = r["plain"]["z"], r["plain"]["log10_p"], r["watermarked"]["z"]
        print(f"{d.name:28s} rho {r['rho']:.4f}  z plain {plain_z:6.2f} (log10 p {plain_p:.2f})  "
              f"z watermarked {marked_z:6.2f}", flush=True)  # fmt: skip
        if kind == "control" and args.null_keys:
            r["null_over_keys"] = _null(spec, table, args.null_keys)
            print(f"{'':28s} {args.null_keys} random keys: {r['null_over_keys']}", flush=True)
    doc = {
        "bench": "audit_retention",
        "watermark": spec.describe(),
        "texts_per_set": args.texts,
        "readings": {
            "plain": "the mass reading of our unwatermarked answers to the distiller's first prompts (valid; "
            "the plain-answer controls trained on these texts)",
            "watermarked": "the same statistic on our first watermarked answers, which every watermarked "
            "student trained on (diagnostic only: our key chose their tuples, so z is not null-centred; the "
            "controls' z on the same texts are its baseline)",
        },
        "students": rows,
        "wall_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    stem = "audit_retention" + (f"_{args.out}" if args.out else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    _plot(doc, RESULTS / f"{stem}.png")


def _texts(tok, path: Path, n: int) -> tuple[list[list[int]], list[int]]:
    """``(sequences, prompt lengths)``: the first ``n`` answers of a collection, prompt in the chat format."""
    from distillguard.distill.collect import read_collection
    from distillguard.lm.chat import prompt_ids

    rows = read_collection(path)[:n]
    prompts = prompt_ids(tok, [r["prompt"] for r in rows])
    return [p + list(r["token_ids"]) for p, r in zip(prompts, rows, strict=True)], [len(p) for p in prompts]


def _reading(spec, student, ours, texts, tok):
    """``(summary, weighted tuples)`` of the mass statistic of ``student`` beside ``ours`` on ``texts``."""
    from distillguard.audit import mass as ms

    seqs, plens = texts
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        table, _ = ms.keyed(spec, ms.read_table(student, ours, seqs, plens, spec.window, pad))
    t = ms.total(spec, table)
    return {
        "texts": len(seqs),
        "windows": table.n_windows,
        "z": round(ms.z_score(spec, table.weights, t), 3),
        "log10_p": round(ms.chernoff_log_sf(spec, table.weights, t, table.rows) / np.log(10), 3),
    }, table


def _null(spec, table, n_keys: int) -> dict:
    """The mass reading's p-value under ``n_keys`` random keys on one innocent model's weights."""
    from scipy import stats

    from distillguard.audit import mass as ms
    from distillguard.audit.radioactivity import decoy_keys

    log_p = []
    for k in decoy_keys(n_keys, seed=2026, avoid=spec.key):
        s = spec.with_key(k)
        log_p.append(ms.chernoff_log_sf(s, table.weights, ms.total(s, table), table.rows))
    pv = np.exp(log_p)
    return {
        "keys": n_keys,
        "claims_at_0.01": int(np.sum(pv <= 0.01)),
        "claims_at_0.001": int(np.sum(pv <= 0.001)),
        "min_log10_p": round(float(np.min(log_p) / np.log(10)), 3),
        "ks_greater_p": float(stats.kstest(pv, "uniform", alternative="greater").pvalue),
    }


def _plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    readings = (("plain", "our plain answers (a valid reading)"), ("watermarked", "our watermarked answers"))
    for i, (reading, label) in enumerate(readings):
        for kind, mark in (("watermarked", "o"), ("control", "x")):
            pts = [(r["rho"], r[reading]["z"]) for r in doc["students"].values() if r["kind"] == kind]
            if pts:
                ax.plot(*zip(*pts, strict=True), mark, color=f"C{i}", label=f"{label}, {kind}")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("rho (our share of the student's training tokens)")
    ax.set_ylabel("mass statistic z (null sds)")
    wm = doc["watermark"]
    ax.set_title(f"what the students kept of our key ({wm['scheme']}, h {wm['context_width']})", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
