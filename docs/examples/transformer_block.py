"""A small transformer block grows a seed on its output, one-call style.

The task: classify scikit-learn's 8x8 digits read as a sequence of 8 rows (8 tokens of 8 pixels)
by a one-block transformer encoder. The slot sits on the block's output (B, 8, 16); a residual
MLP seed grows there. Run: ``python docs/examples/transformer_block.py``.
"""

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import kasmina
from actors.seed import stage_name
from contracts import KasminaConfig

torch.manual_seed(0)
torch.set_num_threads(1)
digits = load_digits()
rows = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8 tokens, 8 features)
labels = torch.tensor(digits.target)
x_train, y_train = rows[:1400], labels[:1400]
x_val, y_val = rows[1400:], labels[1400:]


class Classifier(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.position = nn.Parameter(torch.zeros(1, 8, d))
        self.block = nn.TransformerEncoderLayer(
            d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(self.embed(x) + self.position)  # (B, 8, d)
        return self.head(h.mean(dim=1))


def evaluate(model: nn.Module) -> tuple[float, float]:
    with torch.no_grad():
        logits = model(x_val)
    return F.cross_entropy(logits, y_val).item(), (logits.argmax(1) == y_val).float().mean().item()


config = KasminaConfig.load(
    overrides={
        "lifecycle.training_steps": 60,
        "lifecycle.blend_steps": 30,
        "lifecycle.shadowing_steps": 10,
        "lifecycle.probationary_steps": 10,
        "gates.min_training_steps": 30,
        "gates.max_latency_overhead": 50.0,  # a tiny host: a seed is a large share of its time
        "gates.loss_spike_sigma": 6.0,
        "gates.counterfactual_loss_tolerance": 0.05,
        "barrier.frequency": 5,
    }
)
model = Classifier()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
with (
    kasmina.attach(
        model,
        {"block.s0": "block"},  # a slot on the transformer block's output
        optimizer,
        config=config,
        device="cpu",
        probe_batch=(x_val[:128], y_val[:128]),
        validation=(x_val, y_val),  # G4 judges the seed on the held-out set
        evaluate=evaluate,
    ) as kas
):
    for step in range(260):
        idx = torch.randint(0, len(x_train), (64,))
        x, y = x_train[idx], y_train[idx]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        val_loss, val_acc = evaluate(model) if step % 5 == 0 else (float("nan"), float("nan"))
        kas.on_step(step, loss, val_loss=val_loss, val_accuracy=val_acc, batch=(x, y))
        if step == 20:
            kas.germinate("block.s0", "residual_mlp", params={"hidden": 16, "lr": 0.003})
    events = kas.events()

path = [stage_name(m.to_stage) for _, kind, m in events if kind == "lifecycle.transition"]
failed = [
    c.name for _, kind, m in events if kind == "gate.result" for c in m.checks if not c.passed
]
print("block.s0:", " -> ".join(path))
print("failed gate checks:", failed)
print(f"val accuracy {evaluate(model)[1]:.3f}")
