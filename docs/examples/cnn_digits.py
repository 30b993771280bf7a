"""A CNN with BatchNorm on scikit-learn's 8x8 digits images grows a conv seed, one-call style.

Run: ``python docs/examples/cnn_digits.py`` (about 20 s on one CPU thread). Every actor runs in
this process (``kasmina.attach`` without ``redis=``); pass ``redis=URL, run=RUN, keys=FILE`` to
attach the same loop to a run served by ``kasmina run`` processes instead.
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
digits = load_digits()  # bundled with scikit-learn: no download
images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
labels = torch.tensor(digits.target)
x_train, y_train = images[:1400], labels[:1400]
x_val, y_val = images[1400:], labels[1400:]


def block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(block(1, 4), block(4, 4))  # deliberately narrow
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(self.features(x), 2)  # (B, 4, 4, 4)
        return self.head(h.flatten(1))


def evaluate(model: nn.Module) -> tuple[float, float]:
    was = model.training
    model.eval()  # BatchNorm uses its running statistics
    with torch.no_grad():
        logits = model(x_val)
    model.train(was)
    return F.cross_entropy(logits, y_val).item(), (logits.argmax(1) == y_val).float().mean().item()


config = KasminaConfig.load(  # short stage budgets: the whole lifecycle fits in 300 steps
    overrides={
        "lifecycle.training_steps": 80,
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
model = Net()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
with (
    kasmina.attach(
        model,
        {"features.s1": "features.1"},  # a slot on the second conv block's output (B, 4, 8, 8)
        optimizer,
        config=config,
        device="cpu",
        probe_batch=(x_val[:128], y_val[:128]),
        validation=(x_val, y_val),  # G4 judges the seed on the held-out set
        evaluate=evaluate,
    ) as kas
):
    for step in range(300):
        idx = torch.randint(0, len(x_train), (64,))
        x, y = x_train[idx], y_train[idx]
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        val_loss, val_acc = evaluate(model) if step % 5 == 0 else (float("nan"), float("nan"))
        kas.on_step(step, loss, val_loss=val_loss, val_accuracy=val_acc, batch=(x, y))
        if step == 20:
            kas.germinate("features.s1", "conv_adapter", params={"rank": 4, "lr": 0.01})
    events = kas.events()  # the run's verified event log: (entry id, kind, message)

path = [stage_name(m.to_stage) for _, kind, m in events if kind == "lifecycle.transition"]
failed = [
    c.name for _, kind, m in events if kind == "gate.result" for c in m.checks if not c.passed
]
print("features.s1:", " -> ".join(path))
print("failed gate checks:", failed)
print(f"val accuracy {evaluate(model)[1]:.3f}")
