"""The compile backend of the CCPO update: its addmm pass, and a compiled function matching eager."""

from __future__ import annotations

import warnings

import torch

from ccpo_pl.algos.ccpo.compiled import addmm_without_bias_copy, compiled_or_eager

aten = torch.ops.aten


def _targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_addmm_pass_splits_bias_from_the_product_with_the_same_values():
    g = torch.Generator().manual_seed(0)
    bias, x, w = torch.randn(5, generator=g), torch.randn(7, 3, generator=g), torch.randn(3, 5, generator=g)
    # symbolic_trace, not make_fx: make_fx leaves this process unable to run autograd in a forked child (the
    # reliability tests fork it)
    gm = torch.fx.symbolic_trace(lambda b, x, w: aten.addmm.default(b, x, w).relu())
    scaled = torch.fx.symbolic_trace(lambda b, x, w: aten.addmm.default(b, x, w, beta=0.5))
    assert aten.addmm.default in _targets(gm)
    addmm_without_bias_copy()(gm.graph)
    addmm_without_bias_copy()(scaled.graph)
    gm.recompile()
    assert aten.addmm.default not in _targets(gm) and aten.mm.default in _targets(gm)
    assert aten.addmm.default in _targets(scaled)  # beta != 1: left alone
    torch.testing.assert_close(gm(bias, x, w), torch.addmm(bias, x, w).relu())


def test_compiled_mlp_forward_and_backward_match_eager_without_falling_back():
    """A 3-d input to a ReLU MLP: the case whose bool masks the backend avoids (views recomputed)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x = torch.randn(3, 4, 5)
    loss_fn = lambda inp: net(inp).square().mean()  # noqa: E731
    expected = loss_fn(x)
    grads = torch.autograd.grad(expected, list(net.parameters()))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")
        got = compiled_or_eager(loss_fn)(x)
    torch.testing.assert_close(got, expected)
    for a, b in zip(torch.autograd.grad(got, list(net.parameters())), grads):
        torch.testing.assert_close(a, b)
