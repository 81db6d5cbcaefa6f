"""Translation: data, the attention model, search, the app and its CLI."""

import json
import random

import pytest
import torch

import rnnkit
from rnnkit.apps.translate import TeacherForcing, evaluate_model
from rnnkit.apps.translate.evaluation import WordByWord, scores
from rnnkit.apps.translate.model import ATTENTIONS, BOS_ID, EOS_ID, Attention, Seq2Seq, Translator, TranslatorConfig
from rnnkit.cli import main
from rnnkit.data import parallel
from rnnkit.data.parallel import LONGEST_TRAIN_SOURCE, Vocab, numbers, pieces, read_tsv, split_pairs
from tests.conftest import assert_close

WORDS = [" one", "one", " two", " three", " four", " and", "-", ","]
TARGET = [" un", " deux", " trois", " quatre", " et"]


def small_model(cell="gru", attention="additive", seed=0):
    torch.manual_seed(seed)
    config = TranslatorConfig(WORDS, TARGET, cell=cell, attention=attention, embedding=8, hidden=12)
    return Seq2Seq(config).eval()


def batch(seed=0, sizes=(5, 2, 4)):
    generator = torch.Generator().manual_seed(seed)
    source = torch.zeros(len(sizes), max(sizes), dtype=torch.long)
    for row, size in enumerate(sizes):
        source[row, :size] = torch.randint(4, 4 + len(WORDS), (size,), generator=generator)
    return source, torch.tensor(sizes)


# -- data -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["three hundred and ninety-seven", "  a,b  c ", "l'été, 5 mars 2021!", "snake_case x"])
def test_pieces_are_lossless(text):
    assert "".join(pieces(text)) == " " + parallel.normalise(text)
    assert "".join(pieces(text, "char")) == parallel.normalise(text)


def test_vocab_round_trip_and_unknown():
    vocab = Vocab.build(["three hundred and ninety-seven", "seven"])
    ids = vocab.encode("seven hundred and three")
    assert ids[-1] == EOS_ID and vocab.decode(ids) == "seven hundred and three"
    assert vocab.unknown_in("eight hundred") == [" eight"]
    assert vocab.decode(vocab.encode("eight")) == "<unk>"


def test_held_out_numbers_never_appear_in_training():
    data = numbers("en-fr", valid_size=50, test_size=100)
    held = {s for s, _ in data.valid} | {s for name in data.test for s, _ in data.test[name]}
    rng = random.Random(1)
    trained = [data.sample(rng) for _ in range(3000)]
    assert not held & {s for s, _ in trained}
    assert all(len(pieces(s)) <= LONGEST_TRAIN_SOURCE for s, _ in trained)
    assert data.test["longer"] and all(len(pieces(s)) > LONGEST_TRAIN_SOURCE for s, _ in data.test["longer"])
    assert data.sample(random.Random(0)) == data.sample(random.Random(0))


def test_dates_pairs_are_real_locale_text():
    data = parallel.dates("en-fr", valid_size=5, test_size=5)
    source, target = data.sample(random.Random(0))
    assert any(m in source for m in ("January", "February", "March", "April", "May", "June", "July", "August",
                                     "September", "October", "November", "December"))  # fmt: skip
    assert any(m in target for m in ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
                                     "septembre", "octobre", "novembre", "décembre"))  # fmt: skip


def test_tsv_reading_and_split(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"w{i} x\tv{i}  y\n" for i in range(40)) + "\n", encoding="utf-8")
    pairs = read_tsv(path)
    assert pairs[0] == ("w0 x", "v0 y") and len(pairs) == 40
    data = split_pairs(pairs, "pairs")
    parts = [data.train, data.valid, data.test["test"]]
    assert sum(map(len, parts)) == 40 and len({p for part in parts for p in part}) == 40
    assert split_pairs(pairs, "pairs").valid == data.valid  # fixed by the seed


# -- the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ATTENTIONS)
def test_attention_sums_to_one_over_valid_positions_and_is_zero_on_padding(kind):
    attention = Attention(kind, 6, 12)
    memory, mask = torch.randn(3, 5, 12), torch.arange(5).unsqueeze(0) < torch.tensor([[5], [2], [4]])
    context, weights = attention(torch.randn(3, 6), attention.keys(memory), memory, mask)
    assert torch.all(weights[~mask] == 0)
    assert_close(weights.sum(-1), torch.ones(3))
    assert_close(context, torch.einsum("ns,nsm->nm", weights, memory))


def test_additive_attention_matches_the_equation():
    attention = Attention("additive", 4, 6)
    memory, query = torch.randn(1, 3, 6), torch.randn(1, 4)
    _, weights = attention(query, attention.keys(memory), memory, torch.ones(1, 3, dtype=torch.bool))
    q = attention.query.weight @ query[0] + attention.query.bias
    by_hand = torch.stack([attention.v.weight @ torch.tanh(q + attention.key.weight @ memory[0, j]) for j in range(3)])
    by_hand = by_hand.squeeze(-1)
    assert_close(weights[0], torch.softmax(by_hand, 0))


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn"])
def test_training_forward_equals_step_by_step_decoding(cell):
    model = small_model(cell)
    source, lengths = batch()
    target = torch.tensor([[BOS_ID, 5, 6, 7], [BOS_ID, 4, 3, 0], [BOS_ID, 8, 5, 3]])
    logits, weights = model(source, lengths, target)
    encoded = model.encode(source, lengths)
    state, feed = encoded.state, model.initial_feed(encoded)
    for t in range(target.shape[1]):
        step_logits, state, feed, step_weights = model.decode_step(target[:, t], state, feed, encoded)
        assert_close(logits[:, t], step_logits)
        assert_close(weights[:, t], step_weights)


def test_padding_does_not_change_the_encoding():
    model = small_model("lstm")
    source, lengths = batch()
    alone = model.encode(source[1:2, :2], lengths[1:2])
    together = model.encode(source, lengths)
    assert_close(together.memory[1, :2], alone.memory[0])
    assert_close(together.state.h[1], alone.state.h[0])
    assert torch.all(together.memory[1, 2:] == 0)


def test_no_teacher_forcing_feeds_the_models_own_argmax():
    model = small_model()
    source, lengths = batch()
    greedy = model.greedy(source, lengths, max_length=6)
    target = torch.full((3, 6), 4)
    target[:, 0] = BOS_ID
    logits, _ = model(source, lengths, target, teacher_forcing=0.0)
    for row, output in enumerate(greedy):
        assert logits[row].argmax(-1).tolist()[: len(output)] == output


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_beam_one_equals_greedy(cell):
    for seed in range(3):
        model = small_model(cell, seed=seed)
        source, lengths = batch(seed)
        assert model.beam_search(source, lengths, 12, beam=1) == model.greedy(source, lengths, 12)


def test_beam_search_finds_at_least_the_greedy_score():
    model = small_model(seed=3)
    source, lengths = batch(3)

    def log_prob(row, output):
        target = torch.tensor([[BOS_ID, *output]])
        logits, _ = model(source[row : row + 1, : lengths[row]], lengths[row : row + 1], target)
        gold = torch.tensor(output + [EOS_ID])
        return torch.log_softmax(logits[0], -1).gather(1, gold.unsqueeze(1)).sum().item()

    greedy = model.greedy(source, lengths, 8)
    beam = model.beam_search(source, lengths, 8, beam=4, length_penalty=0.0)
    for row in range(3):
        if len(greedy[row]) < 8 and len(beam[row]) < 8:  # both finished
            assert log_prob(row, beam[row]) >= log_prob(row, greedy[row]) - 1e-5


@pytest.mark.parametrize("beam", [1, 3])
def test_batch_and_single_decoding_agree(beam):
    translator = Translator(small_model("lstm", seed=1))
    texts = ["one two three", "four", "three and four, two-one"]
    together = translator.translate(texts, beam=beam, max_length=7)
    assert together == [translator.translate(t, beam=beam, max_length=7)[0] for t in texts]


def test_teacher_forcing_schedule():
    schedule = TeacherForcing(1.0, 0.5, steps=100)
    assert [schedule.ratio(s) for s in (0, 50, 100, 200)] == [1.0, 0.75, 0.5, 0.5]
    assert TeacherForcing(0.9, 0.1).ratio(10) == 0.9  # a minutes budget: constant
    with pytest.raises(ValueError, match="teacher-forcing"):
        TeacherForcing(1.5, 1.0)


def test_scores_and_word_by_word_baseline():
    result = scores(["deux mille", "trois"], ["deux mille", "quatre"])
    assert result["exact_match"] == 0.5 and 0 < result["chrf"] < 100
    pairs = [("the dog", "el perro"), ("the cat", "el gato"), ("a dog", "un perro"), ("a cat", "un gato")] * 3
    assert WordByWord(pairs)("the cat, a dog") == "el gato, un perro"


# -- the application ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run on numbers: it must learn to translate held-out numbers."""
    out = tmp_path_factory.mktemp("translate") / "run"
    argv = ["train", "translate", "--steps", "150", "--out", str(out), "--hidden", "128", "--embedding", "64",
            "--eval-every", "150", "--no-progress", "--teacher-forcing", "1", "1"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_a_short_run_learns_to_translate_held_out_numbers(trained):
    record = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["kind"] == "eval" and record["val_exact_match"] >= 0.8, record
    translator = rnnkit.load(trained)
    assert translator.translate("three hundred and ninety-seven", beam=3) == ["trois cent quatre-vingt-dix-sept"]


def test_save_load_round_trip(trained):
    first, second = rnnkit.load(trained), rnnkit.load(trained)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    texts = ["five thousand, two hundred and six", "eighty"]
    assert first.translate(texts) == second.translate(texts)


def test_cli_translate_and_evaluate(trained, capsys, tmp_path):
    heatmap = tmp_path / "h.png"
    assert (
        main(["translate", "--model", str(trained), "twenty-one", "seventy-one", "--beam", "3", "--heatmap", str(heatmap)]) == 0
    )
    assert capsys.readouterr().out.splitlines() == ["vingt et un", "soixante et onze"]
    assert heatmap.stat().st_size > 1000
    assert main(["evaluate", "--model", str(trained), "--beam", "2", "--limit", "100"]) == 0
    out = capsys.readouterr().out
    assert "held_out greedy exact_match" in out and "longer beam 2 bleu" in out
    assert (trained / "attention.png").is_file()


def test_evaluate_on_a_tsv_includes_the_baselines(trained, tmp_path):
    path = tmp_path / "pairs.tsv"
    rng = random.Random(0)
    data = numbers("en-fr", valid_size=10, test_size=10)
    path.write_text("".join(f"{s}\t{t}\n" for s, t in (data.sample(rng) for _ in range(60))), encoding="utf-8")
    loaded = rnnkit.load(trained)
    import argparse

    results = evaluate_model(loaded, {}, argparse.Namespace(data=str(path), beam=2, model=None))
    assert results["test greedy exact_match"] >= 0.5
    assert results["test copy source exact_match"] == 0.0
    assert results["test word by word bleu"] < results["test greedy bleu"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["translate", "--model", "{m}", " "], "the source text is empty"),
        (["translate", "--model", "{m}", "hello"], "outside the model's vocabulary: 'hello'"),
        (["translate", "--model", "{m}", "seven", "--beam", "0"], "beam must be an integer >= 1"),
        (["translate", "--model", "{m}", "seven", "--max-length", "0"], "max_length must be an integer >= 1"),
        (["translate", "--model", "{m}"], "give texts, or --file"),
        (["train", "translate", "--pair", "en-xx", "--steps", "1", "--out", "{t}/a"], "num2words has no language 'xx'"),
        (["train", "translate", "--pair", "enfr", "--steps", "1", "--out", "{t}/b"], "--pair must look like en-fr"),
        (["train", "translate", "--task", "dates", "--pair", "en-zz", "--steps", "1", "--out", "{t}/c"], "no locale 'zz'"),
        (["train", "translate", "--data", "{t}/missing.tsv", "--steps", "1", "--out", "{t}/d"], "no such file"),
        (["train", "translate", "--data", "{t}/notab.tsv", "--steps", "1", "--out", "{t}/e"], "line 2 needs exactly one tab"),
        (["translate", "--model", "{t}", "x"], "no config.json"),
    ],
)
def test_bad_input(trained, tmp_path, capsys, argv, message):
    (tmp_path / "notab.tsv").write_text("a\tb\nno tab here\n", encoding="utf-8")
    argv = [a.format(m=trained, t=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnkit: error:") and message in err and err.count("\n") == 1, err


def test_missing_bible_modules_give_one_clear_message(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="apt-get install sword-text-kjv sword-text-sparv"):
        parallel.bible_pairs(tmp_path / "no-sword", cache=tmp_path / "cache.tsv")
    monkeypatch.setitem(__import__("sys").modules, "pysword.modules", None)  # pysword not installed
    with pytest.raises(ValueError, match="pip install pysword==0.2.8"):
        parallel.bible_pairs(tmp_path / "no-sword", cache=tmp_path / "cache.tsv")


def test_bible_pairs_when_installed(tmp_path):
    if not (parallel.SWORD_DIR and (parallel.Path(parallel.SWORD_DIR) / "mods.d").is_dir()):
        pytest.skip("the SWORD Bible modules are not installed (apt-get install sword-text-kjv sword-text-sparv)")
    cache = parallel.cache_dir() / "bible-en-es.tsv"
    pairs = parallel.bible_pairs(cache=cache if cache.is_file() else tmp_path / "bible.tsv")
    assert len(pairs) > 30_000
    assert pairs[0] == (
        "In the beginning God created the heaven and the earth.",
        "EN el principio crió Dios los cielos y la tierra.",
    )


def test_evaluation_heatmap_tolerates_unknown_source_words(trained, tmp_path):
    from rnnkit.apps.translate import save_heatmap

    translator = rnnkit.load(trained)
    save_heatmap(translator, "seven hundred zebras", tmp_path / "h.png", allow_unknown=True)
    assert (tmp_path / "h.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="'zebras'"):
        save_heatmap(translator, "seven hundred zebras", tmp_path / "h2.png")
