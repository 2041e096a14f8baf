"""The optimisers of training/optim.py against torch's own."""

import pytest
import torch

from pneumolab.config import OptimConfig
from pneumolab.models import create_model
from pneumolab.training.optim import MuonAdamW, configure_optimizers, orthogonalize


def _steps(opt: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[list[torch.Tensor]]) -> None:
    for step in grads:
        for p, g in zip(params, step, strict=True):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])  # wide, and tall (iterated transposed)
def test_muon_on_a_matrix_is_torchs_muon(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    start, grads = torch.randn(shape), [[torch.randn(shape)] for _ in range(3)]
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    _steps(MuonAdamW([{"params": [ours], "muon": True, "weight_decay": 0.1}], lr=0.02), [ours], grads)
    _steps(torch.optim.Muon([theirs], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"), [theirs], grads)
    assert not torch.equal(ours, start)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_muon_takes_a_convolution_as_the_matrix_it_applies_to_patches() -> None:
    torch.manual_seed(1)
    start, grads = torch.randn(8, 3, 3, 3), [[torch.randn(8, 3, 3, 3)] for _ in range(2)]
    conv = start.clone().requires_grad_()
    matrix = start.reshape(8, 27).clone().requires_grad_()  # (out, in * kh * kw)
    _steps(MuonAdamW([{"params": [conv], "muon": True, "weight_decay": 0.0}], lr=0.01), [conv], grads)
    flat = [[g.reshape(8, 27) for g in step] for step in grads]
    _steps(torch.optim.Muon([matrix], lr=0.01, weight_decay=0.0, adjust_lr_fn="match_rms_adamw"), [matrix], flat)
    torch.testing.assert_close(conv.reshape(8, 27), matrix, rtol=0, atol=1e-6)


def test_the_other_groups_step_as_adamw_and_gradients_survive_the_step() -> None:
    torch.manual_seed(2)
    conv, bias = torch.randn(4, 2, 3, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    twin = bias.detach().clone().requires_grad_()
    grads = [[torch.randn(4, 2, 3, 3), torch.randn(4)] for _ in range(3)]
    groups = [{"params": [conv], "muon": True, "weight_decay": 0.0}, {"params": [bias], "weight_decay": 0.01}]
    _steps(MuonAdamW(groups, lr=1e-3), [conv, bias], grads)
    _steps(torch.optim.AdamW([twin], lr=1e-3, weight_decay=0.01), [twin], [[s[1]] for s in grads])
    torch.testing.assert_close(bias, twin, rtol=0, atol=0)
    torch.testing.assert_close(conv.grad, grads[-1][0], rtol=0, atol=0)  # put back after AdamW's step


def test_orthogonalize_brings_every_singular_value_near_one() -> None:
    torch.manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(32, 32))
    v, _ = torch.linalg.qr(torch.randn(64, 32))
    g = u @ torch.diag(torch.logspace(-1, 1, 32)) @ v.T  # singular values 0.1 ... 10
    s = torch.linalg.svdvals(orthogonalize(g).float())
    assert s.min() > 0.5 and s.max() < 1.5  # Muon's iteration: roughly, not exactly, orthogonal
    torch.testing.assert_close(orthogonalize(g.T).float(), orthogonalize(g).float().T, rtol=0, atol=0)


def test_muon_takes_the_convolutions_and_adamw_the_rest() -> None:
    net = create_model("cnn_improved")
    o = OptimConfig(optimizer="muon", lr=3e-3, schedule="none").model_dump()
    opt = configure_optimizers(net, o, "val/auroc")
    muon = {id(p) for g in opt.param_groups if g.get("muon") for p in g["params"]}
    names = {n for n, p in net.named_parameters() if id(p) in muon}
    assert names == {n for n, p in net.named_parameters() if p.ndim == 4} and len(names) == 8
    decay = {g["weight_decay"] for g in opt.param_groups if not g.get("muon") for p in g["params"] if p.ndim == 1}
    assert decay == {0.0}  # norms and biases: no decay, as with AdamW


def test_a_resumed_optimiser_steps_as_one_that_never_stopped() -> None:
    """The Muon momentum travels in the state dict (a checkpoint), with AdamW's moments."""
    torch.manual_seed(4)
    start = [torch.randn(6, 2, 3, 3), torch.randn(6)]
    grads = [[torch.randn(6, 2, 3, 3), torch.randn(6)] for _ in range(4)]

    def optimiser(params: list[torch.Tensor]) -> MuonAdamW:
        return MuonAdamW([{"params": params[:1], "muon": True}, {"params": params[1:]}], lr=1e-2, weight_decay=0.1)

    straight = [t.clone().requires_grad_() for t in start]
    _steps(optimiser(straight), straight, grads)
    first = [t.clone().requires_grad_() for t in start]
    opt = optimiser(first)
    _steps(opt, first, grads[:2])
    saved = opt.state_dict()
    resumed = [t.detach().clone().requires_grad_() for t in first]
    again = optimiser(resumed)
    again.load_state_dict(saved)
    _steps(again, resumed, grads[2:])
    for a, b in zip(resumed, straight, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
