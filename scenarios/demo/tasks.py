"""The demo's tasks: data (offline only), splits and deliberately too-small host networks.

- ``digits``: scikit-learn's bundled 8x8 digits (``load_digits``, no download), a 64->8->10 MLP.
  Its capacity is short in *features*: 8 hidden units for 64 inputs.
- ``spirals``: a synthetic two-spirals set (1000 points, 1.75 turns, noise 0.2), a 2->16->2 MLP.
  Its capacity is short in *nonlinearity*: one hidden layer cannot bend the boundary enough.

Every host has two slots: ``hidden`` at the hidden activation (a depth seed there adds a residual
block ``h + W2 relu(W1 h)``) and ``units`` around the whole hidden layer (a width seed there adds
new hidden units from the layer's input to its output, fan-out zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

TASKS = ("digits", "spirals")
SLOT_POINTS = {"units": "mlp", "hidden": "mlp.1"}
"""slot id -> host submodule: ``units`` wraps the hidden layer, ``hidden`` its activation."""


@dataclass(frozen=True)
class Split:
    """Stratified train/val/test tensors (features standardised on the training set)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor

    @property
    def features(self) -> int:
        """Input dimension."""
        return int(self.x_train.shape[1])

    @property
    def classes(self) -> int:
        """Number of classes."""
        return int(self.y_train.max()) + 1


@dataclass(frozen=True)
class TaskSpec:
    """A task's host width and where its capacity is short."""

    name: str
    hidden: int
    short_of: str  # "features" or "nonlinearity"


SPECS = {
    "digits": TaskSpec("digits", hidden=8, short_of="features"),
    "spirals": TaskSpec("spirals", hidden=16, short_of="nonlinearity"),
}


def two_spirals(
    n: int = 1000, turns: float = 1.75, noise: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points on two interleaved spirals (half per class), Gaussian noise ``noise``."""
    rng = np.random.default_rng(seed)
    half = n // 2
    t = np.sqrt(rng.uniform(0.0, 1.0, half)) * turns * 2 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (turns * 2 * np.pi) * 3
    x = np.concatenate([arm, -arm]) + rng.normal(0.0, noise, (2 * half, 2))
    y = np.concatenate([np.zeros(half, dtype=np.int64), np.ones(half, dtype=np.int64)])
    return x.astype(np.float32), y


def load_task(task: str, seed: int = 0) -> Split:
    """Stratified 64/16/20 train/val/test split of ``task`` (the split depends on ``seed``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if task == "digits":
        data = load_digits()
        x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    elif task == "spirals":
        x, y = two_spirals(seed=seed)
    else:
        raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.2, stratify=y_rest, random_state=seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)
    parts = [((a - mean) / std).astype(np.float32) for a in (x_train, x_val, x_test)]
    return Split(
        torch.from_numpy(parts[0]),
        torch.from_numpy(y_train),
        torch.from_numpy(parts[1]),
        torch.from_numpy(y_val),
        torch.from_numpy(parts[2]),
        torch.from_numpy(y_test),
    )


class Host(nn.Module):
    """``d_in -> hidden -> d_out`` MLP: ``mlp = [Linear, ReLU, Linear]``."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        out: Tensor = self.mlp(x)
        return out


def build_host(task: str, split: Split, seed: int) -> Host:
    """The task's too-small host, initialised from ``seed``."""
    torch.manual_seed(seed)
    return Host(split.features, SPECS[task].hidden, split.classes)


def batches(n: int, batch: int, steps: int, seed: int) -> Tensor:
    """``steps`` rows of ``batch`` indices into ``n`` samples (reshuffled every epoch)."""
    g = torch.Generator().manual_seed(seed)
    rows: list[Tensor] = []
    need = steps * batch
    while sum(r.numel() for r in rows) < need:
        rows.append(torch.randperm(n, generator=g))
    flat = torch.cat(rows)[:need]
    return flat.view(steps, batch)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Cross-entropy loss and accuracy of ``model`` on ``(x, y)`` (mode restored)."""
    was = model.training
    model.eval()
    try:
        logits = model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        acc = float((logits.argmax(dim=1) == y).float().mean())
    finally:
        model.train(was)
    return loss, acc
