"""Subspace geometry: gradients, exact endpoints, layer-wise draws, the regulariser, BN recomputation."""

import pytest
import torch

from trainers.models import build
from trainers.subspace import Subspace
from trainers.train import recompute_bn


def make(shape: str, m: int = 2, layerwise: bool = False, model: str = "mlp", bn: bool = True) -> Subspace:
    torch.manual_seed(0)
    return Subspace(lambda: build(model, (1, 8, 8), 10, 4, bn, 0.0), shape, m, layerwise)


SHAPES = [("point", 1, False), ("line", 2, False), ("line", 2, True), ("curve", 2, False),
          ("curve", 2, True), ("simplex", 3, False), ("simplex", 5, True)]


@pytest.mark.parametrize("shape,m,layerwise", SHAPES)
def test_one_backward_reaches_every_endpoint(shape, m, layerwise):
    sub = make(shape, m, layerwise, model="cresnet20")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    loss = torch.nn.functional.cross_entropy(sub(x, sub.draw(g)), y) + sub.cos2(g)
    loss.backward()
    per_tensor = sub.W.grad.abs().sum(1)
    assert sub.W.shape[0] == {"point": 1, "line": 2, "curve": 3, "simplex": m}[shape]
    assert (per_tensor > 0).all(), per_tensor


def test_endpoints_are_initialised_independently():
    sub = make("simplex", 4)
    assert all(not torch.equal(sub.W[i], sub.W[j]) for i in range(4) for j in range(i + 1, 4))


@pytest.mark.parametrize("shape", ["line", "curve"])
def test_alpha_zero_and_one_are_exactly_the_endpoints(shape):
    sub = make(shape)
    torch.manual_seed(0)
    plain = build("mlp", (1, 8, 8), 10, 4, True, 0.0).eval()  # same architecture, loaded with endpoint weights
    x = torch.randn(16, 1, 8, 8)
    sub.eval()
    for alpha, i in ((0.0, 0), (1.0, 1)):
        assert torch.equal(sub.weights(sub.at_alpha(alpha)), sub.W[i])
        paths = {id(m): n for n, m in sub.model.named_modules()}
        w = sub.W[i].detach()
        with torch.no_grad():
            for module, attr, off, numel, shp in sub._slots:
                getattr(plain.get_submodule(paths[id(module)]), attr).copy_(w[off:off + numel].view(shp))
        assert torch.equal(sub(x, sub.at_alpha(alpha)), plain(x))


def test_curve_midpoint_uses_the_control_point():
    sub = make("curve")
    expected = 0.25 * sub.W[0] + 0.25 * sub.W[1] + 0.5 * sub.W[2]
    assert torch.allclose(sub.weights(sub.at_alpha(0.5)), expected)


def test_simplex_draws_are_uniform_on_the_simplex():
    sub = make("simplex", 4)
    g = torch.Generator().manual_seed(0)
    c = torch.stack([sub.draw(g) for _ in range(4000)])
    assert torch.allclose(c.sum(1), torch.ones(4000))
    assert (c >= 0).all()
    # Dirichlet(1,1,1,1): each coordinate has mean 1/4 and variance (1/4)(3/4)/5
    assert torch.allclose(c.mean(0), torch.full((4,), 0.25), atol=0.015)
    assert torch.allclose(c.var(0), torch.full((4,), 3 / 80), atol=0.005)


@pytest.mark.parametrize("shape,m", [("line", 2), ("simplex", 3)])
def test_layerwise_draws_differ_across_layers(shape, m):
    sub = make(shape, m, layerwise=True)
    c = sub.draw(torch.Generator().manual_seed(0))
    assert c.shape == (sub.n_layers, m)
    assert sub.n_layers >= 3
    assert len({tuple(r.tolist()) for r in c}) == sub.n_layers
    # the weights of each layer are mixed with that layer's own coefficients
    w = sub.weights(c)
    for _, _, off, numel, _ in sub._slots:
        layer = int(sub.group[off])
        assert torch.allclose(w[off:off + numel], c[layer] @ sub.W[:, off:off + numel])


def test_non_layerwise_draw_is_one_point():
    assert make("line").draw(torch.Generator().manual_seed(0)).shape == (2,)


def test_cos2_regulariser_matches_its_definition():
    sub = make("line")
    a, b = sub.W[0, :sub.n_reg], sub.W[1, :sub.n_reg]
    expected = (torch.dot(a, b) / (a.norm() * b.norm())) ** 2
    assert torch.allclose(sub.cos2(torch.Generator().manual_seed(0)), expected)
    # only conv/linear weights take part: they are the first n_reg entries
    n_weights = sum(numel for module, attr, off, numel, shp in sub._slots if len(shp) >= 2)
    assert sub.n_reg == n_weights
    assert make("point").cos2(torch.Generator()).item() == 0.0


def test_recomputed_bn_statistics_are_those_of_the_evaluated_point():
    sub = make("line", model="mlp")
    x = torch.randn(256, 1, 8, 8) * 2 + 1
    bn = next(m for m in sub.model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    stats = {}
    for alpha in (0.0, 0.5, 1.0):
        c = sub.at_alpha(alpha)
        recompute_bn(sub, c, x, batch=256)  # one batch: the cumulative average is exactly that batch's stats
        with torch.no_grad():
            sub.set_point(c)
            pre = sub.model[1](sub.model[0](x))  # activations entering the first BatchNorm
        assert torch.allclose(bn.running_mean, pre.mean(0), atol=1e-5)
        assert torch.allclose(bn.running_var, pre.var(0, unbiased=True), atol=1e-4)
        stats[alpha] = bn.running_mean.clone()
    assert not torch.allclose(stats[0.0], stats[1.0])
    assert bn.momentum == 0.1  # restored after the pass


def test_recompute_bn_cumulative_average_over_batches():
    sub = make("line", model="mlp")
    x = torch.randn(300, 1, 8, 8)
    bn = next(m for m in sub.model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    c = sub.center()
    recompute_bn(sub, c, x, batch=100)
    with torch.no_grad():
        sub.set_point(c)
        pre = sub.model[1](sub.model[0](x))
    assert torch.allclose(bn.running_mean, pre.mean(0), atol=1e-5)  # equal batches: mean of means
    assert int(bn.num_batches_tracked) == 3
