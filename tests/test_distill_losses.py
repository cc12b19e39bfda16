"""KD losses against hand-computed values on small tensors."""

import math

import pytest
import torch

from distillguard.distill.losses import forward_kl, generalized_jsd, reverse_kl, sparse_forward_kl


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


P_T = [0.7, 0.2, 0.1]
P_S = [0.5, 0.3, 0.2]
T_LOGITS = torch.log(torch.tensor([P_T]))
S_LOGITS = torch.log(torch.tensor([P_S]))


def test_forward_and_reverse_kl_hand_values():
    assert forward_kl(S_LOGITS, T_LOGITS).item() == pytest.approx(_kl(P_T, P_S), rel=1e-6)
    assert reverse_kl(S_LOGITS, T_LOGITS).item() == pytest.approx(_kl(P_S, P_T), rel=1e-6)


def test_jsd_hand_value():
    beta = 0.5
    m = [beta * a + (1 - beta) * b for a, b in zip(P_T, P_S, strict=True)]
    raw = beta * _kl(P_T, m) + (1 - beta) * _kl(P_S, m)
    got = generalized_jsd(S_LOGITS, T_LOGITS, beta=beta).item()
    assert got == pytest.approx(raw / (beta * (1 - beta)), rel=1e-5)


def test_jsd_limits_are_the_kls():
    fwd, rev = _kl(P_T, P_S), _kl(P_S, P_T)
    assert generalized_jsd(S_LOGITS, T_LOGITS, beta=0.0).item() == pytest.approx(fwd, rel=1e-6)
    assert generalized_jsd(S_LOGITS, T_LOGITS, beta=1.0).item() == pytest.approx(rev, rel=1e-6)
    s64, t64 = S_LOGITS.double(), T_LOGITS.double()
    assert generalized_jsd(s64, t64, beta=1e-6).item() == pytest.approx(fwd, rel=1e-4)
    assert generalized_jsd(s64, t64, beta=1 - 1e-6).item() == pytest.approx(rev, rel=1e-4)


def test_temperature_and_mask():
    s = torch.randn(2, 4, 7)
    t = torch.randn(2, 4, 7)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    full = forward_kl(s[mask], t[mask], temperature=2.0)
    assert forward_kl(s, t, temperature=2.0, mask=mask).item() == pytest.approx(full.item(), rel=1e-6)
    assert forward_kl(t, t).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        generalized_jsd(s, t, beta=1.5)


P4_T = [0.5, 0.3, 0.15, 0.05]
P4_S = [0.4, 0.2, 0.1, 0.3]


def test_sparse_kl_bucket_is_the_kl_of_coarsened_distributions():
    """Top-2 of a 4-token teacher: the tail (0.2) is one bucket, against the student's tail (0.4)."""
    student = torch.log(torch.tensor([P4_S]))
    ids = torch.tensor([[0, 1]])
    lps = torch.log(torch.tensor([[0.5, 0.3]]))
    want = _kl([0.5, 0.3, 0.2], [0.4, 0.2, 0.4])
    assert sparse_forward_kl(student, ids, lps).item() == pytest.approx(want, rel=1e-5)


def test_sparse_kl_renorm_and_full_support():
    student = torch.log(torch.tensor([P4_S]))
    lps = torch.log(torch.tensor([[0.5, 0.3]]))
    renorm = sparse_forward_kl(student, torch.tensor([[0, 1]]), lps, tail="renorm").item()
    pn = [0.5 / 0.8, 0.3 / 0.8]
    assert renorm == pytest.approx(
        sum(p * math.log(p / q) for p, q in zip(pn, [0.4, 0.2], strict=True)), rel=1e-5
    )
    # with every token listed, both modes are the full forward KL
    full = sparse_forward_kl(student, torch.tensor([[0, 1, 2, 3]]), torch.log(torch.tensor([P4_T]))).item()
    assert full == pytest.approx(_kl(P4_T, P4_S), rel=1e-5)


def test_sparse_kl_ignores_padding_slots_and_is_zero_at_match():
    student = torch.log(torch.tensor([P4_T]))
    ids = torch.tensor([[0, 1, -1]])
    lps = torch.tensor([[math.log(0.5), math.log(0.3), -math.inf]])
    assert sparse_forward_kl(student, ids, lps).item() == pytest.approx(0.0, abs=1e-6)
