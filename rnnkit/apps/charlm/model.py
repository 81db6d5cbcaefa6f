"""The character language model: embedding -> multi-layer rnnkit RNN -> softmax output layer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from rnnkit.cells.base import State
from rnnkit.data.text import UNKNOWN, CharVocab
from rnnkit.dropout import Dropout
from rnnkit.heads import OutputLayer
from rnnkit.layers import GRU, LSTM, RNN
from rnnkit.sampling import check_sampling, next_token

CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}


@dataclass
class CharLMConfig:
    vocab_size: int
    cell: str = "lstm"
    embedding: int = 64
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    weight_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")


class CharLM(nn.Module):
    """``tokens (N, T) -> logits (N, T, V)``: embedding, ``layers`` of ``cell`` with dropout
    between them and before the output layer ``y_t = softmax(W_hy h_t + b_y)``, and
    ``weight_dropout`` (DropConnect) on the recurrent weights ``W_hh``."""

    def __init__(self, config: CharLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embedding)
        between = config.dropout if config.layers > 1 else 0.0
        self.rnn = CELLS[config.cell](
            config.embedding, config.hidden, config.layers, batch_first=True, dropout=between,
            weight_dropout=config.weight_dropout,
        )  # fmt: skip
        self.drop = Dropout(config.dropout)
        self.head = OutputLayer(config.hidden, config.vocab_size, activation="softmax")

    def forward(self, tokens: Tensor, state: State = None) -> tuple[Tensor, State]:
        out, state = self.rnn(self.embed(tokens), state)
        return self.head.logits(self.drop(out)), state

    def describe(self) -> dict:
        return asdict(self.config)


class LanguageModel:
    """A trained char-LM with its vocabulary: generation and evaluation (what ``rnnkit.load``
    returns for a ``charlm`` model directory)."""

    #: Fed before the prime: a model trained with carried state rarely sees a zero state, and a
    #: blank line is where speeches start, so "ROMEO:" after it reads as a speaker's name.
    WARMUP = "\n\n"

    def __init__(self, model: CharLM, vocab: CharVocab) -> None:
        self.model, self.vocab = model.eval(), vocab

    def encode_prime(self, prime: str, allow_unknown: bool = False) -> Tensor:
        unknown = self.vocab.unknown_in(prime)
        if unknown and not allow_unknown:
            shown = "".join(unknown)
            raise ValueError(f"prime has characters the model never saw: {shown!r} (allow_unknown maps them to {UNKNOWN!r})")
        return self.vocab.encode(prime)

    @torch.no_grad()
    def stream(
        self,
        prime: str = "",
        length: int = 500,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        warmup: str | None = None,
        allow_unknown: bool = False,
    ) -> Iterator[str]:
        """Yield ``length`` generated characters one at a time (the prime is not repeated)."""
        check_sampling(temperature, top_k, top_p)
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be an integer >= 0, got {length!r}")
        context = (self.WARMUP if warmup is None else warmup) + prime
        if not context:
            raise ValueError("give a prime or a warm-up text: generation needs a first character")
        tokens = self.encode_prime(context, allow_unknown)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        logits, state = self.model(tokens.unsqueeze(0))  # the whole context in one pass
        logits = logits[:, -1]
        for _ in range(length):
            token = next_token(logits, temperature, top_k, top_p, generator)
            yield self.vocab.chars[token.item()]
            logits, state = self.model(token.view(1, 1), state)
            logits = logits[:, -1]

    def generate(self, prime: str = "", length: int = 500, **options) -> str:
        """The generated text after ``prime`` (see :meth:`stream` for the options)."""
        return "".join(self.stream(prime, length, **options))

    @torch.no_grad()
    def evaluate(self, text: str, streams: int = 16, chunk: int = 200) -> dict[str, float]:
        """Mean cross-entropy over ``text`` by a stateful pass (``streams`` contiguous streams,
        state carried across chunks, as in training): nats/char, bits/char, perplexity."""
        return evaluate_stream(self.model, self.vocab.encode(text), streams, chunk)


@torch.no_grad()
def evaluate_stream(model: CharLM, tokens: Tensor, streams: int = 16, chunk: int = 200) -> dict[str, float]:
    import math

    from rnnkit.train.data import StreamBatches

    streams = max(1, min(streams, (tokens.numel() - 1) // chunk))
    data = StreamBatches(tokens, streams, chunk)
    total, count, state = 0.0, 0, None
    was_training = model.training
    model.eval()
    for _ in range(data.chunks):
        inputs, targets = next(data).data
        logits, state = model(inputs, state)
        total += nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    model.train(was_training)
    nats = total / count
    return {"val_loss": nats, "bits_per_char": nats / math.log(2), "perplexity": math.exp(nats), "chars": count}
