"""The outcome metrics against their definitions, computed the long way in float64."""

from __future__ import annotations

import math

import torch

from harmmed.patching.metrics import outcome_metrics, target_logprobs


def test_target_logprobs_are_log_softmax_entries():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 50, generator=gen) * 4
    target = torch.tensor([5, 7, 11])
    got = target_logprobs(logits, target)
    reference = torch.log_softmax(logits.double(), dim=-1)
    assert got.shape == (3, 3)
    for j, token in enumerate(target.tolist()):
        torch.testing.assert_close(got[:, j].double(), reference[:, j, token], atol=1e-5, rtol=0)


def test_refusal_is_the_log_odds_of_refusal_first_tokens():
    gen = torch.Generator().manual_seed(1)
    first = torch.randn(2, 40, generator=gen)
    refusal = torch.tensor([2, 9])
    first[1, 9] = 30.0  # p_R within ~1e-11 of 1: the naive log(1 - p_R) would be -inf in float32
    y = outcome_metrics(first, torch.zeros(2, 3), refusal)
    for row in range(2):
        p = torch.softmax(first[row].double(), dim=-1)
        p_refuse = float(p[refusal].sum())
        p_other = float(p.sum() - p[refusal].sum())
        expected = math.log(p_refuse) - math.log(float(p[[i for i in range(40) if i not in (2, 9)]].sum())
                                                 if p_other < 1e-6 else p_other)
        assert abs(float(y["refusal"][row]) - expected) < 1e-4
    assert float(y["refusal"][1]) > 20
    torch.testing.assert_close(outcome_metrics(first, torch.tensor([[-1.0, -3.0], [0.0, -2.0]]), refusal)["harm"],
                               torch.tensor([-2.0, -1.0], dtype=torch.float64))
