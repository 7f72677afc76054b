"""word2vec's `sparse_adam` optimiser option: trains, touches only a batch's rows, resumes exactly;
the book's dense Adam stays the default. Its RowAdam is torch.optim.Adam computed on the touched
rows, and its closed-form gradient (sgns_step) is autograd's of the book's loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.skipgram import SkipGram
from tasks import distributed
from tasks.errors import D2lflowError
from tasks.params import Word2vecTrainParams, load_params
from tasks.runtime import load_checkpoint
from tasks.word2vec import row_adam
from tasks.word2vec.row_adam import RowAdam, sgns_step, unique_rows
from tasks.word2vec.train import flatten_examples, make_optimizer, pair_loss, train
from tests.word2vec_fixtures import Preprocessed, random_samples

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_ptb(tmp_path_factory) -> Preprocessed:
    return Preprocessed(tmp_path_factory.mktemp("ptb2000"), sentences=2000)


def _cfg(**changes) -> Word2vecTrainParams:
    return Word2vecTrainParams(embed_size=16, batch_size=64, epochs=3, optimizer="sparse_adam").model_copy(
        update=changes)


def _train(data: Preprocessed, cfg: Word2vecTrainParams, checkpoint: Path, **kwargs):
    return train(data.samples, data.corpus, data.vocab.counts, len(data.vocab), cfg, data.pre_cfg, 0, CPU,
                 checkpoint, "fp", **kwargs)


def test_the_default_optimiser_is_the_books_dense_adam():
    assert Word2vecTrainParams().optimizer == "adam"
    assert load_params(REPO / "params.yaml").word2vec.train.optimizer == "adam"
    model = SkipGram(10, 4)
    assert type(make_optimizer(model, Word2vecTrainParams(), CPU)) is torch.optim.Adam
    assert type(make_optimizer(model, _cfg(), CPU)) is RowAdam


def test_sparse_logits_equal_the_dense_ones_and_give_sparse_gradients_of_equal_value():
    torch.manual_seed(0)
    model = SkipGram(30, 8)
    centers, words = torch.tensor([1, 1, 4, 7, 7, 7]), torch.tensor([2, 3, 3, 9, 2, 2])
    weights = torch.rand(6)
    dense = model.pair_logits(centers, words)
    (dense * weights).sum().backward()
    dense_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    sparse = model.pair_logits_sparse(centers, words)
    (sparse * weights).sum().backward()
    assert torch.allclose(sparse, dense, atol=1e-6)
    for p, expected in zip(model.parameters(), dense_grads, strict=True):
        assert p.grad.is_sparse
        assert torch.allclose(p.grad.to_dense(), expected, atol=1e-6)


def test_row_adam_on_the_touched_rows_equals_torch_adam_on_those_rows_alone():
    """Steps that all touch the same rows: RowAdam's rows follow torch.optim.Adam (fused, the book's
    default on a CPU) run on a parameter holding just those rows, bit for bit; the other rows keep
    their weights and zero moments."""
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(40, 5))
    rows = torch.tensor([1, 4, 5, 17, 39])
    alone = torch.nn.Parameter(table.detach()[rows].clone())
    lazy = RowAdam([table], lr=0.05)
    reference = torch.optim.Adam([alone], lr=0.05, fused=True)
    before = table.detach().clone()
    for _ in range(6):
        grad = torch.randn(len(rows), 5)
        lazy.step_rows([(rows, grad)])
        alone.grad = grad.clone()
        reference.step()
    assert torch.equal(table.detach()[rows], alone.detach())
    assert not torch.equal(table.detach()[rows], before[rows])
    others = torch.ones(40, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(table.detach()[others], before[others])
    moments = lazy.state[table]["moments"]
    assert torch.equal(moments[0][rows], reference.state[alone]["exp_avg"])
    assert torch.equal(moments[1][rows], reference.state[alone]["exp_avg_sq"])
    assert not moments[:, others].any()
    assert float(lazy.state[table]["step"]) == 6


def test_row_adam_with_changing_rows_is_dense_torch_adam_through_step_and_step_rows():
    """Rows touched in some steps only: after flush() RowAdam agrees with torch.optim.Adam (dense: an
    untouched row keeps moving by its moments), through step() with sparse gradients and through
    step_rows; rows no step touched keep their weights."""
    torch.manual_seed(1)
    start = torch.randn(30, 4)
    ours, theirs, rows_fed = (torch.nn.Parameter(start.clone()) for _ in range(3))
    ours_opt, theirs_opt = RowAdam([ours], lr=0.01), torch.optim.Adam([theirs], lr=0.01)
    rows_opt = RowAdam([rows_fed], lr=0.01)
    for step in range(8):
        ids = torch.randint(0, 12 + 2 * step, (20,))  # duplicates; later steps reach new rows
        upstream = torch.randn(20, 4)
        for param, opt, sparse in ((ours, ours_opt, True), (theirs, theirs_opt, False)):
            opt.zero_grad(set_to_none=True)
            (torch.nn.functional.embedding(ids, param, sparse=sparse) * upstream).sum().backward()
            opt.step()
        distinct, rank = unique_rows(ids, 30)
        rows_opt.step_rows([(distinct, torch.zeros(len(distinct), 4).index_add_(0, rank[ids], upstream))])
    ours_opt.flush()
    rows_opt.flush()
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(rows_fed, ours, atol=1e-6)  # the sparse gradient sums duplicates in another order
    never = torch.ones(30, dtype=torch.bool)
    never[:26] = False
    assert torch.equal(ours.detach()[never], start[never])


def test_the_closed_form_gradient_is_autograds_gradient_of_the_books_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    vocab_size = 25
    samples = random_samples(rng, 12, vocab_size, k=3, max_ctx=4)
    part = flatten_examples(samples, rng.permutation(len(samples)))
    model = SkipGram(vocab_size, 7)
    expected = pair_loss(model.pair_logits(part.centers, part.words), part)
    expected.backward()
    loss, updates = sgns_step(model.embed_v.weight, model.embed_u.weight, part.offsets, part.centers, part.words,
                              part.labels, part.weights)
    assert torch.allclose(loss, expected.detach(), atol=1e-5)
    for param, (rows, grad), ids in zip(model.parameters(), updates, (part.centers, part.words), strict=True):
        assert torch.equal(rows, torch.unique(ids))
        assert torch.allclose(grad, param.grad[rows], atol=1e-6)
        untouched = torch.ones(vocab_size, dtype=torch.bool)
        untouched[rows] = False
        assert not param.grad[untouched].any()


def test_a_sparse_step_changes_only_the_rows_its_batch_touches():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vocab_size = 50
    samples = random_samples(rng, 8, vocab_size, k=2, max_ctx=3)
    part = flatten_examples(samples, np.arange(len(samples)))
    model = SkipGram(vocab_size, 6)
    optimizer = make_optimizer(model, _cfg(), CPU)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):  # later steps: untouched rows keep their weights though their moments exist
        optimizer.zero_grad(set_to_none=True)
        pair_loss(model.pair_logits_sparse(part.centers, part.words), part).backward()
        optimizer.step()
    for weight, old, touched in zip(model.parameters(), before, (part.centers, part.words), strict=True):
        rows = torch.zeros(vocab_size, dtype=torch.bool)
        rows[touched] = True
        assert 0 < int(rows.sum()) < vocab_size
        changed = (weight.detach() != old).any(dim=1)
        assert torch.equal(changed, rows)


def test_sparse_training_reduces_the_loss_and_is_reproducible(small_ptb: Preprocessed, tmp_path: Path):
    a = _train(small_ptb, _cfg(lr=0.01), tmp_path / "a.pt")
    b = _train(small_ptb, _cfg(lr=0.01), tmp_path / "b.pt")
    losses = [h["loss"] for h in a.history]
    assert losses[0] < np.log(2) + 0.05
    assert losses[-1] < losses[0] - 0.05
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    dense = _train(small_ptb, _cfg(lr=0.01, optimizer="adam"), tmp_path / "c.pt")
    assert not torch.equal(dense.model.embed_v.weight, a.model.embed_v.weight)


@pytest.mark.parametrize("whole_table_share", [0.0, 1.0])
def test_sparse_training_follows_the_books_dense_adam(small_ptb: Preprocessed, tmp_path: Path, monkeypatch,
                                                       whole_table_share: float):
    """sparse_adam is dense Adam computed on the touched rows: trained from the same start on the same
    batches, its weights are the dense optimiser's up to float32 rounding (the gradients' summation
    order differs), where lazy Adam (rows moving only when touched) ends visibly elsewhere (0.24
    relative). Both ways of updating a table: every table whole (share 0) or only the touched rows (1)."""
    monkeypatch.setattr(row_adam, "WHOLE_TABLE_SHARE", whole_table_share)
    sparse = _train(small_ptb, _cfg(lr=0.01), tmp_path / "a.pt")
    dense = _train(small_ptb, _cfg(lr=0.01, optimizer="adam"), tmp_path / "b.pt")
    for ours, theirs in zip(sparse.model.parameters(), dense.model.parameters(), strict=True):
        assert float((ours - theirs).norm() / theirs.norm()) < 1e-4
    assert [h["loss"] for h in sparse.history] == pytest.approx([h["loss"] for h in dense.history], rel=1e-5)


@pytest.mark.parametrize("whole_table_share", [0.0, row_adam.WHOLE_TABLE_SHARE, 1.0])
def test_sparse_training_resumed_from_a_checkpoint_ends_with_the_uninterrupted_weights(
        small_ptb: Preprocessed, tmp_path: Path, monkeypatch, whole_table_share: float):
    monkeypatch.setattr(row_adam, "WHOLE_TABLE_SHARE", whole_table_share)
    cfg = _cfg()
    whole = _train(small_ptb, cfg, tmp_path / "whole.pt")
    _train(small_ptb, cfg.model_copy(update={"epochs": 1}), tmp_path / "part.pt")
    state = load_checkpoint(tmp_path / "part.pt", "fp")
    assert state is not None and state["epoch"] == 1 and state["optimizer"]["state"]
    for row_state in state["optimizer"]["state"].values():  # flushed at the epoch's end: every row up to date
        assert torch.equal(row_state["last"], torch.full_like(row_state["last"], int(row_state["step"])))
    resumed = _train(small_ptb, cfg, tmp_path / "part.pt", state=state)
    assert resumed.resumed_from_epoch == 1
    for key, value in whole.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]


def test_sparse_adam_under_ddp_is_refused_with_the_keys_to_change(small_ptb: Preprocessed, tmp_path: Path):
    ctx = distributed.Context(CPU, rank=0, world_size=2, backend="gloo")
    with pytest.raises(D2lflowError, match=r"sparse_adam.*one process.*word2vec\.train\.optimizer"):
        _train(small_ptb, _cfg(), tmp_path / "x.pt", ctx=ctx)
