"""RowAdam is torch.optim.Adam (dense) computed on the rows a step touches: the rows a step skips are
brought up to date in closed form when next touched and at flush(), and a state_dict resumes exactly."""

from __future__ import annotations

import io

import pytest
import torch

from tasks.word2vec.row_adam import RowAdam, catch_up_factors

ROWS, DIM, STEPS, LR = 40, 5, 30, 0.05


def _touched(step: int, generator: torch.Generator) -> torch.Tensor:
    """Rows 0-3 only at step 0 (then idle for the rest), rows 4-7 at steps 0 and 25 (a gap of 24),
    rows 36-39 never, the others at random (each step ~30 %)."""
    mask = torch.rand(ROWS, generator=generator) < 0.3
    mask[:8] = False
    mask[36:] = False
    if step == 0:
        mask[:8] = True
    if step == 25:
        mask[4:8] = True
    return mask.nonzero().squeeze(1)


def _gradients(scale: float = 1.0, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for step in range(STEPS):
        rows = _touched(step, generator)
        out.append((rows, scale * torch.randn(len(rows), DIM, generator=generator)))
    return out


def _dense_adam(start: torch.Tensor, gradients) -> tuple[torch.Tensor, torch.optim.Adam]:
    param = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam([param], lr=LR)
    for rows, grad in gradients:
        param.grad = torch.zeros_like(param).index_copy_(0, rows, grad)
        optimizer.step()
    return param.detach(), optimizer


def _row_adam(start: torch.Tensor, gradients, optimizer_state: dict | None = None) -> tuple[torch.Tensor, RowAdam]:
    param = torch.nn.Parameter(start.clone())
    optimizer = RowAdam([param], lr=LR)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    for rows, grad in gradients:
        optimizer.step_rows([(rows, grad)])
    return param, optimizer


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


def test_row_adam_after_flush_equals_dense_torch_adam_on_the_same_gradients():
    torch.manual_seed(0)
    start = torch.randn(ROWS, DIM)
    gradients = _gradients()
    expected, reference = _dense_adam(start, gradients)
    param, optimizer = _row_adam(start, gradients)
    idle = param.detach()[:4].clone()
    optimizer.flush()
    ours = param.detach()
    assert not torch.equal(ours[:4], idle)  # rows idle since step 0 moved at the flush, as dense Adam moves them
    assert not torch.equal(expected[:4], start[:4])
    assert _relative_error(ours, expected) < 1e-5
    assert torch.equal(ours[36:], start[36:])  # never touched: no moments, no move
    state, dense_state = optimizer.state[param], reference.state[reference.param_groups[0]["params"][0]]
    assert _relative_error(state["moments"][0], dense_state["exp_avg"]) < 1e-5
    assert _relative_error(state["moments"][1], dense_state["exp_avg_sq"]) < 1e-5
    assert torch.equal(state["last"], torch.full((ROWS,), STEPS))


def test_a_row_touched_after_a_gap_first_catches_up_then_takes_the_dense_step():
    """Rows 4-7 idle from step 1 to 24, touched at 25: right after that step they equal dense Adam's
    without any flush; rows 0-3 (idle since step 0) are still where step 0 left them."""
    torch.manual_seed(0)
    start = torch.randn(ROWS, DIM)
    gradients = _gradients()[:26]
    expected, _ = _dense_adam(start, gradients)
    param, _ = _row_adam(start, gradients)
    assert _relative_error(param.detach()[4:8], expected[4:8]) < 1e-5
    after_first, _ = _row_adam(start, gradients[:1])
    assert torch.equal(param.detach()[:4], after_first.detach()[:4])


@pytest.mark.parametrize(("scale", "tolerance"), [(1e-2, 1e-5), (1e-4, 1e-3), (1e-6, 1e-2)])
def test_the_catch_up_keeps_adams_eps_to_first_order(scale: float, tolerance: float):
    """Adam's eps (1e-8) in the missed steps' denominators enters the catch-up to first order only
    (lr·C·m/(sqrt(v) + eps·E)): the weights' change agrees with dense Adam's to 1e-6 relative (measured
    9e-7) with gradients of 1e-2, 1.4e-4 with 1e-4 and 5e-3 with 1e-6, where sqrt(v_hat) of the small
    elements is a few eps. Dropping eps there (C·m/sqrt(v)) measured 1.8e-4, 1.7e-2 and 0.26."""
    torch.manual_seed(0)
    start = torch.randn(ROWS, DIM)
    gradients = _gradients(scale)
    expected, _ = _dense_adam(start, gradients)
    param, optimizer = _row_adam(start, gradients)
    optimizer.flush()
    assert _relative_error(param.detach() - start, expected - start) < tolerance


def test_a_run_resumed_from_a_state_dict_ends_with_the_uninterrupted_weights_bit_for_bit():
    torch.manual_seed(0)
    start = torch.randn(ROWS, DIM)
    gradients = _gradients()
    whole, whole_opt = _row_adam(start, gradients)
    part, part_opt = _row_adam(start, gradients[:12])  # no flush: rows 0-3 still owe 11 steps
    buffer = io.BytesIO()
    torch.save({"model": part.detach().clone(), "optimizer": part_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["optimizer"]["state"][0]["last"].dtype == torch.int64
    resumed, resumed_opt = _row_adam(saved["model"], gradients[12:], saved["optimizer"])
    assert resumed_opt.state[resumed]["last"].dtype == torch.int64
    for opt in (whole_opt, resumed_opt):
        opt.flush()
    assert torch.equal(resumed.detach(), whole.detach())
    assert torch.equal(resumed_opt.state[resumed]["moments"], whole_opt.state[whole]["moments"])


@pytest.mark.parametrize("t0", [0, 1, 7, 400, 5000])
def test_the_catch_up_factors_are_the_sums_over_the_missed_steps(t0: int):
    """C and E against their defining sums, for gaps shorter and longer than the truncation (~200 steps)."""
    beta1, beta2 = 0.9, 0.999
    ratio = beta1 / beta2 ** 0.5
    gaps = [0, 1, 2, 17, 100, 300, 2000]

    def factors(k: int) -> tuple[float, float]:
        c = [ratio ** j * (1 - beta2 ** (t0 + j)) ** 0.5 / (1 - beta1 ** (t0 + j)) for j in range(1, k + 1)]
        e = [(1 - beta2 ** (t0 + j)) ** 0.5 / beta2 ** (j / 2) for j in range(1, k + 1)]
        return (sum(c), sum(ci * ei for ci, ei in zip(c, e, strict=True)) / sum(c)) if k else (0.0, 0.0)

    for k in gaps:
        c, e = catch_up_factors(torch.tensor([t0]), t0 + k, beta1, beta2)
        expected_c, expected_e = factors(k)
        assert float(c[0]) == pytest.approx(expected_c, rel=1e-6, abs=1e-12), k
        assert float(e[0]) == pytest.approx(expected_e, rel=1e-6, abs=1e-12), k


def test_betas_whose_catch_up_would_not_converge_are_refused():
    with pytest.raises(ValueError, match=r"beta1 < beta2"):
        RowAdam([torch.nn.Parameter(torch.zeros(2, 2))], betas=(0.99, 0.98))
