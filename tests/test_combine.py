import math

import pytest
import torch

from logitplug.combine import (
    BlackBoxOnly, MixtureRule, ProductRule, ReweighterOnly, SupportProductRule, densify_topk, get_rule, log1mexp,
)


def _reference_product(bb, rw, alpha=1.0):
    z = bb.double() + alpha * rw.double()
    finite = z.masked_fill(torch.isinf(z), -1e300)
    m = finite.max(-1, keepdim=True).values
    return z - (m + torch.log(torch.exp(z - m).sum(-1, keepdim=True)))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_product_matches_float64_reference(scale):
    g = torch.Generator().manual_seed(0)
    bb = torch.log_softmax(torch.randn(6, 50, generator=g) * scale, -1)
    rw = torch.randn(6, 50, generator=g) * scale
    bb[0, :10] = -math.inf  # tokens the black box rules out
    bb[1, 3] = -math.inf
    out = ProductRule()(bb, rw)
    ref = _reference_product(bb, rw)
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), finite)
    assert torch.allclose(out[finite].double(), ref[finite], atol=1e-4 * max(1.0, scale / 100), rtol=1e-5)
    assert torch.allclose(out.exp().sum(-1), torch.ones(6), atol=1e-5)


def test_product_does_not_modify_inputs_and_alpha_zero_is_blackbox():
    bb = torch.log_softmax(torch.randn(3, 7), -1)
    rw = torch.randn(3, 7)
    bb0, rw0 = bb.clone(), rw.clone()
    out = ProductRule(alpha=0.0)(bb, rw)
    assert torch.equal(bb, bb0) and torch.equal(rw, rw0)
    assert torch.allclose(out, bb, atol=1e-6)


def test_a_black_box_weight_flattens_the_black_box_before_reweighting():
    g = torch.Generator().manual_seed(1)
    bb = torch.log_softmax(torch.randn(4, 11, generator=g) * 3, -1)
    rw = torch.randn(4, 11, generator=g)
    for w in (0.25, 0.5):
        out = ProductRule(alpha=0.75, blackbox_weight=w)(bb, rw)
        assert torch.allclose(out.double(), torch.log_softmax(w * bb.double() + 0.75 * rw.double(), -1), atol=1e-6)
        alone = ProductRule(alpha=0.0, blackbox_weight=w)(bb, rw)  # the black box at temperature 1/w: flatter
        assert (-(alone.exp() * alone).sum(-1) > -(bb.exp() * bb).sum(-1)).all()
    assert ProductRule().signature() == "rule:product|alpha:1"  # unchanged where the weight is 1 (cache keys)
    assert ProductRule(blackbox_weight=0.5).signature() == "rule:product|alpha:1|bbw:0.5"


def test_mixture_matches_probability_space():
    bb = torch.log_softmax(torch.randn(4, 9), -1)
    rw = torch.randn(4, 9)
    for w in (0.0, 0.25, 1.0):
        ref = torch.log(w * torch.softmax(rw.double(), -1) + (1 - w) * bb.double().exp())
        assert torch.allclose(MixtureRule(w)(bb, rw).double(), ref, atol=1e-6)
    assert torch.allclose(ReweighterOnly()(bb, rw), torch.log_softmax(rw, -1))
    assert torch.allclose(BlackBoxOnly()(bb, None), bb, atol=1e-6)


def test_bad_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="weight must be in"):
        MixtureRule(1.5)
    with pytest.raises(ValueError, match="alpha"):
        ProductRule(alpha=float("nan"))
    for w in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="blackbox_weight"):
            ProductRule(blackbox_weight=w)
    with pytest.raises(ValueError, match="unknown combination rule 'nope'"):
        get_rule("nope")
    with pytest.raises(ValueError, match="needs reweighter"):
        ProductRule()(torch.zeros(1, 3), None)


def test_densify_topk_keeps_support_exact_and_mass_one():
    full = torch.log_softmax(torch.randn(5, 40), -1)
    vals, ids = full.topk(8, -1)
    dense = densify_topk(ids, vals, 40)
    assert torch.allclose(dense.gather(-1, ids), vals)
    assert torch.allclose(dense.exp().sum(-1), torch.ones(5), atol=1e-5)
    rest = dense.exp().sum(-1) - vals.exp().sum(-1)
    assert torch.allclose(rest, 1 - vals.exp().sum(-1), atol=1e-5)


def test_log1mexp_is_stable():
    x = torch.tensor([-1e-10, -1e-3, -0.5, -5.0, -50.0, 0.0], dtype=torch.float64)
    ref = torch.log(1 - torch.exp(x))
    out = log1mexp(x)
    assert torch.allclose(out[:-1], ref[:-1], rtol=1e-6)
    assert out[-1] == -math.inf


@pytest.mark.parametrize("k", [1, 5, 20])
def test_support_rule_matches_float64_reference_with_a_rest_bucket(k):
    g = torch.Generator().manual_seed(1)
    bb = torch.log_softmax(torch.randn(6, 50, generator=g) * 3, -1)
    bb[0, :10] = -math.inf
    rw = torch.randn(6, 50, generator=g) * 5
    out = SupportProductRule(k, alpha=0.7)(bb, rw)
    # reference in float64 and probability space: support tokens reweighted, the rest one bucket
    p = bb.double().exp()
    top = bb.topk(k, -1).indices
    support = torch.zeros_like(p, dtype=torch.bool).scatter(-1, top, True)
    weights = torch.where(support, torch.exp(0.7 * rw.double()), torch.ones_like(p))
    ref = p * weights / (p * weights).sum(-1, keepdim=True)
    finite = ref > 0
    assert torch.equal(torch.isfinite(out), finite)
    assert torch.allclose(out.exp().double(), ref, atol=1e-6)
    # outside the support the black box's proportions are kept
    rest = ~support & finite
    ratio = (out.double() - bb.double())[rest]
    for row in range(6):
        r = (out.double() - bb.double())[row][rest[row]]
        if r.numel():
            assert torch.allclose(r, r[0].expand_as(r), atol=1e-5)
    assert ratio.numel() > 0
    assert torch.allclose(SupportProductRule(50)(bb, rw), ProductRule()(bb, rw), atol=1e-6)
    assert get_rule("product-topk", k=k).signature() == f"rule:product-topk|k:{k}|alpha:1"
    with pytest.raises(ValueError, match="k must be"):
        SupportProductRule(0)


def test_truncate_to_topk_keeps_the_support_exact_mass_one_and_the_echoed_token():
    from logitplug.combine import truncate_to_topk

    g = torch.Generator().manual_seed(3)
    lp = torch.log_softmax(torch.randn(4, 30, generator=g) * 2, -1)
    keep = torch.tensor([lp[0].argmax(), lp[1].argmin(), 5, 7])
    out = truncate_to_topk(lp, 5, keep)
    assert torch.allclose(out.exp().sum(-1), torch.ones(4), atol=1e-5)
    top = lp.topk(5, -1).indices
    assert torch.allclose(out.gather(-1, top), lp.gather(-1, top))
    assert torch.allclose(out.gather(-1, keep[:, None]), lp.gather(-1, keep[:, None]))  # echoed token exact
    # outside the support every token gets the same share of the remaining mass
    row1 = out[1].clone()
    row1[top[1]] = math.nan
    row1[keep[1]] = math.nan
    rest = row1[~torch.isnan(row1)]
    assert torch.allclose(rest, rest[0].expand_as(rest))
    assert torch.allclose(truncate_to_topk(lp, 30), lp, atol=1e-6)  # k = V: nothing lost


def test_support_with_eos_always_holds_eos_and_k_others_in_every_row():
    torch.manual_seed(0)
    bb = torch.log_softmax(torch.randn(3, 12), -1)
    eos = int(bb[0].argmax())  # row 0: EOS is the black box's favourite; rows 1-2: likely not in its top-3
    rule = SupportProductRule(k=3, always=eos)
    mask = rule.support_mask(bb)
    assert mask[:, eos].all() and mask.sum(-1).tolist() == [4, 4, 4]
    others = bb.index_fill(-1, torch.tensor([eos]), -math.inf).topk(3, -1).indices
    assert mask.gather(-1, others).all()
    rw = torch.zeros(3, 12)
    rw[:, eos] = 20.0  # the reweighter can now make EOS win wherever the black box ranks it
    assert (rule(bb, rw).argmax(-1) == eos).all()
    assert not (SupportProductRule(k=3)(bb, rw).argmax(-1) == eos)[1:].all()
    assert rule.signature().endswith(f"|always:{eos}")


@pytest.mark.parametrize("always", [None, 3, 47])
def test_support_restricted_to_cached_rows_gives_the_dense_rules_loss_hits_and_gradients(always):
    from logitplug.combine import SupportProductRule, densify_topk

    torch.manual_seed(0)
    V, N, m = 50, 64, 12
    full = torch.log_softmax(torch.randn(N, V) * 3, -1)
    targets = torch.randint(0, V, (N,))
    targets[:8] = full[:8].argsort(-1, descending=True)[:, 1]  # some targets inside the support
    # a cache entry as LogProbCache.put writes it: the top m, the last slot the target when it is outside
    values, ids = full.topk(m, -1)
    outside = ~(ids[:, : m - 1] == targets[:, None]).any(-1)
    ids[outside, m - 1] = targets[outside]
    values[outside, m - 1] = full.gather(-1, targets[:, None]).squeeze(-1)[outside]
    dense = densify_topk(ids, values, V)
    rw_dense = torch.randn(N, V, requires_grad=True)
    rw_sparse = rw_dense.detach().clone().requires_grad_(True)
    for alpha in (0.0, 0.75, 1.5):
        rule = SupportProductRule(k=4, alpha=alpha, always=always)
        combined = rule(dense, rw_dense)
        nll = -combined.gather(-1, targets[:, None]).sum()
        hits = (combined.argmax(-1) == targets).sum()
        support = rule.restrict(ids, values, targets, V)
        assert bool((support.ids.sort(-1).values == rule.support_mask(dense).nonzero()[:, 1].view(N, -1)).all())
        s_nll, s_hits = support.nll_and_hits(rw_sparse.gather(-1, support.ids), alpha)
        assert torch.allclose(nll, s_nll, atol=1e-3) and int(hits) == int(s_hits)
        if alpha:
            nll.backward()
            s_nll.backward()
            assert torch.allclose(rw_dense.grad, rw_sparse.grad, atol=1e-5)
            rw_dense.grad = rw_sparse.grad = None
    with pytest.raises(ValueError, match="cached tokens per position"):
        SupportProductRule(k=m, always=always).restrict(ids, values, targets, V)
