"""The forecaster: an rnnkit encoder read at every step, and a multi-horizon quantile head.

At every origin ``t`` (MQ-RNN's "forking sequences", Wen et al. 2017)::

    s_t            = encoder(x_t, s_{t-1})        rnnkit LSTM / GRU / RNN layers, h_t its top output
    u_k            = [a_{t+k}, l_{t+k}, z_t]      what is known of step k: covariates, seasonal lags, the level
    direct:  c_k   = relu(W_c h_t + b_c)[k]       a context per step (MQ-RNN's global MLP)
             q_k   = MLP([c_k, u_k]) + V u_k      one local MLP shared by all steps, plus a linear skip
    rnn:     d_k   = decoder(u_k, d_{k-1}),  d_0 = h_t;    q_k = W d_k + b + V u_k
    yhat_{t+k}(tau) = z_t + d * sort_tau(q_k)      quantiles tau, per target; d the scale of one-step changes

``a`` are the known-ahead covariates, ``l`` the seasonal-lag differences (see
:mod:`~rnnkit.apps.forecast.features`); with the level ``z_t`` in ``u_k``, the linear skip alone
can express mean reversion to a seasonal profile, as ARIMA with Fourier regressors does.
Sorting the quantile outputs keeps them from crossing.
Trained with the pinball loss ``rho_tau(u) = max(tau u, (tau - 1) u)``, ``u = y - yhat``,
averaged over quantiles, steps, targets and origins.

Because the encoder state at ``t`` depends on ``x_{<=t}`` only, one pass over a series gives the
forecast of every origin (the backtest), and a stream of new observations needs one encoder step
each (:class:`~rnnkit.apps.forecast.predictor.StreamingForecaster`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.cells.base import State, map_state
from rnnkit.layers import GRU, LSTM, RNN

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
DECODERS = ("direct", "rnn")
CONTEXT = 16  # features of the per-step context of the direct head
MIN_SCORES = 100  # conformal calibration needs at least this many known outcomes


@dataclass
class ForecasterConfig:
    """Sizes of the network. ``inputs``: encoder features per step; ``ahead``: known-ahead
    features per future step; ``lagged``: seasonal-lag features per future step."""

    targets: int
    inputs: int
    ahead: int
    lagged: int
    horizon: int
    quantiles: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    cell: str = "lstm"
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0
    decoder: str = "direct"
    head_hidden: int = 128
    step_scale: list[float] | None = None  # d per target (the Scaler's step_std); None = 1
    members: int = 1  # ensemble size

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"--decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if not self.quantiles or any(not 0 < q < 1 for q in self.quantiles) or len(set(self.quantiles)) != len(self.quantiles):
            raise ValueError(f"--quantiles must be distinct levels in (0, 1), got {self.quantiles}")
        self.quantiles = sorted(float(q) for q in self.quantiles)
        for name in ("hidden", "layers", "head_hidden", "horizon", "targets", "members"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")


class ForecastNet(nn.Module):
    """One network: ``encode(inputs (B, T, I), state) -> (hidden (B, T, hidden), state)`` and
    ``head_forward(hidden (..., hidden), ahead (..., H, A), lagged (..., H, Lg), anchor (..., n))
    -> quantiles (..., H, n, Q)`` in scaled units."""

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = c = config
        self.encoder = CELLS[c.cell](c.inputs, c.hidden, c.layers, batch_first=True, dropout=c.dropout if c.layers > 1 else 0.0)
        self.dropout = nn.Dropout(c.dropout)
        outputs, known = c.targets * len(c.quantiles), c.ahead + c.lagged + c.targets
        if c.decoder == "direct":
            self.context = nn.Sequential(nn.Linear(c.hidden, c.horizon * CONTEXT), nn.ReLU())
            self.head = nn.Sequential(nn.Linear(CONTEXT + known, c.head_hidden), nn.ReLU(), nn.Linear(c.head_hidden, outputs))
        else:
            self.decoder = CELLS[c.cell](known, c.hidden, 1, batch_first=True)
            self.head = nn.Linear(c.hidden, outputs)
        self.skip = nn.Linear(known, outputs, bias=False)
        self.register_buffer("step_scale", torch.tensor(c.step_scale or [1.0] * c.targets), persistent=False)

    def encode(self, inputs: Tensor, state: State = None) -> tuple[Tensor, State]:
        return self.encoder(inputs, state)

    def head_forward(self, hidden: Tensor, ahead: Tensor, lagged: Tensor, anchor: Tensor) -> Tensor:
        c = self.config
        hidden = self.dropout(hidden)
        level = anchor.unsqueeze(-2).expand(*lagged.shape[:-1], anchor.shape[-1])
        known = torch.cat([ahead, lagged, level], dim=-1)  # (..., H, A + Lg + n)
        if c.decoder == "direct":
            context = self.context(hidden).unflatten(-1, (c.horizon, CONTEXT))
            out = self.head(torch.cat([context, known], dim=-1))
        else:
            h0 = hidden.reshape(1, -1, c.hidden)
            state: Any = (h0, torch.zeros_like(h0)) if c.cell == "lstm" else h0
            steps, _ = self.decoder(known.reshape(-1, c.horizon, known.shape[-1]), state)
            out = self.head(steps).reshape(*known.shape[:-1], -1)
        out = (out + self.skip(known)).unflatten(-1, (c.targets, len(c.quantiles)))
        return anchor[..., None, :, None] + self.step_scale[:, None] * out.sort(dim=-1).values


class Forecaster(nn.Module):
    """An ensemble of ``config.members`` independently initialised :class:`ForecastNet` (one by
    default), trained side by side on the same batches, each with its own loss; its forecast
    averages the members' quantiles (Vincentisation), which steadies small-data forecasts.

    ``encode(inputs (B, T, I), state) -> (hidden (K, B, T, hidden), state)``: the members' states
    are stacked along dim 0 (``(K*L, B, hidden)``, an ``(h, c)`` pair for the LSTM), so the trainer
    carries them as one. ``head_forward(...) -> (K, ..., H, n, Q)``; :meth:`combine` averages.
    """

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        self.members = nn.ModuleList(ForecastNet(config) for _ in range(config.members))

    def encode(self, inputs: Tensor, state: State = None) -> tuple[Tensor, State]:
        layers = self.config.layers
        parts = [None] * len(self.members) if state is None else [
            map_state(lambda s, i=i: s[i * layers : (i + 1) * layers], state) for i in range(len(self.members))
        ]  # fmt: skip
        outputs = [member.encode(inputs, part) for member, part in zip(self.members, parts)]
        hidden = torch.stack([h for h, _ in outputs])
        return hidden, map_state(lambda *states: torch.cat(states), *(s for _, s in outputs))

    def head_forward(self, hidden: Tensor, ahead: Tensor, lagged: Tensor, anchor: Tensor) -> Tensor:
        return torch.stack([m.head_forward(h, ahead, lagged, anchor) for m, h in zip(self.members, hidden)])

    @staticmethod
    def combine(forecasts: Tensor) -> Tensor:
        """``(K, ..., Q)`` member quantiles -> ``(..., Q)``, their average."""
        return forecasts.mean(dim=0)

    def forward(self, inputs: Tensor, ahead: Tensor, lagged: Tensor, anchor: Tensor, state: State = None) -> tuple[Tensor, State]:
        """Every member's quantiles ``(K, B, T, H, n, Q)`` (training scores each) and the state."""
        hidden, state = self.encode(inputs, state)
        return self.head_forward(hidden, ahead, lagged, anchor), state

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)


def pinball_loss(forecast: Tensor, target: Tensor, mask: Tensor, quantiles: list[float]) -> Tensor:
    """Mean pinball loss of ``forecast (..., H, n, Q)`` (or ``(K, ...)``, every ensemble member)
    against ``target (..., H, n)`` over the unmasked ``mask (..., H)`` steps:
    ``rho_tau(u) = max(tau u, (tau - 1) u)``, ``u = y - q``."""
    tau = torch.tensor(quantiles, dtype=forecast.dtype)
    error = target.unsqueeze(-1) - forecast
    loss = torch.maximum(tau * error, (tau - 1) * error)
    weights = mask[..., None, None].to(loss.dtype).expand_as(loss)
    return (loss * weights).sum() / weights.sum().clamp_min(1)


def quantile_pairs(quantiles: list[float]) -> list[tuple[int, int]]:
    """Index pairs ``(tau, 1 - tau)``, ``tau < 0.5``: the central intervals."""
    pairs = []
    for low, tau in enumerate(quantiles):
        high = next((j for j, other in enumerate(quantiles) if abs(other - (1 - tau)) < 1e-9), None)
        if tau < 0.5 and high is not None:
            pairs.append((low, high))
    return pairs


def conformal_widths(forecast: Tensor, target: Tensor, known: Tensor, quantiles: list[float]) -> Tensor | None:
    """Split-conformal calibration of each central interval ``[q_tau, q_(1-tau)]``
    (conformalized quantile regression, Romano et al. 2019, with scores normalised by the
    interval's own width, so the correction scales with the predicted uncertainty).

    Over the ``known (O, H)`` forecasts of ``forecast (O, H, n, Q)`` (steps whose outcome
    ``target (O, H, n)`` is known) the score is ``E = max(q_tau - y, y - q_(1-tau)) / (q_(1-tau) -
    q_tau)``; its ``ceil((m + 1)(1 - alpha)) / m`` empirical quantile ``w`` (``alpha = 2 tau``,
    ``m`` scores, pooled over steps and targets) widens the interval by ``w`` times its width on
    each side (narrows it if ``w < 0``). Returns ``(Q,)``: ``-w`` at the lower level, ``+w`` at the
    upper, 0 elsewhere (apply with :func:`calibrate`), or None with fewer than
    :data:`MIN_SCORES` scores.
    """
    widths = torch.zeros(len(quantiles), dtype=forecast.dtype)
    known = known.bool()
    if int(known.sum()) * target.shape[-1] < MIN_SCORES:
        return None
    for low, high in quantile_pairs(quantiles):
        span = (forecast[..., high] - forecast[..., low]).clamp_min(1e-6)
        scores = (torch.maximum(forecast[..., low] - target, target - forecast[..., high]) / span)[known].flatten()
        level = min(1.0, math.ceil((len(scores) + 1) * (1 - 2 * quantiles[low])) / len(scores))
        w = torch.quantile(scores, level).clamp_min(-0.45)  # never turn the interval inside out
        widths[low], widths[high] = -w, w
    return widths


def calibrate(forecast: Tensor, widths: Tensor, quantiles: list[float]) -> Tensor:
    """Quantiles ``(..., H, n, Q)`` with the :func:`conformal_widths` applied."""
    out = forecast.clone()
    for low, high in quantile_pairs(quantiles):
        span = forecast[..., high] - forecast[..., low]
        out[..., low] = forecast[..., low] + widths[..., low] * span
        out[..., high] = forecast[..., high] + widths[..., high] * span
    return out.sort(dim=-1).values
