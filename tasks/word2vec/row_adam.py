"""word2vec's `sparse_adam`: dense Adam computed on the rows a batch touches, the skip-gram gradient in closed form.

A batch of (center, word) pairs touches a few thousand rows of each 6.7k-row table. `sgns_step`
gathers the batch's unique rows once, computes the gradient of the book's loss without autograd
(d loss / d logit = weight · (sigmoid(logit) - label)), sums it per unique row (no sparse tensor, no
coalescing of one row per pair) and hands `RowAdam` one (rows, gradient rows) pair per table. RowAdam
gives every row torch.optim.Adam's dense update (a row no batch touches keeps moving by its decaying
moments) while it works on the touched rows only: a row's missed zero-gradient steps are applied in
closed form when a batch next touches it or at `flush()`, then torch.optim.Adam's fused kernel
updates the touched rows' weights and moments.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from torch.nn import functional as F
from torch.profiler import record_function

# torch warns once per process that CSR tensors are "in beta"; sampled_addmm on them is what this uses.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


class RowAdam(torch.optim.Optimizer):
    """Dense Adam (torch.optim.Adam's update, not torch.optim.SparseAdam's lazy one) computed on the
    rows a step touches. `step_rows([(rows, grad_rows), ...])` (one pair per parameter, in parameter
    order; `rows` distinct) is the fast path; `step()` takes the parameters' `.grad` instead (sparse
    COO, as from `F.embedding(..., sparse=True)`, or dense, whose nonzero rows count as touched).

    A row no batch touches still moves under dense Adam: its moments decay (m·beta1, v·beta2 per step)
    and its weights follow them. Here it is left alone and brought up to date when a batch next
    touches it, or at `flush()`: the k zero-gradient steps it missed after step t0 are applied in
    closed form, m <- m·beta1^k, v <- v·beta2^k and p <- p - lr·C(t0, k)·m/sqrt(v) with the per-row
    scalar C(t0, k) = sum_{j=1..k} (beta1/sqrt(beta2))^j · sqrt(1 - beta2^(t0+j)) / (1 - beta1^(t0+j))
    (`catch_up_factors`). Adam's eps (its denominator is sqrt(v_hat) + eps) enters these missed steps to
    first order: lr·C·m/(sqrt(v) + eps·E(t0, k)), E the C-weighted mean of each step's eps in units of
    sqrt(v); where sqrt(v_hat) >> eps (1e-8) that is Adam's move to float32 rounding. Then the touched
    rows get torch.optim.Adam(fused=True)'s kernel (`torch._fused_adam_`, one call for every
    parameter) and are written back.

    `flush()` brings every row up to date: call it before anything reads the weights (the training
    loop does at the end of every epoch, before validation and the checkpoint). `state_dict()` does
    not flush: it holds each row's last step, so a run resumed from it continues bit for bit.

    State per parameter: `step` (the steps taken), `moments` (2, *shape): exp_avg and exp_avg_sq in one
    tensor, so a step gathers and scatters both with one op, and `last` (rows,): the step each row's
    weights and moments are up to date with."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if not lr > 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or not eps >= 0:
            raise ValueError(f"invalid RowAdam settings: lr={lr}, betas={betas}, eps={eps}")
        if betas[0] >= betas[1]:
            raise ValueError(f"RowAdam needs beta1 < beta2 (its catch-up of the missed steps converges only then), "
                             f"got betas={betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    def _state(self, param: torch.Tensor) -> dict:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["moments"] = param.new_zeros((2, *param.shape))
        if "last" not in state:  # new, or loaded from a lazy-Adam checkpoint: every row is at `step`
            state["last"] = torch.full((len(param),), int(state["step"]), dtype=torch.int64, device=param.device)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch.optim casts every non-step state to the parameter's dtype
            if "last" in state:
                state["last"] = state["last"].to(torch.int64)

    @staticmethod
    def _catch_up(value: torch.Tensor, moments: torch.Tensor, last: torch.Tensor, done: int, lr: float,
                  beta1: float, beta2: float, eps: float) -> None:
        """Apply in place to the rows `value` (rows, ...) and `moments` (2, rows, ...), up to date with the
        steps `last` (rows,), Adam's zero-gradient steps from there to step `done`."""
        shape = (-1,) + (1,) * (value.dim() - 1)
        c, e = catch_up_factors(last, done, beta1, beta2)
        scale, eps_scale = c.mul_(-lr).to(value.dtype).view(shape), e.mul_(eps).to(value.dtype).view(shape)
        exp_avg, exp_avg_sq = moments[0], moments[1]
        value.addcdiv_(exp_avg.mul(scale), exp_avg_sq.sqrt().add_(eps_scale).clamp_(min=torch.finfo(value.dtype).tiny))
        exponent = (done - last).to(value.dtype).view(shape)
        exp_avg.mul_(torch.pow(beta1, exponent))
        exp_avg_sq.mul_(torch.pow(beta2, exponent))

    @torch.no_grad()
    def flush(self) -> None:
        """Bring every row's weights and moments up to the steps taken (as torch.optim.Adam would hold them)."""
        for group, param in self._params():
            if self.state.get(param):
                self._flush(group, param)

    def _flush(self, group: dict, param: torch.Tensor) -> None:
        state = self._state(param)
        steps = int(state["step"])
        rows = state["last"].ne(steps).nonzero().squeeze(1)
        if len(rows) == 0:
            return
        value, moments = param.index_select(0, rows), state["moments"].index_select(1, rows)
        self._catch_up(value, moments, state["last"].index_select(0, rows), steps, group["lr"], *group["betas"],
                       group["eps"])
        param.index_copy_(0, rows, value)
        state["moments"].index_copy_(1, rows, moments)
        state["last"].fill_(steps)

    def _params(self) -> list[tuple[dict, torch.Tensor]]:
        return [(group, param) for group in self.param_groups for param in group["params"]]

    @torch.no_grad()
    def gather(self, rows: list[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For distinct `rows` of each parameter (in parameter order): copies of their weights and moments
        (2, rows, ...), brought up to the steps taken (the zero-gradient steps they missed, in closed form).
        A gradient computed from these weights is the one dense Adam would see; `apply` takes it.
        `None` for a parameter: all its rows, brought up to date in place and returned as the parameter
        and its moments themselves (no copy: cheaper when a step touches most rows)."""
        params = self._params()
        if len(rows) != len(params):
            raise ValueError(f"RowAdam: rows for {len(rows)} parameters, it has {len(params)}")
        gathered = []
        for (group, param), ids in zip(params, rows, strict=True):
            state = self._state(param)
            if ids is None:
                self._flush(group, param)
                gathered.append((param, state["moments"]))
                continue
            value, moments = param.index_select(0, ids), state["moments"].index_select(1, ids)
            # every gathered row (one already up to date moves by exactly 0): cheaper than picking the stale ones
            self._catch_up(value, moments, state["last"].index_select(0, ids), int(state["step"]), group["lr"],
                           *group["betas"], group["eps"])
            gathered.append((value, moments))
        return gathered

    @torch.no_grad()
    def apply(self, rows: list[torch.Tensor | None], gathered: list[tuple[torch.Tensor, torch.Tensor]],
              grads: list[torch.Tensor]) -> None:
        """One Adam step: `gathered` (from `gather` for the same `rows`) updated with `grads` (rows, ...) by
        torch.optim.Adam(fused=True)'s kernel (one call per parameter group) and written back with the
        rows' step (in place for `None`: all rows); every parameter's step count advances."""
        params = self._params()
        by_group: dict[int, list] = {}
        for (group, param), ids, (value, moments), grad in zip(params, rows, gathered, grads, strict=True):
            state = self._state(param)
            if ids is None:
                state["last"].fill_(int(state["step"]) + 1)
            elif len(ids) == 0:
                state["step"] += 1  # the kernel counts the others' steps
                continue
            else:
                state["last"].index_fill_(0, ids, int(state["step"]) + 1)
            by_group.setdefault(id(group), [group, []])[1].append((param, state, ids, value, moments, grad))
        for group, entries in by_group.values():
            (beta1, beta2) = group["betas"]
            steps = [state["step"] for _, state, *_ in entries]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_([e[3] for e in entries], [e[5].contiguous() for e in entries],
                               [e[4][0] for e in entries], [e[4][1] for e in entries], [], steps, amsgrad=False,
                               lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
                               maximize=False)
            for param, state, ids, value, moments, _ in entries:
                if ids is not None:
                    param.index_copy_(0, ids, value)
                    state["moments"].index_copy_(1, ids, moments)

    @torch.no_grad()
    def catch_up(self, rows: list[torch.Tensor | None]) -> None:
        """Bring `rows` of each parameter up to the steps taken, in place: before a gradient that reads
        them is computed outside `gather` (as for `step()` with autograd's gradients)."""
        for (_, param), ids, (value, moments) in zip(self._params(), rows, self.gather(rows), strict=True):
            if ids is None:  # gather brought them up to date in place
                continue
            state = self.state[param]
            param.index_copy_(0, ids, value)
            state["moments"].index_copy_(1, ids, moments)
            state["last"].index_fill_(0, ids, int(state["step"]))

    @torch.no_grad()
    def step_rows(self, updates: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One step with the given (distinct rows, gradient rows) per parameter: `gather` then `apply`.
        The gradient is taken as given: computed from weights not yet caught up (call `catch_up` first),
        it is not the one dense Adam would see."""
        rows = [ids for ids, _ in updates]
        self.apply(rows, self.gather(rows), [grad for _, grad in updates])

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


def catch_up_factors(last: torch.Tensor, done: int, beta1: float,
                     beta2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, E) per row (float64), for rows up to date with step `last` (int64) and the zero-gradient steps
    last+1..done they missed: Adam moves such a row by lr·C·m/(sqrt(v) + eps·E) to first order in eps,
    C(t0, k) = sum_{j=1..k} c_j, c_j = r^j · sqrt(1 - beta2^(t0+j)) / (1 - beta1^(t0+j)), r = beta1/sqrt(beta2),
    E(t0, k) = sum_j c_j · e_j / C, e_j = sqrt(1 - beta2^(t0+j)) / beta2^(j/2) (step j's eps in units of
    sqrt(v)); t0 = last, k = done - last. Both sums telescope: with the windowed sums
    G(t) = sum_{j=1..J} c_j(t) (`_window_sums`), sum_{j=1..k} c_j(t0) = G(t0) - r^k · G(t0 + k) up to the
    terms beyond J, which are below float32's eps (c_j falls like r^j). C is 0 where k = 0."""
    sums = _window_sums(1 << max(done, 1).bit_length(), beta1, beta2, last.device)
    missed = (done - last).to(torch.float64)
    ratio, slower = beta1 / math.sqrt(beta2), beta1 / beta2
    c = sums[0].index_select(0, last) - torch.pow(ratio, missed) * sums[0, done]
    weighted = sums[1].index_select(0, last) - torch.pow(slower, missed) * sums[1, done]
    return c, torch.where(c > 0, weighted / torch.where(c > 0, c, 1.0), 0.0)


@functools.lru_cache(maxsize=4)
def _window_sums(length: int, beta1: float, beta2: float, device: torch.device) -> torch.Tensor:
    """(2, length) float64: for t = 0..length-1, G(t) = sum_{j=1..J} c_j(t) and sum_{j=1..J} c_j(t) · e_j(t)
    (`catch_up_factors`), J the first j where the terms, falling like (beta1/beta2)^j, sum below float32's eps."""
    slower = beta1 / beta2
    horizon = 1 if slower == 0 else math.ceil(math.log(np.finfo(np.float32).eps * (1 - slower)) / math.log(slower))
    s = np.arange(1, length + horizon + 1, dtype=np.float64)
    root_bc2 = np.sqrt(-np.expm1(s * math.log(beta2)))
    f = root_bc2 / -np.expm1(s * math.log(beta1)) if beta1 > 0 else root_bc2
    j = np.arange(1, horizon + 1, dtype=np.float64)
    ratio = beta1 / math.sqrt(beta2)
    c_kernel, e_kernel = ratio ** j, slower ** j  # c_j e_j = (beta1/beta2)^j · f · sqrt(1 - beta2^s)
    sums = np.stack([np.correlate(f, c_kernel, "valid")[:length],
                     np.correlate(f * root_bc2, e_kernel, "valid")[:length]])
    return torch.from_numpy(sums).to(device)


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
    (distinct rows, gradient rows) per table, `RowAdam.step_rows`' input; the loss is detached."""
    with torch.no_grad():
        batch = _Batch(weight_v, weight_u, offsets, centers, words, whole_table_share=1.0)
        if batch.empty:
            return weight_v.new_zeros(()), batch.no_update()
        tables = (weight_v.index_select(0, batch.center_rows), weight_u.index_select(0, batch.word_rows))
        loss, grads = batch.loss_and_gradient(*tables, labels, weights)
    return loss, [(batch.center_rows, grads[0]), (batch.word_rows, grads[1])]


def sgns_adam_step(optimizer: RowAdam, weight_v: torch.Tensor, weight_u: torch.Tensor, offsets: torch.Tensor,
                   centers: torch.Tensor, words: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor) -> torch.Tensor:
    """One training step of `sparse_adam` on a batch (`sgns_step`'s arguments; `optimizer` holds
    [weight_v, weight_u]): the batch's distinct rows of both tables gathered with their moments and
    brought up to date (`RowAdam.gather`), the loss and its gradient on those rows, dense Adam's step
    on them (`RowAdam.apply`). Returns the detached loss."""
    with torch.no_grad():
        batch = _Batch(weight_v, weight_u, offsets, centers, words, WHOLE_TABLE_SHARE)
        if batch.empty:
            optimizer.step_rows(batch.no_update())
            return weight_v.new_zeros(())
        rows = [batch.center_rows, batch.word_rows]
        with record_function("phase: gather and catch up"):
            gathered = optimizer.gather(rows)
        with record_function("phase: loss and gradient"):
            loss, grads = batch.loss_and_gradient(gathered[0][0], gathered[1][0], labels, weights)
        with record_function("phase: adam and write back"):
            optimizer.apply(rows, gathered, grads)
    return loss


# A table whose batch touches more than this share of its rows is updated whole, in place: cheaper than
# gathering, catching up and scattering the rows' weights and two moments. Measured on PTB (6,719 rows,
# dim 100, one thread): a batch touches ~470 center rows (7 %) and ~4,400 context rows (65 %); updating
# both whole took 4.4-4.7 ms a step, the center rows gathered 4.7 ms, both gathered 7.5 ms.
WHOLE_TABLE_SHARE = 0.05


def _compact(ids: torch.Tensor, used: torch.Tensor, size: int,
             whole_table_share: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(the distinct rows of `ids`, `used` as indices among them), or (None, `used`) where they are more
    than `whole_table_share` of the table's `size` rows (the table is used whole)."""
    rows, rank = unique_rows(ids, size)
    if len(rows) > whole_table_share * size:
        return None, used
    return rows, rank.index_select(0, used)


class _Batch:
    """A batch's distinct rows of both tables and its pairs in their compact indices."""

    def __init__(self, weight_v: torch.Tensor, weight_u: torch.Tensor, offsets: torch.Tensor, centers: torch.Tensor,
                 words: torch.Tensor, whole_table_share: float) -> None:
        self.offsets, self.dim, self.empty = offsets, weight_v.shape[1], len(words) == 0
        self.like = weight_v
        if self.empty:
            return
        examples = len(offsets) - 1
        example_centers = centers.index_select(0, offsets[:-1].clamp(max=len(centers) - 1))  # any row if empty
        self.center_rows, self.example_slots = _compact(centers, example_centers, len(weight_v), whole_table_share)
        self.word_rows, self.word_slots = _compact(words, words, len(weight_u), whole_table_share)
        self.pair_example = torch.repeat_interleave(torch.arange(examples, device=words.device), offsets.diff())

    def no_update(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        empty = torch.zeros(0, dtype=torch.int64, device=self.offsets.device)
        no_rows = self.like.new_zeros((0, self.dim))
        return [(empty, no_rows), (empty, no_rows)]

    def loss_and_gradient(self, center_table: torch.Tensor, word_table: torch.Tensor, labels: torch.Tensor,
                          weights: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss and its gradient for the compact tables (the distinct rows). One (pairs × dim) tensor
        where autograd makes five: the logits are a sampled matrix product of the examples' center rows and
        the word rows (a CSR pattern of the pairs), the center gradient an embedding bag of the words' rows
        weighted by d loss / d logit = weights · (sigmoid(logit) - label)."""
        offsets, examples = self.offsets, len(self.offsets) - 1
        v = center_table.index_select(0, self.example_slots)  # (examples, dim)
        pattern = torch.sparse_csr_tensor(offsets, self.word_slots, torch.zeros_like(labels),
                                          size=(examples, len(word_table)), check_invariants=False)
        logits = torch.sparse.sampled_addmm(pattern, v, word_table.t(), beta=0.0).values()
        loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction="sum")
        scale = torch.sigmoid(logits).sub_(labels).mul_(weights)
        grad_examples = F.embedding_bag(self.word_slots, word_table, offsets[:-1], mode="sum",
                                        per_sample_weights=scale)
        grad_v = torch.zeros_like(center_table).index_add_(0, self.example_slots, grad_examples)
        # the word rows' gradient S^T v, S the (examples x word rows) matrix of the pairs' scales: a sparse
        # product, ~2x faster on PTB than gathering a (pairs x dim) copy of v and adding it up per row
        pairs = torch.sparse_coo_tensor(torch.stack([self.word_slots, self.pair_example]), scale,
                                        size=(len(word_table), examples), check_invariants=False)
        grad_u = torch.sparse.mm(pairs, v)
        return loss, [grad_v, grad_u]
