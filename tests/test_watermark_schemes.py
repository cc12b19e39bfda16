"""Watermark schemes: keyed hashing, green lists, transformers compatibility, Gumbel distortion-freeness."""

import numpy as np
import pytest
import torch
from scipy import stats as sst
from transformers import WatermarkDetector, WatermarkingConfig
from transformers.generation.logits_process import WatermarkLogitsProcessor as HFProcessor

from distillguard.errors import UserError
from distillguard.lm.tiny import make_tiny_llama
from distillguard.watermark import hashing
from distillguard.watermark.detect import detect_ids
from distillguard.watermark.generate import generate_ids
from distillguard.watermark.schemes import (
    WatermarkSpec,
    gumbel_choose,
    gumbel_token_uniforms,
    gumbel_uniforms,
    kgw_green_mask,
    kgw_is_green,
)


def test_mix64_matches_python_reference():
    xs = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x123456789ABCDEF]
    got = hashing.mix64(torch.tensor([hashing.to_signed64(x) for x in xs], dtype=torch.int64)).tolist()
    assert [g & hashing.MASK64 for g in got] == [hashing.mix64_int(x) for x in xs]


def test_one_splitmix64_for_the_watermark_and_the_monitor():
    from distillguard import splitmix
    from distillguard.monitor import features, linking

    # SplitMix64 seeded with 0: its first output is the finaliser of GOLDEN (the published sequence)
    assert splitmix.mix64_int(splitmix.GOLDEN) == 0xE220A8397B1DCDAF
    xs = np.array([0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x123456789ABCDEF], dtype=np.uint64)
    before = xs.copy()
    got = splitmix.mix64_np(xs)
    assert got.dtype == np.uint64 and got.tolist() == [splitmix.mix64_int(int(x)) for x in before]
    assert np.array_equal(xs, before)  # the input is not modified
    scalar = splitmix.mix64_np(np.uint64(5))
    assert scalar.shape == () and int(scalar) == splitmix.mix64_int(5)
    assert hashing.mix64_np is features.mix64_np is linking.mix64_np is splitmix.mix64_np
    assert hashing.mix64_int is splitmix.mix64_int


def test_numpy_and_torch_backends_agree_bit_for_bit():
    w = torch.randint(-(2**62), 2**62, (64, 3), dtype=torch.int64)
    assert torch.equal(hashing.mix64(w), hashing._mix64_torch(w))
    key = hashing.derive_key("k")
    seeds = hashing.window_seeds(key, w)
    assert torch.equal(seeds, hashing.window_seeds_torch(key, w))
    idx = torch.arange(10)
    assert torch.equal(
        hashing.words(seeds[:, None], idx[None]), hashing.words_torch(seeds[:, None], idx[None])
    )


def test_keys_derive_consistently():
    assert hashing.derive_key(42) == hashing.derive_key("42") == hashing.derive_key(" 0x2a ")
    assert hashing.derive_key("northwind-secret") != hashing.derive_key("northwind-secret2")


def test_one_key_parser_for_options_settings_and_specs():
    from distillguard.gateway.settings import GatewaySettings
    from distillguard.watermark.keys import parse_key
    from distillguard.watermark.options import build_specs

    assert parse_key(" 0x2a ") == parse_key("42") == parse_key(42) == 42
    assert parse_key("northwind") == "northwind" and parse_key(" 1e3 ") == " 1e3 "  # not an integer
    specs = build_specs("kgw", ["0x2a", "northwind"], 0.25, 2.0, 1, False, None)
    assert [s.key for s in specs] == [42, "northwind"]
    assert GatewaySettings(watermark_key=" 0x2a ").watermark_spec().key == 42
    assert GatewaySettings(watermark_key="northwind").watermark_spec().key == "northwind"
    WatermarkSpec(key="0x2a", hf_compat=True, vocab_size=100)  # an integer string is an integer key
    with pytest.raises(UserError, match="integer key"):
        WatermarkSpec(key="northwind", hf_compat=True, vocab_size=100)


def test_watermark_settings_defaults_config_flags_and_errors():
    from distillguard.gateway.settings import GatewaySettings
    from distillguard.watermark.settings import WatermarkSettings

    # one set of defaults: the settings, the spec and the gateway agree
    assert WatermarkSettings().spec() == WatermarkSpec()
    cfg = {"watermark_scheme": "KGW", "watermark_key": 42, "watermark_gamma": "0.5", "watermark_delta": 3}
    s = WatermarkSettings.from_config(cfg)
    assert (s.scheme, s.key, s.gamma, s.delta, s.context_width) == ("KGW", "42", 0.5, 3.0, 1)
    assert s.spec() == GatewaySettings.from_mapping(cfg).watermark_spec()  # an audit tests what was served
    served = GatewaySettings.from_mapping(cfg)
    assert served.watermark_settings() == s and served.watermark_spec(delta=4.0).delta == 4.0
    assert GatewaySettings(watermark=False).watermark_spec() is None
    # flags win, None is "not given"; a command's base replaces the defaults but not the config
    s = WatermarkSettings.from_config(cfg, gamma=0.3, delta=None, context_width=2)
    assert (s.gamma, s.delta, s.context_width) == (0.3, 3.0, 2)
    base = WatermarkSettings(key="demo", delta=4.0)
    assert WatermarkSettings.from_config({}, base=base) == base
    assert WatermarkSettings.from_config({"watermark_delta": 1.5}, base=base).delta == 1.5
    assert WatermarkSettings.from_config(cfg).spec(key="7", vocab_size=100).key == 7
    with pytest.raises(UserError, match="^setting watermark_gamma = 'lots' is not a valid float$"):
        WatermarkSettings.from_config({"watermark_gamma": "lots"})
    with pytest.raises(UserError, match="gamma must be in"):
        WatermarkSettings.from_config({"watermark_gamma": 2}).spec()


@pytest.mark.parametrize("gamma,vocab", [(0.25, 1000), (0.5, 4099), (0.1, 1001), (0.3, 32000)])
def test_native_mask_agrees_with_per_token_test_and_rate(gamma, vocab):
    spec = WatermarkSpec(key=7, gamma=gamma, vocab_size=vocab, context_width=3)
    windows = torch.randint(0, vocab, (6, 3))
    mask = kgw_green_mask(spec, windows)
    assert mask.shape == (6, vocab)
    flat = kgw_is_green(spec, windows.repeat_interleave(vocab, 0), torch.arange(vocab).repeat(6))
    assert torch.equal(flat.view(6, vocab), mask)
    assert abs(spec.green_rate - gamma) < 1e-4
    rate = mask.float().mean().item()
    assert abs(rate - spec.green_rate) < 4 * (spec.green_rate * (1 - spec.green_rate) / mask.numel()) ** 0.5


def test_green_lists_differ_by_key_and_window():
    spec = WatermarkSpec(key=1, vocab_size=5000, context_width=2)
    w = torch.tensor([[10, 20], [10, 21], [11, 20]])
    m = kgw_green_mask(spec, w)
    m2 = kgw_green_mask(spec.with_key(2), w)
    for a, b in [(m[0], m[1]), (m[0], m[2]), (m[0], m2[0])]:
        overlap = (a & b).float().sum() / a.float().sum()
        assert 0.18 < overlap < 0.32  # independent lists share ~gamma of their members


@pytest.mark.parametrize("vocab,key", [(1000, 15485863), (777, 12345), (50257, 2**40 + 7), (4096, 3)])
def test_hf_compat_green_lists_equal_transformers(vocab, key):
    hf = HFProcessor(vocab, "cpu", greenlist_ratio=0.25, bias=2.0, hashing_key=key)
    spec = WatermarkSpec(key=key, hf_compat=True, vocab_size=vocab)
    last = torch.tensor([0, 1, 5, vocab // 2, vocab - 1])
    mask = kgw_green_mask(spec, last[:, None])
    for i, t in enumerate(last.tolist()):
        theirs = hf._get_greenlist_ids(torch.tensor([3, t]))
        assert torch.equal(torch.sort(theirs).values, torch.nonzero(mask[i]).flatten())
    assert spec.green_rate == int(vocab * 0.25) / vocab


def _tiny_llama(vocab=500):
    return make_tiny_llama(
        vocab,
        hidden=32,
        layers=1,
        heads=2,
        intermediate=64,
        max_pos=512,
        seed=0,
        bos_id=1,
        eos_id=1,
        pad_id=0,
    ).eval()


def test_transformers_generation_detected_by_our_compat_detector_and_back():
    model = _tiny_llama(vocab=503)
    wcfg = WatermarkingConfig(bias=4.0, hashing_key=15485863, seeding_scheme="lefthash", greenlist_ratio=0.25)
    prompts = torch.randint(2, 503, (4, 6), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)
    out = model.generate(
        prompts,
        watermarking_config=wcfg,
        do_sample=True,
        max_new_tokens=200,
        min_new_tokens=200,
        pad_token_id=0,
    )
    spec = WatermarkSpec(key=15485863, hf_compat=True, vocab_size=503, delta=4.0)
    doc = detect_ids(spec, out[:, 6:].tolist(), prompts.tolist())
    assert all(t["p_value"] < 1e-6 for t in doc["texts"])

    ours = generate_ids(
        model, prompts.tolist(), spec, pad_id=0, eos_id=None, max_new_tokens=200, min_new_tokens=200, seed=3
    )
    detector = WatermarkDetector(model_config=model.config, device="cpu", watermarking_config=wcfg)
    res = detector(
        torch.tensor([p + c for p, c in zip(prompts.tolist(), ours, strict=True)]), return_dict=True
    )
    assert res.prediction.all()

    plain = generate_ids(
        model, prompts.tolist(), None, pad_id=0, eos_id=None, max_new_tokens=200, min_new_tokens=200, seed=3
    )
    assert all(t["p_value"] > 1e-3 for t in detect_ids(spec, plain, prompts.tolist())["texts"])


@pytest.mark.parametrize("scheme", ["kgw", "gumbel"])
def test_native_generation_detected_only_with_right_key(scheme):
    model = _tiny_llama(vocab=600)
    spec = WatermarkSpec(scheme=scheme, key="northwind", context_width=2, delta=3.0)
    prompts = [[5, 6, 7, 8]] * 3
    wm = generate_ids(model, prompts, spec, pad_id=0, eos_id=None, max_new_tokens=150, min_new_tokens=150)
    good = detect_ids(spec.with_vocab(600), wm, prompts)
    bad = detect_ids(spec.with_key("other").with_vocab(600), wm, prompts)
    assert good["aggregate"]["p_value"] < 1e-10
    assert bad["aggregate"]["p_value"] > 1e-3


def test_gumbel_sampling_is_distortion_free_over_keys():
    probs = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005], dtype=torch.float64)
    counts = torch.zeros(8)
    windows = torch.arange(400).view(400, 1)
    for key in range(50):  # 20,000 draws over keys and windows
        spec = WatermarkSpec(scheme="gumbel", key=key, vocab_size=8)
        choice = gumbel_choose(gumbel_uniforms(spec, windows), probs.expand(400, 8))
        counts += torch.bincount(choice, minlength=8)
    expected = probs * counts.sum()
    assert sst.chisquare(counts.numpy(), expected.numpy()).pvalue > 0.01


def test_gumbel_token_uniforms_match_row_uniforms():
    spec = WatermarkSpec(scheme="gumbel", key=9, vocab_size=300, context_width=2)
    w = torch.randint(0, 300, (4, 2))
    rows = gumbel_uniforms(spec, w)
    toks = torch.randint(0, 300, (4,))
    assert torch.equal(gumbel_token_uniforms(spec, w, toks), rows[torch.arange(4), toks])
    assert rows.min() > 0 and rows.max() < 1


def test_bad_specs_are_user_errors():
    with pytest.raises(UserError):
        WatermarkSpec(scheme="rot13")
    with pytest.raises(UserError):
        WatermarkSpec(gamma=1.5)
    with pytest.raises(UserError):
        WatermarkSpec(scheme="gumbel", hf_compat=True)
    with pytest.raises(UserError):
        WatermarkSpec(key="not-an-int", hf_compat=True)


def test_same_bits_on_every_device():
    spec = WatermarkSpec(key=11, vocab_size=2048, context_width=2)
    w = torch.randint(0, 2048, (3, 2))
    cpu = kgw_green_mask(spec, w)
    if torch.cuda.is_available():
        assert torch.equal(cpu, kgw_green_mask(spec, w.cuda()).cpu())
    # the arithmetic is byte-order independent too: the lane-extraction path agrees with the view path
    flat = kgw_is_green(spec, w.repeat_interleave(2048, 0), torch.arange(2048).repeat(3))
    assert torch.equal(flat.view(3, 2048), cpu)
    assert np.isclose(cpu.float().mean().item(), 0.25, atol=0.03)
