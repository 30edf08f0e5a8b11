"""Minibatch OT couplings with POT: the exact plan against POT's ``ot.emd``, and the Sinkhorn
coupling, which runs on POT. POT is a test oracle: ``scripts/test`` requires it
(tests/conftest.py), a plain pytest run skips this module without it."""

import pytest
import torch

from genmodels.objectives.couplings import ot_permutation, sinkhorn_partners, squared_costs

ot = pytest.importorskip("ot", reason="POT is a test oracle: scripts/setup test installs it")


def test_exact_ot_coupling_costs_what_pots_plan_costs():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(32, 2, generator=g) + 3, torch.randn(32, 2, generator=g)
    perm = ot_permutation(x0, noise)
    cost = squared_costs(x0, noise)
    uniform = torch.full((32,), 1 / 32, dtype=torch.float64).numpy()
    plan = torch.from_numpy(ot.emd(uniform, uniform, cost.numpy()))
    ours = torch.zeros(32, 32, dtype=torch.float64)
    ours[torch.arange(32), perm] = 1 / 32
    assert abs((plan * cost).sum() - (ours * cost).sum()) < 1e-9  # optimal cost


def test_sinkhorn_coupling_recovers_most_of_the_exact_plans_gain():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, generator=g) * 0.3 + torch.tensor([[2.0, 0.0]]) * torch.randint(0, 2, (64, 1), generator=g).mul(2).sub(1)
    noise = torch.randn(64, 2, generator=g)
    cost = squared_costs(x0, noise)
    independent = cost.diagonal().mean()
    exact = cost[torch.arange(64), ot_permutation(x0, noise)].mean()
    partners = sinkhorn_partners(x0, noise, generator=torch.Generator().manual_seed(1))
    entropic = cost[torch.arange(64), partners].mean()
    assert exact <= entropic < independent - 0.5 * (independent - exact), (independent, entropic, exact)
