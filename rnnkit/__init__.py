"""rnnkit: recurrent neural networks as the textbooks define them, fast on CPU."""

from rnnkit.cells import GRUCell, LSTMCell, LSTMState, RNNCell
from rnnkit.driver import detach_state
from rnnkit.dropout import Dropout
from rnnkit.heads import OutputLayer
from rnnkit.io import load
from rnnkit.kernels import last_backend
from rnnkit.layers import GRU, LSTM, RNN, RecurrentLayer

__version__ = "0.1.0"

__all__ = [
    "Dropout",
    "GRU",
    "GRUCell",
    "LSTM",
    "LSTMCell",
    "LSTMState",
    "OutputLayer",
    "RNN",
    "RNNCell",
    "RecurrentLayer",
    "detach_state",
    "load",
    "last_backend",
]
