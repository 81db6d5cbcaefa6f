"""Where a trained char-LM loses its held-out nats: speaker-name lines against the verse and prose.

Scores the whole held-out split of the model's data in one stateful stream (state carried across
chunks of 2,000 characters, as in training) and splits the per-character loss by kind: the
characters of speaker lines (``NAME:`` alone on a line; the first letter, the rest of the name),
and everything else. Names are also split by whether the same speaker line appeared in the 500
characters before: a model that copies from its context finds those cheap.

    python benchmarks/charlm_breakdown.py --model runs/charlm [--out breakdown.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.nn import functional as F

import rnnkit
from rnnkit.apps.charlm import load_text
from rnnkit.apps.charlm.model import LanguageModel
from rnnkit.data.speakers import SPEAKER_LINE

RECENT = 500


@torch.no_grad()
def per_char_loss(lm: LanguageModel, text: str, chunk: int = 2000) -> torch.Tensor:
    """Loss (nats) of predicting ``text[i + 1]`` from ``text[: i + 1]``, for every i."""
    tokens, state, losses = lm.vocab.encode(text), None, []
    for start in range(0, tokens.numel() - 1, chunk):
        piece = tokens[start : start + chunk + 1]
        logits, state = lm.model(piece[:-1].unsqueeze(0), state)
        losses.append(F.cross_entropy(logits[0], piece[1:], reduction="none"))
    return torch.cat(losses)


def breakdown(losses: torch.Tensor, targets: str) -> dict[str, dict[str, float]]:
    """Mean loss, share of characters and share of the total loss per kind of target character."""
    speaker_lines, first, rest, recent = (torch.zeros(len(targets), dtype=torch.bool) for _ in range(4))
    last_seen: dict[str, int] = {}  # speaker line -> where it last started
    for match in SPEAKER_LINE.finditer(targets):
        start, end = match.start(), match.end() - 1  # the name, without its colon
        speaker_lines[start : end + 2] = True  # with the colon and the line break
        first[start], rest[start + 1 : end] = True, True
        if start - last_seen.get(match.group(1), -RECENT - 1) <= RECENT:
            recent[start + 1 : end] = True
        last_seen[match.group(1)] = start
    kinds = {
        "all": torch.ones(len(targets), dtype=torch.bool),
        "verse and prose": ~speaker_lines,
        "speaker lines": speaker_lines,
        "name, first letter": first,
        "name, other letters": rest,
        f"name, other letters, seen in the previous {RECENT} characters": rest & recent,
        f"name, other letters, not seen in the previous {RECENT} characters": rest & ~recent,
    }
    total = losses.sum().item()
    return {
        kind: {
            "nats_per_char": losses[mask].mean().item(),
            "share_of_chars": mask.float().mean().item(),
            "share_of_loss": losses[mask].sum().item() / total,
        }
        for kind, mask in kinds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a charlm model directory")
    parser.add_argument("--out", help="also write the breakdown to this JSON file")
    args = parser.parse_args()
    lm = rnnkit.load(args.model)
    _, valid = load_text(json.loads((Path(args.model) / "config.json").read_text())["model"].get("data"))
    result = breakdown(per_char_loss(lm, valid), valid[1:])
    print(f"{'characters':<62} {'nats/char':>9} {'chars':>7} {'loss':>7}")
    for kind, row in result.items():
        print(f"{kind:<62} {row['nats_per_char']:>9.4f} {row['share_of_chars']:>7.1%} {row['share_of_loss']:>7.1%}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"model": args.model, "kinds": result}, handle, indent=1)


if __name__ == "__main__":
    main()
