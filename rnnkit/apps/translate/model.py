"""Encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015), greedy and beam search.

Encoder: embedding -> bidirectional rnnkit ``GRU``/``LSTM``/``RNN`` over the source (with
``lengths``) -> memory ``m_j = [→h_j; ←h_j]`` of size ``M = 2H``. The decoder's first state is
``s_0 = tanh(W_b [→h_S; ←h_1])`` (and likewise ``c_0`` for the LSTM).

Decoder, one step ``t`` (Luong's architecture with input feeding):

    x_t      = [E y_{t-1}; a~_{t-1}]                       embedding + the last attentional vector
    s_t      = cell(x_t, s_{t-1})                           an rnnkit GRUCell / LSTMCell / RNNCell
    e_tj     = score(s_t, m_j)                              j over valid source positions only
    alpha_tj = softmax_j(e_tj)                              exactly 0 on padding
    c_t      = sum_j alpha_tj m_j
    a~_t     = tanh(W_c [c_t; s_t])
    p(y_t)   = softmax(W_hy a~_t + b_y)                     the seeds' output layer

Scores: ``additive`` (Bahdanau) ``v^T tanh(W_q s_t + W_k m_j)``; ``general`` (Luong)
``s_t^T W_a m_j``; ``dot`` (Luong) ``s_t^T (→h_j + ←h_j)``: the two directions are summed so
that sizes match.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.cells import GRUCell, LSTMCell, LSTMState, RNNCell
from rnnkit.data.parallel import EOS, Vocab, pad_batch
from rnnkit.heads import OutputLayer
from rnnkit.layers import GRU, LSTM, RNN

CELLS = {"gru": (GRU, GRUCell), "lstm": (LSTM, LSTMCell), "rnn": (RNN, RNNCell)}
ATTENTIONS = ("additive", "general", "dot")
BOS_ID, EOS_ID = 2, 3


@dataclass
class TranslatorConfig:
    source_vocab: list[str]
    target_vocab: list[str]
    units: str = "word"
    cell: str = "gru"
    embedding: int = 128
    hidden: int = 256
    layers: int = 1
    attention: str = "additive"
    dropout: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)  # how to rebuild the dataset (for evaluate)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        for name in ("embedding", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class Attention(nn.Module):
    """``alpha = softmax_j score(s, m_j)`` over valid positions, and ``c = sum_j alpha_j m_j``.

    ``keys(memory)`` precomputes the source side once per sentence; ``forward(query (N, D),
    keys, memory (N, S, M), mask (N, S) bool)`` returns ``(context (N, M), weights (N, S))``.
    """

    def __init__(self, kind: str, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "additive":
            self.key = nn.Linear(memory_size, query_size, bias=False)
            self.query = nn.Linear(query_size, query_size, bias=True)
            self.v = nn.Linear(query_size, 1, bias=False)
        elif kind == "general":
            self.key = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        if self.kind == "dot":
            half = memory.shape[-1] // 2
            return memory[..., :half] + memory[..., half:]
        return self.key(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "additive":
            scores = self.v(torch.tanh(keys + self.query(query).unsqueeze(1))).squeeze(-1)
        else:
            scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, -math.inf), dim=-1)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


@dataclass
class Encoded:
    """The encoder's output for a batch (expanded ``beam`` times for beam search)."""

    memory: Tensor  # (N, S, M)
    keys: Tensor  # (N, S, D or attention size)
    mask: Tensor  # (N, S) bool: valid source positions
    state: Any  # the decoder's first state

    def repeat(self, times: int) -> Encoded:
        def rep(t: Tensor) -> Tensor:
            return t.repeat_interleave(times, dim=0)

        state = LSTMState(*map(rep, self.state)) if isinstance(self.state, tuple) else rep(self.state)
        return Encoded(rep(self.memory), rep(self.keys), rep(self.mask), state)


class Seq2Seq(nn.Module):
    """The encoder-decoder of the module docstring. Token ids: 0 pad, 1 unknown, 2 ``<s>``, 3 ``</s>``."""

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__()
        self.config = config
        layer_type, cell_type = CELLS[config.cell]
        hidden, embedding = config.hidden, config.embedding
        self.source_embedding = nn.Embedding(len(config.source_vocab) + 4, embedding, padding_idx=0)
        self.target_embedding = nn.Embedding(len(config.target_vocab) + 4, embedding, padding_idx=0)
        self.encoder = layer_type(
            embedding, hidden, num_layers=config.layers, batch_first=True, bidirectional=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )  # fmt: skip
        self.bridge = nn.Linear(2 * hidden, hidden)
        self.bridge_cell = nn.Linear(2 * hidden, hidden) if config.cell == "lstm" else None
        self.decoder = cell_type(embedding + hidden, hidden)
        self.attention = Attention(config.attention, hidden, 2 * hidden)
        self.combine = nn.Linear(3 * hidden, hidden, bias=False)
        self.head = OutputLayer(hidden, len(config.target_vocab) + 4)
        self.drop = nn.Dropout(config.dropout)

    # -- encoder -----------------------------------------------------------------------------------
    def encode(self, source: Tensor, lengths: Tensor) -> Encoded:
        """``source (N, S)`` padded ids, ``lengths (N,)``."""
        memory, final = self.encoder(self.drop(self.source_embedding(source)), lengths=lengths)

        def last_layer(h_n: Tensor) -> Tensor:  # (L*2, N, H) -> [forward; backward] of the top layer
            return torch.cat([h_n[-2], h_n[-1]], dim=-1)

        if isinstance(final, tuple):
            state: Any = LSTMState(
                torch.tanh(self.bridge(last_layer(final.h))), torch.tanh(self.bridge_cell(last_layer(final.c)))
            )
        else:
            state = torch.tanh(self.bridge(last_layer(final)))
        mask = torch.arange(source.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
        return Encoded(memory, self.attention.keys(memory), mask, state)

    # -- decoder -----------------------------------------------------------------------------------
    def initial_feed(self, encoded: Encoded) -> Tensor:
        return encoded.memory.new_zeros(encoded.memory.shape[0], self.config.hidden)

    def attend(self, embedded: Tensor, state: Any, feed: Tensor, encoded: Encoded) -> tuple[Any, Tensor, Tensor]:
        """The step's recurrence and attention: ``(state s_t, a~_t, alpha_t (N, S))``."""
        s, state = self.decoder(torch.cat([embedded, feed], dim=-1), state)
        context, weights = self.attention(s, encoded.keys, encoded.memory, encoded.mask)
        return state, torch.tanh(self.combine(torch.cat([context, s], dim=-1))), weights

    def decode_step(self, previous: Tensor, state: Any, feed: Tensor, encoded: Encoded) -> tuple[Tensor, Any, Tensor, Tensor]:
        """One step: ``previous (N,)`` ids -> ``(logits (N, V), state, a~_t, alpha_t (N, S))``."""
        state, attentional, weights = self.attend(self.drop(self.target_embedding(previous)), state, feed, encoded)
        return self.head.logits(self.drop(attentional)), state, attentional, weights

    def forward(self, source: Tensor, lengths: Tensor, target_in: Tensor, teacher_forcing: float = 1.0) -> tuple[Tensor, Tensor]:
        """Logits ``(N, T, V)`` and attention ``(N, T, S)`` for ``target_in`` (``<s> y_1 ...``).

        With ``teacher_forcing < 1`` each example's next input is, with that probability, the
        true token, otherwise the model's own argmax (scheduled sampling, Bengio et al. 2015).
        The output layer runs once over all steps (one large GEMM rather than T small ones).
        """
        encoded = self.encode(source, lengths)
        state, feed = encoded.state, self.initial_feed(encoded)
        forced = teacher_forcing >= 1.0
        true_inputs = self.drop(self.target_embedding(target_in)).unbind(1) if forced else None
        previous = target_in[:, 0]
        attentionals, all_weights = [], []
        for t in range(target_in.shape[1]):
            embedded = true_inputs[t] if forced else self.drop(self.target_embedding(previous))
            state, feed, weights = self.attend(embedded, state, feed, encoded)
            attentionals.append(feed)
            all_weights.append(weights)
            if not forced and t + 1 < target_in.shape[1]:
                previous = target_in[:, t + 1]
                own = torch.rand(previous.shape) >= teacher_forcing
                with torch.no_grad():
                    guess = self.head.logits(feed).argmax(-1)
                previous = torch.where(own & (previous != 0), guess, previous)
        logits = self.head.logits(self.drop(torch.stack(attentionals, 1)))
        return logits, torch.stack(all_weights, 1)

    # -- search ------------------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, source: Tensor, lengths: Tensor, max_length: int) -> list[list[int]]:
        """The argmax at every step, for a batch; each output stops at its ``</s>``."""
        encoded = self.encode(source, lengths)
        state, feed = encoded.state, self.initial_feed(encoded)
        previous = torch.full((source.shape[0],), BOS_ID)
        done = torch.zeros(source.shape[0], dtype=torch.bool)
        outputs: list[Tensor] = []
        for _ in range(max_length):
            logits, state, feed, _ = self.decode_step(previous, state, feed, encoded)
            previous = logits.argmax(-1).masked_fill(done, EOS_ID)
            outputs.append(previous)
            done |= previous == EOS_ID
            if done.all():
                break
        return [_until_eos(row) for row in torch.stack(outputs, 1).tolist()]

    @torch.no_grad()
    def beam_search(
        self, source: Tensor, lengths: Tensor, max_length: int, beam: int, length_penalty: float = 0.6
    ) -> list[list[int]]:
        """Beam search for a batch: ``beam`` hypotheses per sentence ranked by total log-prob;
        a hypothesis that emits ``</s>`` is kept as it is. The final choice divides by the GNMT
        length penalty ``((5 + |y|) / 6) ** length_penalty``. ``beam=1`` is greedy search."""
        n, k = source.shape[0], beam
        encoded = self.encode(source, lengths).repeat(k)
        state, feed = encoded.state, self.initial_feed(encoded)
        scores = torch.full((n, k), -math.inf)
        scores[:, 0] = 0.0  # one live hypothesis per sentence at the start
        previous = torch.full((n * k,), BOS_ID)
        done = torch.zeros(n * k, dtype=torch.bool)
        history = torch.zeros(n * k, 0, dtype=torch.long)
        lengths_out = torch.zeros(n * k)
        for _ in range(max_length):
            logits, state, feed, _ = self.decode_step(previous, state, feed, encoded)
            logp = torch.log_softmax(logits.float(), dim=-1)
            logp[done] = -math.inf
            logp[done, EOS_ID] = 0.0  # finished: carried over unchanged
            vocab = logp.shape[-1]
            candidates = (scores.view(n * k, 1) + logp).view(n, k * vocab)
            scores, flat = candidates.topk(k, dim=-1)
            origin = (flat // vocab + torch.arange(n).unsqueeze(1) * k).view(-1)
            token = (flat % vocab).view(-1)
            state = LSTMState(*(t[origin] for t in state)) if isinstance(state, tuple) else state[origin]
            feed, done, lengths_out = feed[origin], done[origin], lengths_out[origin]
            history = torch.cat([history[origin], token.unsqueeze(1)], dim=1)
            lengths_out = lengths_out + (~done).float()
            done = done | (token == EOS_ID)
            previous = token
            if done.all():
                break
        penalty = ((5.0 + lengths_out) / 6.0) ** length_penalty
        best = (scores.view(-1) / penalty).view(n, k).argmax(-1) + torch.arange(n) * k
        return [_until_eos(row) for row in history[best].tolist()]


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids


class Translator:
    """A trained model with its vocabularies: ``translate``, ``attention``, ``evaluate``.

    >>> translator = rnnkit.load("runs/translate")
    >>> translator.translate(["three hundred and ninety-seven"], beam=5)
    ['trois cent quatre-vingt-dix-sept']
    """

    def __init__(self, model: Seq2Seq) -> None:
        self.model = model.eval()
        self.config = model.config
        self.source_vocab = Vocab(model.config.source_vocab, model.config.units)
        self.target_vocab = Vocab(model.config.target_vocab, model.config.units)

    def encode_sources(self, texts: list[str], allow_unknown: bool = False) -> tuple[Tensor, Tensor]:
        """Padded ids and lengths. An empty text is an error, and so is a piece outside the
        vocabulary unless ``allow_unknown`` (then it becomes ``<unk>``)."""
        ids = []
        for text in texts:
            if not text.strip():
                raise ValueError("the source text is empty")
            if not allow_unknown and (unknown := self.source_vocab.unknown_in(text)):
                kind = "characters" if self.config.units == "char" else "words"
                shown = ", ".join(repr(p.strip() or p) for p in unknown[:10])
                raise ValueError(f"the source has {kind} outside the model's vocabulary: {shown}")
            ids.append(self.source_vocab.encode(text))
        return pad_batch(ids)

    def translate(
        self,
        texts: str | list[str],
        beam: int = 1,
        length_penalty: float = 0.6,
        max_length: int | None = None,
        batch_size: int = 256,
        allow_unknown: bool = False,
    ) -> list[str]:
        """Translate a text or a list of texts; ``beam=1`` is greedy. Source pieces the model
        never saw are an error, or ``<unk>`` with ``allow_unknown`` (evaluation uses it)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
            raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
        out: list[str] = []
        for start in range(0, len(texts), batch_size):
            source, lengths = self.encode_sources(texts[start : start + batch_size], allow_unknown)
            limit = max_length or 2 * int(lengths.max()) + 10
            if beam == 1:
                ids = self.model.greedy(source, lengths, limit)
            else:
                ids = self.model.beam_search(source, lengths, limit, beam, length_penalty)
            out.extend(self.target_vocab.decode(row) for row in ids)
        return out

    @torch.no_grad()
    def attention(self, source: str, output: str, allow_unknown: bool = False) -> tuple[list[str], list[str], Tensor]:
        """Source pieces, output pieces and the attention ``(len(output)+1, len(source)+1)`` the
        model gives while producing ``output`` (``</s>`` included on both sides)."""
        src, lengths = self.encode_sources([source], allow_unknown)
        produced = self.target_vocab.encode(output)  # y_1 ... y_T </s>
        _, weights = self.model(src, lengths, torch.tensor([[BOS_ID, *produced[:-1]]]))

        def names(vocab: Vocab, ids: list[int]) -> list[str]:
            return [EOS if i == EOS_ID else vocab.items[i] for i in ids]

        return names(self.source_vocab, src[0].tolist()), names(self.target_vocab, produced), weights[0]

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)


def collate(pairs: list[tuple[list[int], list[int]]]) -> tuple[tuple[Tensor, Tensor, Tensor], int]:
    """Encoded ``(source ids + </s>, target ids + </s>)`` pairs -> ``(source, lengths, target)``
    with ``target = <s> y_1 ... y_T </s>`` padded; tokens counted on the target side."""
    source, lengths = pad_batch([s for s, _ in pairs])
    target, _ = pad_batch([[BOS_ID, *t] for _, t in pairs])
    return (source, lengths, target), sum(len(t) for _, t in pairs)
