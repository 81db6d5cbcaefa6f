"""Speaker renaming (rnnkit.data.speakers): only the names change, consistently within an epoch,
differently between epochs, reproducibly; and the stream source reads each epoch's text."""

import pytest
import torch

from rnnkit.data.speakers import SpeakerRenaming
from rnnkit.data.text import CharVocab
from rnnkit.train import StreamBatches

SCENE = (
    "ROMEO:\nIf I profane with my unworthiest hand\n\nJULIET:\nGood pilgrim, Romeo, you do wrong\n\n"
    "ROMEO:\nHave not saints lips?\n\nBALTHASAR:\nMadam, your mother craves a word.\n\n"
    "TYBALT:\nThis, by his voice, should be a Montague.\n\nCAPULET:\nWhy, how now, kinsman!\n\n"
    "HAMLET:\nTo be, or not to be.\n\nHORATIO:\nHail to your lordship!\n\nOPHELIA:\nMy lord.\n\n"
    "ROMEO:\nAy, pilgrim, lips that they must use in prayer.\n"
)


def renaming(text=SCENE, seed=0):
    vocab = CharVocab.from_text(text)
    return vocab, SpeakerRenaming(text, vocab.encode(text), seed)


def test_only_speaker_names_change_and_each_name_is_renamed_everywhere_alike():
    vocab, rename = renaming()
    assert rename.names == ["ROMEO", "JULIET", "BALTHASAR", "TYBALT", "CAPULET", "HAMLET", "HORATIO", "OPHELIA"]
    changed_any = False
    for epoch in range(6):
        text = vocab.decode(rename(epoch))
        assert len(text) == len(SCENE)
        before, after = SCENE.split("\n"), text.split("\n")
        assert len(before) == len(after)
        names: dict[str, str] = {}
        for old, new in zip(before, after, strict=True):
            if old.endswith(":") and old[:-1] in rename.names:
                assert new.endswith(":") and len(new) == len(old) and new[:-1] in rename.names
                assert names.setdefault(old, new) == new, "one name, one replacement in an epoch"
                changed_any |= old != new
            else:
                assert old == new, "dialogue (including 'Romeo,') is left alone"
        assert len(set(names.values())) == len(names), "a permutation: two speakers never merge"
    assert changed_any


def test_names_are_permuted_within_each_length_only():
    _, rename = renaming()
    for epoch in range(20):
        mapping = rename.mapping(epoch)
        assert sorted(mapping.tolist()) == list(range(len(rename.names)))
        assert torch.equal(rename.lengths[mapping], rename.lengths)
    # BALTHASAR is the only name of 9 letters: it always stays; the three of 7 letters move among themselves
    alone = rename.names.index("BALTHASAR")
    assert all(rename.mapping(e)[alone] == alone for e in range(20))
    sevens = {rename.names.index(n) for n in ("CAPULET", "HORATIO", "OPHELIA")}
    assert len({tuple(rename.mapping(e)[sorted(sevens)].tolist()) for e in range(20)}) > 1


def test_epochs_are_reproducible_from_the_seed_and_differ_between_epochs():
    _, a = renaming(seed=3)
    _, b = renaming(seed=3)
    _, c = renaming(seed=4)
    assert torch.equal(a(5), b(5)), "a resumed run reads the same text"
    assert any(not torch.equal(a(e), a(e + 1)) for e in range(5))
    assert any(not torch.equal(a(e), c(e)) for e in range(5))
    assert torch.equal(a.tokens, renaming(seed=3)[1].tokens), "the original tokens are not modified"


def test_text_without_speakers_is_unchanged():
    vocab, rename = renaming("just prose, no speakers at all\nNOT A SPEAKER: here\n")
    assert rename.names == [] and torch.equal(rename(3), rename.tokens)


def test_stream_source_reads_each_epochs_tokens_and_resumes_there():
    tokens = torch.arange(1001)
    epoch_tokens = lambda epoch: tokens + 10_000 * epoch  # noqa: E731
    data = StreamBatches(tokens, batch_size=4, bptt_steps=10, epoch_tokens=epoch_tokens)
    first = [next(data).data[0] for _ in range(25)]  # one epoch: 25 chunks
    assert torch.equal(first[0][1], torch.arange(250, 260)), "epoch 0's text, laid out as without epoch_tokens"
    again = next(data)
    assert again.starts_streams and torch.equal(again.data[0], first[0] + 10_000), "epoch 1 reads epoch 1's tokens"
    resumed = StreamBatches(tokens, batch_size=4, bptt_steps=10, epoch_tokens=epoch_tokens)
    resumed.load_state_dict({"epoch": 3, "chunk": 2})
    assert torch.equal(next(resumed).data[0], first[2] + 30_000)


def test_epoch_tokens_of_the_wrong_length_is_a_clear_error():
    data = StreamBatches(torch.arange(1001), batch_size=4, bptt_steps=10, epoch_tokens=lambda epoch: torch.arange(999))
    with pytest.raises(ValueError, match="epoch_tokens must return 1001 tokens"):
        next(data)
