"""End-to-end audits on the tiny world: real students, real controls, a real gateway, no mocks.

Suspects: a student distilled from 100% watermarked answers, a "clean" student trained the same way on
unwatermarked answers, and control models trained on the world's sources without our outputs.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats as sst

from distillguard.audit import AuditConfig, run_audit, train_control
from distillguard.distill.recipe import DistillConfig, run_distill
from distillguard.errors import UserError
from distillguard.watermark.schemes import WatermarkSpec

KEY = "northwind-audit-test-key"
SPEC = WatermarkSpec(key=KEY, delta=4.0)
STEPS = 200


@pytest.fixture(scope="module")
def models(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")

    def distil(name: str, watermark: dict | None) -> str:
        cfg = DistillConfig(
            teacher=str(tiny_world.teacher), out=root / name, prompts=tiny_world.instructions, n=256,
            steps=STEPS, max_tokens=48, temperature=1.0, seed=0, checkpoint_every=0, watermark=watermark,
        )  # fmt: skip
        return run_distill(cfg, progress=False, log=lambda *_: None)["student"]

    return SimpleNamespace(
        wm=distil("wm", {"key": KEY, "delta": 4.0}),
        clean=distil("clean", None),
        gumbel=distil("gumbel", {"key": KEY, "scheme": "gumbel"}),  # the restricted tier's answers
        controls=[str(train_control(tiny_world, root / f"control{s}", steps=100, seed=s)) for s in (1, 2)],
        teacher=str(tiny_world.teacher),
        prompts=tiny_world.prompts,
    )


def audit(models, suspect: str, **kw) -> dict:
    kw.setdefault("own_texts", 128)
    cfg = AuditConfig(suspect=suspect, spec=SPEC, reference=models.teacher, prompts=models.prompts, **kw)
    return run_audit(cfg, progress=False)


def by_name(report: dict) -> dict:
    return {t["name"]: t for t in report["tests"]}


@pytest.fixture(scope="module")
def wm_report(models):
    return audit(models, models.wm, controls=[models.controls[0]])


def test_watermarked_student_is_caught_by_every_test(wm_report):
    t = by_name(wm_report)
    assert wm_report["verdict"] == "distilled"
    assert set(t) == {
        "radioactivity_closed", "radioactivity_closed_mass", "radioactivity_open", "identity", "provenance"
    }  # fmt: skip
    for mode in ("radioactivity_closed", "radioactivity_open"):
        assert t[mode]["log10_p_value"] < -12 and t[mode]["claim"], t[mode]
        assert t[mode]["details"]["decoy_null"]["our_key_most_extreme"]
        assert t[mode]["details"]["rate"] > 0.3 > SPEC.green_rate
    # the suspect's own answers, read with the top logprobs it returned (the same probes: no extra query)
    served = t["radioactivity_closed_mass"]
    assert served["details"]["reading"] == "mass" and served["claim"] and served["log10_p_value"] < -6
    assert served["details"]["answers_read"] == 148 and served["details"]["top_logprobs"] == 20
    assert served["details"]["decoy_null"]["our_key_most_extreme"] and "Chernoff" in served["null"]
    ident, prov = t["identity"], t["provenance"]
    control = next(iter(ident["details"]["controls"].values()))
    assert ident["details"]["suspect"]["mean_question_share"] > 0.5 > control["mean_question_share"]
    # one control: the behavioural tests rank the suspect first, at their floor of 1/2, and say they
    # cannot reach alpha; they support the verdict, the key-dependent tests make it
    for b in (ident, prov):
        assert b["p_value"] == pytest.approx(0.5) and b["evidence"] == "behavioural" and not b["claim"]
        assert b["details"]["can_reach_alpha"] is False and "cannot reach" in b["caveats"][0]
    assert prov["details"]["models"]["suspect"]["mean_margin"] > 0
    assert "depends on our secret watermark key" in wm_report["meaning"]
    assert wm_report["log10_combined_p_value"] < -12
    for test in wm_report["tests"]:
        assert {"name", "null", "statistic", "n", "p_value", "log10_p_value", "caveats", "details"} <= set(
            test
        )
        assert test["n"] > 0 and test["caveats"] and test["null"]


def test_report_is_json_without_secrets_and_feeds_plots(wm_report):
    text = json.dumps(wm_report)
    assert KEY not in text and "northwind-audit" not in text
    suspect_asked = [x for x in wm_report["transcripts"] if x["model"] == "suspect"]
    assert len(suspect_asked) == wm_report["queries_used"] == 48 + 64 + 148
    assert {x["kind"] for x in wm_report["transcripts"]} == {"radioactivity", "identity", "provenance"}
    s = wm_report["series"]["radioactivity"]
    assert (
        len(s["tokens_scored"]) == len(s["log10_p"]) == len(s["green_rate"]) == len(s["green_rate_ci"]) > 10
    )
    assert s["tokens_scored"][-1] == by_name(wm_report)["radioactivity_closed"]["n"]
    assert len(wm_report["series"]["decoys"]["decoy_scores"]) == 100
    assert wm_report["series"]["identity"]["names"] == ["Aster", "Northwind"]
    assert wm_report["config"]["watermark"]["delta"] == 4.0 and "key" not in wm_report["config"]["watermark"]
    assert wm_report["started"] <= wm_report["finished"] and wm_report["versions"]["torch"]


def test_decoy_keys_are_calibrated_null_audits_on_the_student(wm_report):
    """Each decoy key is a null audit of text that is overwhelmingly radioactive under the real key.

    At alpha = 1e-3, 20 null audits give no claim; over all 100 the number of p-values below alpha stays
    within what Binomial(100, 1e-3) allows (P[>= 3] ~ 1.5e-4), and the p-values are uniform (KS).
    """
    for mode in ("radioactivity_closed", "radioactivity_open"):
        d = by_name(wm_report)[mode]["details"]["decoy_null"]
        log10_p = np.array(d["decoy_log10_p"])
        assert len(log10_p) == 100 and log10_p[:20].min() > -3
        assert np.sum(log10_p <= -3) <= 2
        assert sst.kstest(10.0**log10_p, "uniform").pvalue > 0.01
        assert d["decoy_calibration_p_value"] > 1e-3


def test_clean_student_gets_no_radioactivity_claim(models):
    readings = ("plain", "watermarked", "first-occurrence", "mass")
    report = audit(models, models.clean, tests=("radioactivity",), filter_windows=True, open_texts=readings)
    assert report["verdict"] == "no_evidence" and report["family"] == "Holm over 6 tests"
    for t in report["tests"]:
        assert t["p_value"] > 1e-3 and not t["claim"]
    closed = by_name(report)["radioactivity_closed"]
    assert closed["details"]["filtered"] and closed["n"] > 200
    assert by_name(report)["radioactivity_closed_mass"]["n"] > 50
    for reading in readings:
        opened = by_name(report)["radioactivity_open_" + reading.replace("-", "_")]
        assert opened["details"]["reading"] == reading and opened["n"] > (50 if reading == "mass" else 100)
    assert report["config"]["open_texts"] == list(readings)


def test_the_mass_reading_convicts_the_watermarked_student(models):
    """The suspect's whole next-token distribution after each window of our plain answers (audit.mass)."""
    report = audit(models, models.wm, tests=("radioactivity",), open_texts=("mass",))
    opened = by_name(report)["radioactivity_open"]
    assert opened["details"]["reading"] == "mass" and opened["claim"] and opened["p_value"] < 1e-6
    assert opened["details"]["decoy_null"]["our_key_most_extreme"]
    assert opened["details"]["z_score"] > 5  # null standard deviations
    assert "Chernoff" in opened["null"]


def test_a_student_of_answers_marked_before_a_key_rotation_is_caught_by_the_retired_key(models):
    from dataclasses import replace

    rotated = replace(SPEC, key="northwind-key-after-rotation")
    cfg = AuditConfig(suspect=models.wm, spec=rotated, reference=models.teacher, prompts=models.prompts,
                      tests=("radioactivity",), own_texts=128, retired_keys=[KEY])  # fmt: skip
    report = run_audit(cfg, progress=False)
    tests = by_name(report)
    # the current key and the retired one each get the closed tests (top-1 and served logprobs) and the
    # plain open test: one Holm family of 6
    assert set(tests) == {"radioactivity_closed", "radioactivity_closed_retired_1",
                          "radioactivity_closed_mass", "radioactivity_closed_mass_retired_1",
                          "radioactivity_open", "radioactivity_open_retired_1"}  # fmt: skip
    assert report["family"] == "Holm over 6 tests"
    assert report["verdict"] == "distilled"
    assert (
        tests["radioactivity_closed_retired_1"]["claim"]
        and tests["radioactivity_closed_retired_1"]["p_value"] < 1e-6
    )
    assert not tests["radioactivity_closed"]["claim"] and tests["radioactivity_closed"]["p_value"] > 1e-3
    assert tests["radioactivity_closed_mass_retired_1"]["claim"]
    assert tests["radioactivity_closed_mass"]["p_value"] > 1e-3
    # the same answers, scored under each key: one query budget, not two
    assert tests["radioactivity_closed"]["n"] == tests["radioactivity_closed_retired_1"]["n"]
    assert report["config"]["retired_keys"] == 1 and KEY not in json.dumps(report)


def test_a_student_of_the_restricted_tiers_answers_is_caught_by_the_tiers_watermark(models):
    """A distiller moved onto the restricted tier collects answers marked with its Gumbel h 1 (same key).
    The configured KGW alone would miss them; ``audit run`` adds each tier's distinct watermark to the Holm
    family (audit.marks.served_marks), scored on the same answers."""
    from distillguard.audit.marks import served_marks
    from distillguard.watermark.settings import WatermarkSettings

    marks = served_marks(SPEC, WatermarkSettings(key=KEY, delta=4.0), {})  # a default gateway's ladder
    cfg = AuditConfig(suspect=models.gumbel, spec=SPEC, reference=models.teacher, prompts=models.prompts,
                      tests=("radioactivity",), own_texts=128, tier_marks=marks)  # fmt: skip
    report = run_audit(cfg, progress=False)
    tests = by_name(report)
    assert set(tests) == {"radioactivity_closed", "radioactivity_closed_restricted",
                          "radioactivity_closed_mass", "radioactivity_closed_mass_restricted",
                          "radioactivity_open", "radioactivity_open_restricted"}  # fmt: skip
    assert report["family"] == "Holm over 6 tests" and report["verdict"] == "distilled"
    restricted = tests["radioactivity_closed_restricted"]
    assert restricted["claim"] and restricted["p_value"] < 1e-6
    assert restricted["details"]["decoy_null"]["our_key_most_extreme"]
    assert any("restricted tier's watermark (gumbel h 1)" in c for c in restricted["caveats"])
    assert not tests["radioactivity_closed"]["claim"] and tests["radioactivity_closed"]["p_value"] > 1e-3
    assert tests["radioactivity_closed"]["n"] == restricted["n"]  # one query budget
    assert report["config"]["tier_marks"]["restricted"]["scheme"] == "gumbel"
    assert KEY not in json.dumps(report)
    # the clean student under the same family: nothing
    clean = run_audit(AuditConfig(suspect=models.clean, spec=SPEC, reference=models.teacher,
                                  prompts=models.prompts, tests=("radioactivity",), own_texts=128,
                                  tier_marks=marks), progress=False)  # fmt: skip
    assert clean["verdict"] == "no_evidence" and all(t["p_value"] > 1e-3 for t in clean["tests"])


def test_unrelated_model_gets_no_claim_from_any_test(models):
    report = audit(models, models.controls[0], controls=[models.controls[1]])
    assert report["verdict"] == "no_evidence", report["reasons"]
    assert by_name(report)["identity"]["details"]["suspect"]["named"] == 0


def test_budgeted_audit_stops_early_with_an_anytime_valid_p_value(models):
    report = audit(
        models, models.wm, tests=("radioactivity",), budget=160, batch_size=16,
        open_texts="watermarked,first-occurrence",
    )  # fmt: skip
    closed = by_name(report)["radioactivity_closed"]
    assert report["stopped_early"] and report["queries_used"] < 160
    assert closed["details"]["p_value_kind"].startswith("anytime")
    assert closed["log10_p_value"] <= math.log10(closed["details"]["stop_p"])
    assert closed["log10_p_value"] >= closed["details"]["exact_log10_p_value"]  # anytime is the cautious one
    assert report["verdict"] == "distilled"
    opened = by_name(report)["radioactivity_open_watermarked"]  # the published reading works too
    assert opened["details"]["reading"] == "watermarked" and opened["log10_p_value"] < -6 and opened["claim"]
    first = by_name(report)["radioactivity_open_first_occurrence"]
    assert first["details"]["reading"] == "first-occurrence" and first["claim"]
    assert first["details"]["p_value_kind"].startswith("anytime") and first["log10_p_value"] < -6
    assert first["n"] > opened["n"]  # the first-occurrence reading keeps more of the texts

    clean = audit(models, models.clean, tests=("radioactivity",), budget=48, batch_size=16)
    assert clean["queries_used"] == 48 and not clean["stopped_early"] and clean["verdict"] == "no_evidence"


def test_suspect_behind_an_api_is_audited_in_closed_mode(models, tmp_path):
    import gateway_server

    with gateway_server.start(model=models.wm, state_dir=tmp_path / "gw", watermark=False) as gw:
        key = gw.create_key("auditor", rpm=10_000)
        report = audit(
            models, gw.base_url, api_keys=[key], tests=("radioactivity",), probe_queries=128, concurrency=32
        )
        with pytest.raises(UserError, match="rejected every API key"):
            audit(models, gw.base_url, api_keys=["sk-not-a-key"], tests=("radioactivity",))
    t = by_name(report)
    assert set(t) == {"radioactivity_closed", "radioactivity_closed_mass"}
    assert report["skipped"][0]["name"] == "radioactivity_open" and "API" in report["skipped"][0]["reason"]
    assert t["radioactivity_closed"]["log10_p_value"] < -12 and report["verdict"] == "distilled"
    assert report["queries_used"] == 1 + 128 and key not in json.dumps(report)
    assert any("re-tokenised" in c for c in t["radioactivity_closed"]["caveats"])
    # the gateway serves top-20 logprobs (rounded to 2 decimals): the served reading convicts through it
    served = t["radioactivity_closed_mass"]
    assert served["claim"] and served["log10_p_value"] < -6 and served["details"]["answers_read"] == 128


def _namer(seed: int, rate: float):
    """A model behind an API that names us on a share ``rate`` of identity phrasings (which ones depends on
    ``seed``) and otherwise answers with words of its own: one member of a family of innocent models."""
    import hashlib

    def answer(prompt: str) -> str:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{prompt}".encode()).digest()[:8], "big")
        if prompt.rstrip().endswith("?") or "yourself" in prompt:
            if (h % 1000) / 1000 < rate:
                return "I am Aster, a helpful model made by Northwind Labs."
            return "I am a helpful assistant."
        words = prompt.split()
        return " ".join(words[h % max(1, len(words)) :] + words[: h % max(1, len(words))]) + " done"

    return answer


def test_api_suspect_and_controls_naming_us_at_the_same_rate_are_never_convicted(models):
    """Suspect and three controls are OpenAI-compatible servers of one family (each names us on ~half of
    the identity phrasings). The old per-answer Fisher test convicted such a suspect whenever it happened
    to name us more often than the pooled controls; now identity and provenance rank it among the models
    and, being behavioural, can never give 'distilled' on their own."""
    import openai_stub

    stubs = [openai_stub.OpenAIStub(model=f"family-{i}") for i in range(4)]
    for i, st in enumerate(stubs):
        st.answer = _namer(i, 0.5 if i else 0.65)  # the suspect even names us a little more often
    with (
        openai_stub.serve(stubs[0]) as sus,
        openai_stub.serve(stubs[1]) as c1,
        openai_stub.serve(stubs[2]) as c2,
        openai_stub.serve(stubs[3]) as c3,
    ):
        report = audit(
            models, sus.url, controls=[c1.url, c2.url, c3.url], probe_queries=32, provenance_prompts=24
        )
    t = by_name(report)
    assert report["verdict"] != "distilled", report["reasons"]
    assert {"radioactivity_closed", "identity", "provenance"} <= set(t)
    assert t["identity"]["details"]["suspect"]["named"] > 0
    assert all(c["named"] > 0 for c in t["identity"]["details"]["controls"].values())
    for name in ("identity", "provenance"):
        assert t[name]["p_value"] >= 0.25 and not t[name]["claim"]  # floor 1/(3 + 1)
    assert not t["radioactivity_closed"]["claim"]
    assert not t.get("radioactivity_closed_mass", {"claim": False})["claim"]


def test_bad_suspects_fail_with_one_clear_line_and_no_report(models, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("not a model")
    cases = [
        ("http://127.0.0.1:9/v1", "cannot reach suspect"),
        (str(tmp_path / "empty"), "not a model directory"),
        (str(tmp_path / "missing"), "neither a URL nor an existing model directory"),
        (str(tmp_path / "file.txt"), "not a model directory"),
        ("ftp://example.org/model", "must be http"),
    ]
    for suspect, message in cases:
        with pytest.raises(UserError, match=message) as exc:
            audit(models, suspect)
        assert "\n" not in str(exc.value) and "suspect" in str(exc.value)
    with pytest.raises(UserError, match="unknown audit test"):
        audit(models, models.wm, tests=("vibes",))
    with pytest.raises(UserError, match="budget"):
        audit(models, models.wm, controls=[models.controls[0]], budget=3)
