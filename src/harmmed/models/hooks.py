"""Hooks that are always removed: every change to a module is undone when the block exits.

Leaking a hook silently corrupts every later forward pass, so nothing in the project registers
hooks except through :class:`HookSet`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

TensorFn = Callable[[torch.Tensor], torch.Tensor | None]


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, tensor: torch.Tensor) -> Any:
    return (tensor, *value[1:]) if isinstance(value, tuple) else tensor


class HookSet:
    """Context manager collecting forward hooks, input hooks and forward overrides."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._overridden: list[torch.nn.Module] = []

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._overridden:
            del module.forward  # falls back to the class's forward
        self._overridden.clear()

    def on_output(self, module: torch.nn.Module, fn: TensorFn) -> None:
        """Call ``fn`` on the module's (first) output; a returned tensor replaces it."""

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
            new = fn(_first_tensor(output))
            return None if new is None else _replace_first(output, new)

        self._handles.append(module.register_forward_hook(hook))

    def on_input(self, module: torch.nn.Module, fn: TensorFn) -> None:
        """Call ``fn`` on the module's first input (positional or ``hidden_states=``)."""

        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def attach(self, module: torch.nn.Module, side: str, fn: TensorFn) -> None:
        """``on_input`` or ``on_output`` by name (the architecture table declares the side)."""
        if side not in ("input", "output"):
            raise ValueError(f"hook side must be 'input' or 'output', not {side!r}")
        (self.on_input if side == "input" else self.on_output)(module, fn)

    def replace_forward(self, module: torch.nn.Module, forward: Callable[..., Any]) -> None:
        """Skip a module's computation: its hooks still fire around ``forward``."""
        module.forward = forward
        self._overridden.append(module)
