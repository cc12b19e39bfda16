"""The watermark CLI contract (docs/architecture.md) end to end on the tiny world, and its error behaviour."""

import json
import subprocess
import sys

import pytest

from cli_run import run_cli
from distillguard.cli import main


@pytest.fixture(scope="module")
def generated(tiny_world, tmp_path_factory):
    """Watermarked and plain answers to the tiny world's held-out prompts, via the CLI."""
    d = tmp_path_factory.mktemp("wm")
    prompts = d / "prompts.jsonl"
    rows = [json.loads(line) for line in tiny_world.prompts.read_text().splitlines()][:24]
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    common = [
        "--model",
        str(tiny_world.teacher),
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "48",
        "--key",
        "northwind",
        "--context-width",
        "2",
        "--delta",
        "3",
    ]
    main(["watermark", "generate", *common, "--out", str(d / "wm.jsonl"), "--json"])
    main(["watermark", "generate", *common, "--out", str(d / "plain.jsonl"), "--no-watermark", "--json"])
    return d


def test_generate_writes_ids_and_text(generated):
    rows = [json.loads(line) for line in (generated / "wm.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    assert all({"prompt", "prompt_token_ids", "token_ids", "text"} <= set(r) for r in rows)
    assert sum(len(r["token_ids"]) for r in rows) > 200


def test_detect_token_ids_json(generated, capsys):
    args = ["watermark", "detect", "--key", "northwind", "--context-width", "2", "--json"]
    code, out, _ = run_cli([*args, "--input", str(generated / "wm.jsonl")], capsys)
    assert code == 0
    doc = json.loads(out)
    assert len(doc["texts"]) == 24
    assert {"num_scored", "score", "z_score", "p_value"} <= set(doc["texts"][0])
    assert doc["aggregate"]["p_value"] < 1e-6
    _, out_plain, _ = run_cli([*args, "--input", str(generated / "plain.jsonl")], capsys)
    assert json.loads(out_plain)["aggregate"]["p_value"] > 1e-3
    _, out_wrong, _ = run_cli(
        [
            "watermark",
            "detect",
            "--key",
            "other",
            "--context-width",
            "2",
            "--json",
            "--input",
            str(generated / "wm.jsonl"),
        ],
        capsys,
    )
    assert json.loads(out_wrong)["aggregate"]["p_value"] > 1e-3


def test_detect_from_text_with_tokenizer(generated, tiny_world, tmp_path, capsys):
    rows = [json.loads(line) for line in (generated / "wm.jsonl").read_text().splitlines()]
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    code, out, _ = run_cli(
        [
            "watermark",
            "detect",
            "--input",
            str(texts),
            "--tokenizer",
            str(tiny_world.teacher),
            "--key",
            "northwind",
            "--context-width",
            "2",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    assert json.loads(out)["aggregate"]["p_value"] < 1e-4  # re-tokenised text keeps the signal


@pytest.mark.parametrize(
    "args,needle",
    [
        (["watermark", "detect", "--input", "/nonexistent.jsonl"], "not found"),
        (["watermark", "detect", "--input", "{bad}", "--scheme", "rot13"], "unknown scheme"),
        (["watermark", "detect", "--input", "{bad}"], "malformed JSON"),
        (["watermark", "detect", "--input", "{text}"], "needs --tokenizer"),
        (["watermark", "detect", "--input", "{ids}", "--hf-compat"], "--vocab-size"),
        (["watermark", "detect", "--input", "{ids}", "--vocab-size", "10"], "outside the vocabulary"),
        (
            ["watermark", "generate", "--model", "/nonexistent", "--prompts", "{prompt}", "--out", "x"],
            "not found",
        ),
        (
            ["watermark", "generate", "--model", "/nonexistent", "--prompts", "{ids}", "--out", "x"],
            "`prompt`",
        ),
        (["watermark", "detect", "--input", "{ids}", "--gamma", "2"], "gamma"),
        (["watermark", "detect", "--bogus-flag"], "bogus"),
    ],
)
def test_bad_input_gives_one_line_error(args, needle, tmp_path, capsys):
    files = {
        "{bad}": "{not json\n",
        "{text}": '{"text": "hello"}\n',
        "{ids}": '{"token_ids": [1, 2, 300]}\n',
        "{prompt}": '{"prompt": "Who are you?"}\n',
    }
    resolved = []
    for a in args:
        if a in files:
            p = tmp_path / f"{len(resolved)}.jsonl"
            p.write_text(files[a])
            a = str(p)
        resolved.append(a)
    if "--scheme" in resolved:  # the scheme check must win even before the file is read
        (tmp_path / "ok.jsonl").write_text('{"token_ids": [1, 2, 3]}\n')
        resolved[resolved.index("--input") + 1] = str(tmp_path / "ok.jsonl")
    code, out, err = run_cli(resolved, capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0]
    assert out == ""


def test_console_script_runs(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("[1, 2]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "distillguard.cli", "watermark", "detect", "--input", str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "JSON object" in proc.stderr


def test_eval_writes_json_and_plot(tiny_world, tmp_path):
    from distillguard.watermark.evaluate import run_eval

    result = run_eval(
        model=tiny_world.teacher,
        reference=tiny_world.reference,
        corpus=tiny_world.corpus,
        n=16,
        out=tmp_path,
        progress=False,
    )
    assert (tmp_path / "watermark_eval.json").is_file() and (
        tmp_path / "watermark_eval.png"
    ).stat().st_size > 10_000
    kgw = result["schemes"]["kgw"]
    assert kgw["by_length"][200]["tpr@0.001"] >= 0.8
    assert kgw["by_length"][200]["fpr@0.001"] == 0.0
    assert kgw["by_length"][200]["tpr@0.001"] >= kgw["by_length"][25]["tpr@0.001"]
    assert kgw["substitution"][0.3]["tpr@0.001"] <= kgw["by_length"][200]["tpr@0.001"]
    assert result["perplexity"]["kgw"] > 0 and result["perplexity"]["plain"] > 0
    assert 0.5 < kgw["perplexity_ratio"] < 3
