"""SlottedModule: a host submodule followed by its slot, in the place of the submodule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from actors.execution.stages import Mode

if TYPE_CHECKING:
    from actors.execution.slot import SeedSlot


class SlottedModule(nn.Module):
    """A host submodule followed by its slot (``slot(host(x), x)``)."""

    def __init__(self, host: nn.Module, slot: SeedSlot) -> None:
        super().__init__()
        self.host = host
        self.slot = slot

    def __getattr__(self, name: str) -> Any:
        """The wrapped submodule's attributes read through the wrapper (``weight``, ``eps``, …),
        so a parent that reads its child's attributes works with the slot in place."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            host = self.__dict__.get("_modules", {}).get("host")
            if host is None:
                raise
            return getattr(host, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the host submodule, then the slot (skipped outright while it is the identity)."""
        modules = self._modules  # the registered children, read without nn.Module.__getattr__
        h = modules["host"](*args, **kwargs)  # type: ignore[misc]
        slot: SeedSlot = modules["slot"]  # type: ignore[assignment]
        if slot.mode is Mode.IDENTITY and slot._tap is None:
            return h
        x = args[0] if args and isinstance(args[0], Tensor) else None
        return slot(h, x)
