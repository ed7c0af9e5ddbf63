"""The composition functions a SPINN can REDUCE with, by name (`COMPOSITIONS`).

A composition is a module called as ``reduce(left, right, tracking)``: left and right (M, d_state)
the children's states, h in their first ``d_hidden`` columns; tracking (M, d_tracker), the Tracker's
h, or None without a Tracker; it returns the parent's (M, d_state) and has a ``d_state`` attribute
(the leaves are made that wide). TreeLSTM (`spinn.model.cells.Reduce`) is the stock one, which the
engine runs; the others run through the reference (`spinn.model.reference`), as does any module of
a user's with this interface.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spinn.errors import SpinnError
from spinn.model.cells import Reduce


class TreeGRU(nn.Module):
    """A TreeGRU (nyu-mll/spinn's ``treegru``): a GRU whose previous state is the sum of the children.

    With ``p = h_left + h_right`` and e the Tracker's h (its terms are left out without a Tracker)::

        r = sigmoid(W_r p + U_r e + b_r)
        z = sigmoid(W_z p + U_z e + b_z)
        g = tanh(V_left (r * h_left) + V_right (r * h_right) + U_g e + b_g)
        h = p + z * (g - p)

    A node's state is h alone (``d_state = d_hidden``).

    Args:
        d_hidden: size of h.
        d_tracker: size of the Tracker's h, or None without a Tracker.
    """

    def __init__(self, d_hidden: int, d_tracker: int | None = None) -> None:
        super().__init__()
        self.d_hidden = self.d_state = d_hidden
        self.gates = nn.Linear(d_hidden + (d_tracker or 0), 2 * d_hidden)  # r, z from [p; e]
        self.candidate = nn.Linear(2 * d_hidden + (d_tracker or 0), d_hidden)  # g from [r h_l; r h_r; e]

    def forward(self, left: Tensor, right: Tensor, tracking: Tensor | None = None) -> Tensor:
        """left, right (M, d_hidden), tracking (M, d_tracker) or None -> (M, d_hidden)."""
        p = left + right
        extra = () if tracking is None else (tracking,)
        r, z = torch.sigmoid(self.gates(torch.cat((p, *extra), dim=1))).chunk(2, dim=1)
        g = torch.tanh(self.candidate(torch.cat((r * left, r * right, *extra), dim=1)))
        return p + z * (g - p)


class TanhReduce(nn.Module):
    """The plain recursive network (Socher et al. 2011; nyu-mll/spinn's ``tanh``)::

        h = tanh(W [h_left; h_right; e] + b)

    e the Tracker's h (left out without a Tracker). A node's state is h alone (``d_state = d_hidden``).

    Args:
        d_hidden: size of h.
        d_tracker: size of the Tracker's h, or None without a Tracker.
    """

    def __init__(self, d_hidden: int, d_tracker: int | None = None) -> None:
        super().__init__()
        self.d_hidden = self.d_state = d_hidden
        self.layer = nn.Linear(2 * d_hidden + (d_tracker or 0), d_hidden)

    def forward(self, left: Tensor, right: Tensor, tracking: Tensor | None = None) -> Tensor:
        """left, right (M, d_hidden), tracking (M, d_tracker) or None -> (M, d_hidden)."""
        x = (left, right) if tracking is None else (left, right, tracking)
        return torch.tanh(self.layer(torch.cat(x, dim=1)))


#: The compositions by name; TreeLSTM (`Reduce`) is the default and the one the engine runs.
COMPOSITIONS: dict[str, type[nn.Module]] = {"treelstm": Reduce, "treegru": TreeGRU, "tanh": TanhReduce}


def make_composition(composition: str | nn.Module, d_hidden: int, d_tracker: int | None) -> nn.Module:
    """The composition named ``composition`` (one of `COMPOSITIONS`), or the given module as it is.

    Raises:
        SpinnError: an unknown name, or a module without a ``d_state`` attribute.
    """
    if isinstance(composition, str):
        if composition not in COMPOSITIONS:
            names = ", ".join(COMPOSITIONS)
            raise SpinnError(f"composition {composition!r} is unknown, expected one of {names} or a module")
        return COMPOSITIONS[composition](d_hidden, d_tracker)
    if not isinstance(getattr(composition, "d_state", None), int):
        raise SpinnError(
            f"composition {type(composition).__qualname__} has no int d_state: a composition module says "
            "how wide its node states are (2 d_hidden for [h; c], d_hidden for h alone)"
        )
    return composition
