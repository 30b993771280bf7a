"""SlottedModule: a host submodule followed by its slot, in the place of the submodule.

Reads of the host's attributes go through the wrapper, and so do writes and deletions of names
the host owns (``fc1.bias = None``, weight tying ``fc1.weight = fc2.weight``, a plain attribute),
so they reach the host. Utilities that edit a module's own parameter table (pruning, spectral
norm, parametrizations) must be applied to the host (``<path>.host``): on the wrapper they
raise an error naming it before changing anything (registering one of the host's tensors on the
wrapper, a lookup of a host's name in its parameter table, its repr in a parametrization's error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from actors.execution.stages import Mode

if TYPE_CHECKING:
    from actors.execution.slot import SeedSlot


class _OwnTable(dict[str, Any]):
    """The wrapper's parameter table: a missing name raises a KeyError naming the host."""

    def __init__(self, items: dict[str, Any], host_path: str) -> None:
        super().__init__(items)
        self.host_path = host_path

    def __missing__(self, name: str) -> Any:
        raise KeyError(
            f"{name!r} is not the slot wrapper's: the wrapped module is {self.host_path!r}"
        )


class SlottedModule(nn.Module):
    """A host submodule followed by its slot (``slot(host(x), x)``)."""

    def __init__(self, host: nn.Module, slot: SeedSlot, path: str = "") -> None:
        super().__init__()
        self.host = host
        self.slot = slot
        self._path = path  # where the wrapper sits in the model (for error messages)
        # the wrapper's own (empty) table: a lookup of a host's name in it says where the host is
        self.__dict__["_parameters"] = _OwnTable(self._parameters, self._host_path())

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

    def __setattr__(self, name: str, value: Any) -> None:
        """A write of a name the host owns reaches the host (as without the slot)."""
        host = self._host_for(name)
        if host is not None:
            setattr(host, name, value)
        else:
            super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        """A deletion of a name the host owns reaches the host."""
        host = self._host_for(name)
        if host is not None:
            delattr(host, name)
        else:
            super().__delattr__(name)

    def _host_for(self, name: str) -> nn.Module | None:
        """The host, when ``name`` is one of its own (not the wrapper's, not module machinery)."""
        host = self.__dict__.get("_modules", {}).get("host")
        if host is None or name.startswith("_") or name in ("host", "slot", "training"):
            return None
        if name in self.__dict__ or name in self._parameters or name in self._buffers:
            return None
        owned = (host._parameters, host._buffers, host._modules, host.__dict__)
        return host if any(name in d for d in owned) or hasattr(type(host), name) else None

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        """Refuse one of the host's parameters (pruning would split it off the host)."""
        self._refuse_host_tensor(name, param)
        super().register_parameter(name, param)

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Refuse one of the host's tensors as a buffer of the wrapper."""
        self._refuse_host_tensor(name, tensor)
        super().register_buffer(name, tensor, persistent)

    def _refuse_host_tensor(self, name: str, tensor: Tensor | None) -> None:
        host = self.__dict__.get("_modules", {}).get("host")
        if host is None or tensor is None:
            return
        if any(t is tensor for t in (*host.parameters(), *host.buffers())):
            where = self._host_path()
            raise ValueError(
                f"cannot register {name!r} on a slotted module: it holds a tensor of the wrapped "
                f"module, which lives at {where!r}; apply pruning, spectral_norm and "
                f"parametrizations to that module (model.get_submodule({where!r}))"
            )

    def _host_path(self) -> str:
        return f"{self._path}.host" if self._path else "<path>.host"

    def extra_repr(self) -> str:
        """Where the host is (an error that prints the wrapper names it)."""
        return f"prune and parametrize the host module {self._host_path()!r}"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the host submodule, then the slot (skipped outright while it is the identity)."""
        modules = self._modules  # the registered children, read without nn.Module.__getattr__
        h = modules["host"](*args, **kwargs)  # type: ignore[misc]
        slot: SeedSlot = modules["slot"]  # type: ignore[assignment]
        if slot.mode is Mode.IDENTITY and slot._tap is None:
            return h
        x = args[0] if args and isinstance(args[0], Tensor) else None
        return slot(h, x)
