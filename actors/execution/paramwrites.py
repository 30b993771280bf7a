"""Parameters a forward writes, kept across probe forwards.

A forward normally reads its parameters, but some write them in place: ``nn.Embedding`` and
``nn.EmbeddingBag`` with ``max_norm`` renormalise the rows they look up, and a user's module may
do the like. A probe forward (germination checks, isolation probes, shadow losses) must leave
the host's parameters bit-identical, yet copying every parameter before every probe would cost
the model's size each time. So: the parameters of modules known to write theirs are copied
before a probe and put back after it; every parameter's version counter is compared, and one a
probe wrote without a copy is remembered, so that it is copied from the next probe on (that
first write is said once, as a warning: it could not be undone).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger("kasmina.execution")

#: per model, ids of parameters a probe forward was seen writing (copied from then on)
_SEEN: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


def _known_writers(model: nn.Module) -> set[int]:
    """Ids of parameters of modules whose forward writes them: embeddings with ``max_norm``."""
    found: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.max_norm is not None:
            found.update(id(p) for p in module.parameters(recurse=False))
    return found


@dataclass
class KeptParameters:
    """A model's parameters as a probe found them: version counters, and copies of those a
    forward is known to write."""

    model: nn.Module
    versions: list[tuple[nn.Parameter, int]]
    copies: dict[int, Tensor]

    def restore(self) -> None:
        """Put back what a forward wrote; remember a write that had no copy."""
        unkept = []
        with torch.no_grad():
            for p, version in self.versions:
                if p._version == version:
                    continue
                saved = self.copies.get(id(p))
                if saved is not None:
                    p.copy_(saved)
                else:
                    unkept.append(p)
        if unkept:
            _SEEN.setdefault(self.model, set()).update(id(p) for p in unkept)
            names = [n for n, p in self.model.named_parameters() if any(p is q for q in unkept)]
            log.warning(
                "a forward of the model writes its parameters in place (%s): one probe's write "
                "could not be undone; they are copied before every probe from now on",
                ", ".join(names[:5]),
            )


def kept_parameters(model: nn.Module) -> KeptParameters:
    """The model's parameters before a probe (see the module docstring)."""
    wanted = _known_writers(model) | _SEEN.get(model, set())
    params = list(model.parameters())
    copies = {id(p): p.detach().clone() for p in params if id(p) in wanted}
    return KeptParameters(model, [(p, p._version) for p in params], copies)
