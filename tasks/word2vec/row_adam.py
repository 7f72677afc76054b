"""word2vec's `sparse_adam`: lazy Adam on the rows a batch touches, with the skip-gram gradient in closed form.

A batch of (center, word) pairs touches a few thousand rows of each 6.7k-row table. `sgns_step`
gathers the batch's unique rows once, computes the gradient of the book's loss without autograd
(d loss / d logit = weight · (sigmoid(logit) - label)), sums it per unique row (no sparse tensor, no
coalescing of one row per pair) and hands `RowAdam` one (rows, gradient rows) pair per table. RowAdam
applies torch.optim.Adam's update (the kernel of its fused=True form) to those rows only: their
weights and both moments; every other row keeps its weights and moments. The step count and bias
correction are global (a row's moments decay only in the steps that touch it), as in
torch.optim.SparseAdam; Adam's eps placement (sqrt(v / bias_correction2) + eps) is kept.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn import functional as F

# torch warns once per process that CSR tensors are "in beta"; sampled_addmm on them is what this uses.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam. `step_rows([(rows, grad_rows), ...])` (one pair per parameter, in parameter order;
    `rows` distinct) is the fast path: the rows' weights and moments are gathered, updated together
    by torch.optim.Adam(fused=True)'s kernel (`torch._fused_adam_`, one call for every parameter) and
    written back. `step()` takes the parameters' `.grad` instead (sparse COO, as from
    `F.embedding(..., sparse=True)`, or dense, whose nonzero rows count as touched).

    State per parameter: `step` (global, as torch.optim.SparseAdam's) and `moments` (2, *shape):
    exp_avg and exp_avg_sq in one tensor, so a step gathers and scatters both with one op."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not lr > 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or not eps >= 0:
            raise ValueError(f"invalid RowAdam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    def _state(self, param: torch.Tensor) -> dict:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["moments"] = param.new_zeros((2, *param.shape))
        return state

    @torch.no_grad()
    def step_rows(self, updates: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        if len(updates) != len(params):
            raise ValueError(f"step_rows: {len(updates)} updates for {len(params)} parameters")
        i = 0
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            values, grads, exp_avgs, exp_avg_sqs, steps, writes = [], [], [], [], [], []
            for param in group["params"]:
                rows, grad = updates[i]
                i += 1
                state = self._state(param)
                if len(rows) == 0:
                    state["step"] += 1  # the kernel counts the others' steps
                    continue
                value = param.index_select(0, rows)
                moments = state["moments"].index_select(1, rows)
                values.append(value)
                grads.append(grad.contiguous())
                exp_avgs.append(moments[0])
                exp_avg_sqs.append(moments[1])
                steps.append(state["step"])
                writes.append((param, state["moments"], rows, value, moments))
            if not values:
                continue
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(values, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=lr, beta1=beta1,
                               beta2=beta2, weight_decay=0.0, eps=eps, maximize=False)
            for param, all_moments, rows, value, moments in writes:
                param.index_copy_(0, rows, value)
                all_moments.index_copy_(1, rows, moments)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim.Optimizer's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        updates = []
        for group in self.param_groups:
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    updates.append((torch.zeros(0, dtype=torch.int64, device=param.device),
                                    param.new_zeros((0, *param.shape[1:]))))
                elif grad.is_sparse:
                    grad = grad.coalesce()
                    updates.append((grad.indices()[0], grad.values()))
                else:
                    rows = grad.reshape(len(grad), -1).ne(0).any(dim=1).nonzero().squeeze(1)
                    updates.append((rows, grad.index_select(0, rows)))
        self.step_rows(updates)
        return loss


def unique_rows(ids: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sorted distinct values of `ids`, a table mapping each value in [0, size) to its index
    among them) for ids in [0, size): a presence table and a cumulative sum (linear; torch.unique sorts).
    Values absent from `ids` map to the index of the next smaller present one (0 below the first)."""
    present = torch.zeros(size, dtype=torch.bool, device=ids.device)
    present[ids] = True
    rows = present.nonzero().squeeze(1)
    rank = torch.cumsum(present, 0).sub_(1).clamp_(min=0)
    return rows, rank


def sgns_step(weight_v: torch.Tensor, weight_u: torch.Tensor, offsets: torch.Tensor, centers: torch.Tensor,
              words: torch.Tensor, labels: torch.Tensor,
              weights: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The loss sum_i weights_i · BCE(v[centers_i] · u[words_i], labels_i) of a batch of pairs grouped
    by example (example e: pairs offsets[e]:offsets[e+1], all with one center) and its gradient as
    (distinct rows, gradient rows) per table, `RowAdam.step_rows`' input; the loss is detached.

    One (pairs × dim) tensor where autograd makes five: the logits are a sampled matrix product of the
    examples' center rows and the context table (a CSR pattern of the pairs), the center gradient an
    embedding bag of the words' rows weighted by d loss / d logit = weights · (sigmoid(logit) - label)."""
    with torch.no_grad():
        examples, dim = len(offsets) - 1, weight_v.shape[1]
        if len(words) == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=words.device)
            no_rows = weight_v.new_zeros((0, dim))
            return weight_v.new_zeros(()), [(empty, no_rows), (empty, no_rows)]
        example_centers = centers.index_select(0, offsets[:-1].clamp(max=len(centers) - 1))  # any row if empty
        v = weight_v.index_select(0, example_centers)  # (examples, dim)
        pattern = torch.sparse_csr_tensor(offsets, words, torch.zeros_like(labels), size=(examples, len(weight_u)),
                                          check_invariants=False)
        logits = torch.sparse.sampled_addmm(pattern, v, weight_u.t(), beta=0.0).values()
        loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction="sum")
        scale = torch.sigmoid(logits).sub_(labels).mul_(weights)
        grad_examples = F.embedding_bag(words, weight_u, offsets[:-1], mode="sum", per_sample_weights=scale)
        center_rows, center_rank = unique_rows(centers, weight_v.shape[0])  # an empty example adds 0 anywhere
        grad_v = v.new_zeros((len(center_rows), dim)).index_add_(0, center_rank[example_centers], grad_examples)
        word_rows, word_rank = unique_rows(words, weight_u.shape[0])
        example = torch.repeat_interleave(torch.arange(examples, device=words.device), offsets.diff())
        grad_u = v.new_zeros((len(word_rows), dim)).index_add_(
            0, word_rank[words], v.index_select(0, example).mul_(scale.unsqueeze(1)))
    return loss, [(center_rows, grad_v), (word_rows, grad_u)]
