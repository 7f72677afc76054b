"""Reference side of the word2vec benchmark: the book's code, re-typed.

This module is a plain-Python re-typing of the code of *Dive into Deep
Learning* (PyTorch edition), sections

* 15.3 "The Dataset for Pretraining Word Embeddings" (``read_ptb``,
  ``subsample``, ``get_centers_and_contexts``, ``RandomGenerator``,
  ``get_negatives``, ``batchify``, ``load_data_ptb``), and
* 15.4 "Pretraining word2vec" (``skip_gram``, ``SigmoidBCELoss``, ``train``,
  ``get_similar_tokens``),

together with the pieces of the ``d2l`` package they rely on (``Vocab``,
``Accumulator``, ``try_gpu``).  ``d2l`` itself is not imported.

It is used only as the reference ("book") side of a benchmark, so the book's
algorithms and their performance characteristics are deliberately kept:
pure-Python loops, ``random`` and ``collections.Counter`` for preprocessing,
a torch ``DataLoader`` with the Python ``batchify`` collate function and
``num_workers=0``, and a ``float()`` host sync per minibatch in the training
loop.  The only additions are wall-clock measurements and returned numbers
instead of plots.  Do not "optimise" this file.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import time
from pathlib import Path

import torch
from torch import nn

# ---------------------------------------------------------------------------
# Pieces of the d2l package
# ---------------------------------------------------------------------------


class Vocab:
    """Vocabulary for text (d2l.Vocab)."""

    def __init__(self, tokens=[], min_freq=0, reserved_tokens=[]):
        # Flatten a 2D list if needed
        if tokens and isinstance(tokens[0], list):
            tokens = [token for line in tokens for token in line]
        # Count token frequencies
        counter = collections.Counter(tokens)
        self.token_freqs = sorted(counter.items(), key=lambda x: x[1],
                                  reverse=True)
        # The list of unique tokens
        self.idx_to_token = list(sorted(set(['<unk>'] + reserved_tokens + [
            token for token, freq in self.token_freqs if freq >= min_freq])))
        self.token_to_idx = {token: idx
                             for idx, token in enumerate(self.idx_to_token)}

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.__getitem__(token) for token in tokens]

    def to_tokens(self, indices):
        if hasattr(indices, '__len__') and len(indices) > 1:
            return [self.idx_to_token[int(index)] for index in indices]
        return self.idx_to_token[indices]

    @property
    def unk(self) -> int:  # Index for the unknown token
        return self.token_to_idx['<unk>']


class Accumulator:
    """For accumulating sums over `n` variables (d2l.Accumulator)."""

    def __init__(self, n: int):
        self.data = [0.0] * n

    def add(self, *args):
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def reset(self):
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx: int) -> float:
        return self.data[idx]


def try_gpu(i: int = 0) -> torch.device:
    """Return gpu(i) if exists, otherwise return cpu() (d2l.try_gpu)."""
    if torch.cuda.device_count() >= i + 1:
        return torch.device(f'cuda:{i}')
    return torch.device('cpu')


# ---------------------------------------------------------------------------
# 15.3 The Dataset for Pretraining Word Embeddings
# ---------------------------------------------------------------------------


def read_ptb(data_dir: Path) -> list[list[str]]:
    """Load the PTB dataset into a list of text lines."""
    # Read the training set
    with open(Path(data_dir) / 'ptb.train.txt') as f:
        raw_text = f.read()
    return [line.split() for line in raw_text.split('\n')]


def subsample(sentences, vocab):
    """Subsample high-frequency words."""
    # Exclude unknown tokens ('<unk>')
    sentences = [[token for token in line if vocab[token] != vocab.unk]
                 for line in sentences]
    counter = collections.Counter([
        token for line in sentences for token in line])
    num_tokens = sum(counter.values())

    # Return True if `token` is kept during subsampling
    def keep(token):
        return (random.uniform(0, 1) <
                math.sqrt(1e-4 / counter[token] * num_tokens))

    return ([[token for token in line if keep(token)] for line in sentences],
            counter)


def get_centers_and_contexts(corpus, max_window_size: int):
    """Return center words and context words in skip-gram."""
    centers, contexts = [], []
    for line in corpus:
        # To form a "center word--context word" pair, each sentence needs to
        # have at least 2 words
        if len(line) < 2:
            continue
        centers += line
        for i in range(len(line)):  # Context window centered at `i`
            window_size = random.randint(1, max_window_size)
            indices = list(range(max(0, i - window_size),
                                 min(len(line), i + 1 + window_size)))
            # Exclude the center word from the context words
            indices.remove(i)
            contexts.append([line[idx] for idx in indices])
    return centers, contexts


class RandomGenerator:
    """Randomly draw among {1, ..., n} according to n sampling weights."""

    def __init__(self, sampling_weights):
        # Exclude
        self.population = list(range(1, len(sampling_weights) + 1))
        self.sampling_weights = sampling_weights
        self.candidates = []
        self.i = 0

    def draw(self):
        if self.i == len(self.candidates):
            # Cache `k` random sampling results
            self.candidates = random.choices(
                self.population, self.sampling_weights, k=10000)
            self.i = 0
        self.i += 1
        return self.candidates[self.i - 1]


def get_negatives(all_contexts, vocab, counter, K: int):
    """Return noise words in negative sampling."""
    # Sampling weights for words with indices 1, 2, ... (index 0 is the
    # excluded unknown token) in the vocabulary
    sampling_weights = [counter[vocab.to_tokens(i)]**0.75
                        for i in range(1, len(vocab))]
    all_negatives, generator = [], RandomGenerator(sampling_weights)
    for contexts in all_contexts:
        negatives = []
        while len(negatives) < len(contexts) * K:
            neg = generator.draw()
            # Noise words cannot be context words
            if neg not in contexts:
                negatives.append(neg)
        all_negatives.append(negatives)
    return all_negatives


def batchify(data):
    """Return a minibatch of examples for skip-gram with negative sampling."""
    max_len = max(len(c) + len(n) for _, c, n in data)
    centers, contexts_negatives, masks, labels = [], [], [], []
    for center, context, negative in data:
        cur_len = len(context) + len(negative)
        centers += [center]
        contexts_negatives += [
            context + negative + [0] * (max_len - cur_len)]
        masks += [[1] * cur_len + [0] * (max_len - cur_len)]
        labels += [[1] * len(context) + [0] * (max_len - len(context))]
    return (torch.tensor(centers).reshape((-1, 1)), torch.tensor(
        contexts_negatives), torch.tensor(masks), torch.tensor(labels))


def load_data_ptb(data_dir: Path, batch_size: int, max_window_size: int,
                  num_noise_words: int):
    """Load the PTB dataset into memory.

    Returns ``(data_iter, vocab, stats)``; ``stats`` holds ``num_sentences``,
    ``vocab_size``, ``num_centers``, ``num_pairs`` (center-context pairs) and
    ``seconds`` (wall time of this whole function).
    """
    t0 = time.perf_counter()
    num_workers = 0
    sentences = read_ptb(data_dir)
    vocab = Vocab(sentences, min_freq=10)
    subsampled, counter = subsample(sentences, vocab)
    corpus = [vocab[line] for line in subsampled]
    all_centers, all_contexts = get_centers_and_contexts(
        corpus, max_window_size)
    all_negatives = get_negatives(
        all_contexts, vocab, counter, num_noise_words)

    class PTBDataset(torch.utils.data.Dataset):
        def __init__(self, centers, contexts, negatives):
            assert len(centers) == len(contexts) == len(negatives)
            self.centers = centers
            self.contexts = contexts
            self.negatives = negatives

        def __getitem__(self, index):
            return (self.centers[index], self.contexts[index],
                    self.negatives[index])

        def __len__(self):
            return len(self.centers)

    dataset = PTBDataset(all_centers, all_contexts, all_negatives)

    data_iter = torch.utils.data.DataLoader(
        dataset, batch_size, shuffle=True, collate_fn=batchify,
        num_workers=num_workers)
    seconds = time.perf_counter() - t0
    stats = {
        'num_sentences': len(sentences),
        'vocab_size': len(vocab),
        'num_centers': len(all_centers),
        'num_pairs': sum(len(c) for c in all_contexts),
        'seconds': seconds,
    }
    return data_iter, vocab, stats


# ---------------------------------------------------------------------------
# 15.4 Pretraining word2vec
# ---------------------------------------------------------------------------


def skip_gram(center, contexts_and_negatives, embed_v, embed_u):
    v = embed_v(center)
    u = embed_u(contexts_and_negatives)
    pred = torch.bmm(v, u.permute(0, 2, 1))
    return pred


class SigmoidBCELoss(nn.Module):
    # Binary cross-entropy loss with masking
    def __init__(self):
        super().__init__()

    def forward(self, inputs, target, mask=None):
        out = nn.functional.binary_cross_entropy_with_logits(
            inputs, target, weight=mask, reduction="none")
        return out.mean(dim=1)


loss = SigmoidBCELoss()


def make_net(vocab_size: int, embed_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Embedding(num_embeddings=vocab_size,
                                      embedding_dim=embed_size),
                         nn.Embedding(num_embeddings=vocab_size,
                                      embedding_dim=embed_size))


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train(net, data_iter, lr: float, num_epochs: int,
          device: torch.device | None = None) -> dict:
    """The book's training loop, returning numbers instead of plotting.

    As in the book, the Accumulator is created once, before the epoch loop,
    so the book's printed loss is the average over *all* epochs so far and
    its printed "tokens/sec" divides the cumulative count by the last epoch's
    time; both are returned as ``book_*``.  Per-epoch numbers are derived
    from differences of the accumulator (no extra host syncs).
    """
    if device is None:
        device = try_gpu()

    def init_weights(module):
        if type(module) == nn.Embedding:
            nn.init.xavier_uniform_(module.weight)
    net.apply(init_weights)
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    # Sum of normalized losses, no. of normalized losses
    metric = Accumulator(2)
    epoch_losses, epoch_seconds, center_words_per_s = [], [], []
    last_epoch_time = float('nan')
    for epoch in range(num_epochs):
        _sync(device)
        start = time.perf_counter()
        sum0, cnt0 = metric[0], metric[1]
        for i, batch in enumerate(data_iter):
            optimizer.zero_grad()
            center, context_negative, mask, label = [
                data.to(device) for data in batch]

            pred = skip_gram(center, context_negative, net[0], net[1])
            l = (loss(pred.reshape(label.shape).float(), label.float(), mask)
                 / mask.sum(axis=1) * mask.shape[1])
            l.sum().backward()
            optimizer.step()
            metric.add(l.sum(), l.numel())
        _sync(device)
        last_epoch_time = time.perf_counter() - start
        n = metric[1] - cnt0
        epoch_seconds.append(last_epoch_time)
        epoch_losses.append((metric[0] - sum0) / n)
        center_words_per_s.append(n / last_epoch_time)
    return {
        'device': str(device),
        'epoch_losses': epoch_losses,
        'last_epoch_loss': epoch_losses[-1],
        'mean_epoch_loss': sum(epoch_losses) / len(epoch_losses),
        'epoch_seconds': epoch_seconds,
        'center_words_per_epoch': int(metric[1]) // num_epochs,
        'center_words_per_s': center_words_per_s,
        'book_printed_loss': metric[0] / metric[1],
        'book_printed_tokens_per_s': metric[1] / last_epoch_time,
    }


def get_similar_tokens(query_token: str, k: int, embed,
                       vocab: Vocab) -> list[tuple[str, float]]:
    W = embed.weight.data
    x = W[vocab[query_token]]
    # Compute the cosine similarity. Add 1e-9 for numerical stability
    cos = torch.mv(W, x) / torch.sqrt(torch.sum(W * W, dim=1) *
                                      torch.sum(x * x) + 1e-9)
    topk = torch.topk(cos, k=k+1)[1].cpu().numpy().astype('int32')
    # Remove the input words
    return [(vocab.to_tokens(i), float(cos[i])) for i in topk[1:]]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-dir', type=Path, required=True,
                        help='folder holding ptb.train.txt')
    parser.add_argument('--epochs', type=int, default=5)
    parser.add_argument('--batch-size', type=int, default=512)
    parser.add_argument('--lr', type=float, default=0.002)
    parser.add_argument('--embed-size', type=int, default=100)
    parser.add_argument('--max-window-size', type=int, default=5)
    parser.add_argument('--num-noise-words', type=int, default=5)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default=None,
                        help="torch device (default: the book's try_gpu())")
    parser.add_argument('--json', type=Path, default=None, metavar='OUT')
    args = parser.parse_args(argv)

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device) if args.device else try_gpu()

    data_iter, vocab, stats = load_data_ptb(
        args.data_dir, args.batch_size, args.max_window_size,
        args.num_noise_words)
    print(f"preprocess {stats['seconds']:.2f}s: "
          f"{stats['num_sentences']} sentences, vocab {stats['vocab_size']}, "
          f"{stats['num_centers']} centers, {stats['num_pairs']} pairs")

    net = make_net(len(vocab), args.embed_size)
    result = train(net, data_iter, args.lr, args.epochs, device)
    for e, (l, s, r) in enumerate(zip(result['epoch_losses'],
                                      result['epoch_seconds'],
                                      result['center_words_per_s'])):
        print(f'epoch {e + 1}: loss {l:.4f}, {s:.2f}s, '
              f'{r:.1f} center words/s')
    print(f"loss {result['book_printed_loss']:.3f}, "
          f"{result['book_printed_tokens_per_s']:.1f} tokens/sec "
          f"on {result['device']}")

    neighbours = None
    if 'chip' in vocab.token_to_idx:
        neighbours = get_similar_tokens('chip', 3, net[0], vocab)
        for token, sim in neighbours:
            print(f'cosine sim={sim:.3f}: {token}')

    if args.json is not None:
        out = {
            'reference': 'd2l 15.3/15.4 (re-typed)',
            'args': {k: (str(v) if isinstance(v, Path) else v)
                     for k, v in vars(args).items()},
            'torch_version': torch.__version__,
            'torch_num_threads': torch.get_num_threads(),
            'preprocess_seconds': stats['seconds'],
            'stats': stats,
            'train': result,
            'train_seconds': sum(result['epoch_seconds']),
            'chip_neighbours': neighbours,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f'wrote {args.json}')


if __name__ == '__main__':
    main()
