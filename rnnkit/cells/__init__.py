"""Recurrent cells: one step, ``cell(x_t, state) -> (h_t, new_state)``."""

from rnnkit.cells.base import Cell, Recurrence, Weights, map_state
from rnnkit.cells.gru import GRUCell, GRURecurrence
from rnnkit.cells.lstm import LSTMCell, LSTMRecurrence, LSTMState
from rnnkit.cells.rnn import RNNCell, RNNRecurrence

__all__ = [
    "Cell",
    "GRUCell",
    "GRURecurrence",
    "LSTMCell",
    "LSTMRecurrence",
    "LSTMState",
    "RNNCell",
    "RNNRecurrence",
    "Recurrence",
    "Weights",
    "map_state",
]
