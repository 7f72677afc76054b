"""Reference side of the classification benchmark: the book's code, re-typed.

A plain-Python re-typing of *Dive into Deep Learning* (PyTorch), 3.5 `load_data_fashion_mnist` (the
torchvision `FashionMNIST` dataset with `transforms.ToTensor()`, a shuffled `DataLoader`) and the
training loop of 7.6 in its plain form (`train_ch6`: Xavier init, SGD, `nn.CrossEntropyLoss`, per
batch zero_grad / forward / loss / backward / step, and the running sums of loss and accuracy).
``d2l`` itself is not imported. The changes: the data folder and the worker count are arguments (the
book downloads the data and uses 4 workers), the loop returns its epoch records and times itself,
and the per-epoch test accuracy and the animator are left out (the benchmark times training only).
Do not "optimise" this file.
"""

from __future__ import annotations

import time

import torch
import torchvision
from torch import nn
from torch.utils import data
from torchvision import transforms


def load_data_fashion_mnist(root, batch_size, num_workers=0):
    """Download the Fashion-MNIST dataset and then load it into memory (here: read from `root`)."""
    trans = transforms.ToTensor()
    mnist_train = torchvision.datasets.FashionMNIST(root=root, train=True, transform=trans, download=False)
    mnist_test = torchvision.datasets.FashionMNIST(root=root, train=False, transform=trans, download=False)
    return (data.DataLoader(mnist_train, batch_size, shuffle=True, num_workers=num_workers),
            data.DataLoader(mnist_test, batch_size, shuffle=False, num_workers=num_workers))


def accuracy(y_hat, y):
    """Compute the number of correct predictions."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def train_ch6(net, train_iter, num_epochs, lr, device):
    """Train a model with a GPU (here: `device`); returns one record per epoch."""
    def init_weights(m):
        if type(m) == nn.Linear or type(m) == nn.Conv2d:  # noqa: E721 (the book's test)
            nn.init.xavier_uniform_(m.weight)
    net.apply(init_weights)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    records = []
    for epoch in range(num_epochs):
        start = time.perf_counter()
        metric = [0.0, 0.0, 0]  # sum of training loss, sum of training accuracy, no. of examples
        net.train()
        for X, y in train_iter:
            optimizer.zero_grad()
            X, y = X.to(device), y.to(device)
            y_hat = net(X)
            l = loss(y_hat, y)  # noqa: E741 (the book's name)
            l.backward()
            optimizer.step()
            with torch.no_grad():
                metric[0] += float(l * X.shape[0])
                metric[1] += accuracy(y_hat, y)
                metric[2] += X.shape[0]
        seconds = time.perf_counter() - start
        records.append({"epoch": epoch + 1, "loss": metric[0] / metric[2], "train_accuracy": metric[1] / metric[2],
                        "images_per_s": metric[2] / seconds, "seconds": seconds})
    return records
