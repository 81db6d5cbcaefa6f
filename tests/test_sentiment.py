"""Sentiment: labelled-text data, the sequence classifier, the app and its CLI."""

import json
import sys

import pandas as pd
import pytest
import torch

import rnnkit
from rnnkit.apps import sentiment
from rnnkit.apps.sentiment.evaluation import classification_report, confusion
from rnnkit.apps.sentiment.model import (
    POOLINGS,
    Classifier,
    ClassifierConfig,
    Ensemble,
    SequenceClassifier,
    language_model_head,
)
from rnnkit.apps.sentiment.ngrams import NgramClassifier, choose_mix_weight, fit_tfidf
from rnnkit.cli import build_parser, main, train_config
from rnnkit.data.parallel import pad_batch
from rnnkit.data.reviews import LabelledTexts, WordVocab, movie_reviews, read_labelled_csv, split, tokenize
from rnnkit.io import save_model
from rnnkit.train import DistContext, PhasedBatches

WORDS = ["good", "bad", "film", "a", "not", ".", "great", "dull"]


def small_model(cell="lstm", pooling="attention", bidirectional=True, seed=0, words=WORDS, classes=("negative", "positive")):
    torch.manual_seed(seed)
    config = ClassifierConfig(list(words), list(classes), cell, embedding=6, hidden=5, layers=2,
                              bidirectional=bidirectional, pooling=pooling, dropout=0.0)  # fmt: skip
    return SequenceClassifier(config).eval()


# -- data -----------------------------------------------------------------------------------------
def test_tokenize_words_punctuation_and_imdb_line_breaks():
    assert tokenize("I didn't LIKE it.<br /><br />Great!") == ["i", "didn't", "like", "it", ".", "great", "!"]


def test_split_is_seeded_80_10_10_and_disjoint():
    examples = [(f"t{i}", i % 2) for i in range(1000)]
    train, valid, test = split(examples, seed=3)
    assert (len(train), len(valid), len(test)) == (800, 100, 100)
    assert len({t for t, _ in train + valid + test}) == 1000
    assert split(examples, seed=3) == (train, valid, test) and split(examples, seed=4)[0] != train


def test_movie_reviews_are_deduplicated_and_split():
    rt = movie_reviews("rt", seed=0)
    texts = [t for t, _ in rt.train + rt.valid + rt.test]
    assert len(texts) == len(set(texts)) and 8_400 <= len(texts) <= 8_530 and rt.classes == ["negative", "positive"]
    assert abs(sum(label for _, label in rt.train) / len(rt.train) - 0.5) < 0.02
    imdb = movie_reviews("imdb", seed=0)
    assert 24_800 <= len(imdb.train) + len(imdb.valid) + len(imdb.test) < 25_000  # 96 duplicates dropped


def test_both_is_split_per_source_so_its_splits_are_the_unions_of_rt_and_imdb():
    rt, imdb, both = (movie_reviews(name, seed=0) for name in ("rt", "imdb", "both"))
    for name in ("train", "valid", "test"):
        assert getattr(both, name) == getattr(rt, name) + getattr(imdb, name)


def test_the_vocabulary_comes_from_the_training_split_only(tmp_path):
    rows = [("good film", "pos"), ("bad film", "neg")] * 40 + [("zanzibar xylophone", "pos"), ("quokka", "neg")] * 3
    csv = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["text", "label"]).drop_duplicates().to_csv(csv, index=False)
    data = read_labelled_csv(csv, "text", "label", seed=0)
    vocab = WordVocab.build([t for t, _ in data.train], min_count=1)
    train_words = {w for t, _ in data.train for w in tokenize(t)}
    assert set(vocab.words()) == train_words
    held_out = {w for t, _ in data.valid + data.test for w in tokenize(t)} - train_words
    assert all(vocab.encode(w) == [1] for w in held_out)


@pytest.mark.parametrize(
    ("labels", "classes"), [([2, 0, 1, 10], ["0", "1", "2", "10"]), (["pos", "neg", "neutral"], ["neg", "neutral", "pos"])]
)
def test_labels_become_sorted_classes(tmp_path, labels, classes):
    labels = labels * 5
    path = tmp_path / "labels.csv"
    pd.DataFrame({"text": [f"text number {i}" for i in range(len(labels))], "label": labels}).to_csv(path, index=False)
    data = read_labelled_csv(path, "text", "label", 0)
    assert data.classes == classes
    assert {classes[label] for _, label in data.train + data.valid + data.test} == {str(x) for x in labels}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"review": ["a", "b"], "label": [0, 1]}), "no column 'text'"),
        (pd.DataFrame({"text": ["a", "b", "c"], "label": [1, 1, 1]}), "a single class ('1')"),
        (pd.DataFrame({"text": ["a", "b"], "label": [0.5, 1.0]}), "labels must be integers or strings"),
        (pd.DataFrame({"text": ["a", "  ", "c"], "label": [0, 1, 0]}), "empty text at rows 1"),
    ],
)
def test_bad_csvs_give_one_line_errors(tmp_path, frame, message):
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_labelled_csv(path, "text", "label", 0)


# -- the model ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_padding_invariance_alone_or_in_a_padded_batch(cell, pooling):
    model = small_model(cell, pooling)
    texts = [[3, 4, 9, 5], [2, 8, 4, 6, 7, 3, 9], [5]]
    tokens, lengths = pad_batch(texts)
    batched, attention = model(tokens, lengths)
    for row, ids in enumerate(texts):
        alone, _ = model(torch.tensor([ids]), torch.tensor([len(ids)]))
        torch.testing.assert_close(batched[row], alone[0])
    if pooling == "attention":
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(3))
        assert (attention[2, 1:] == 0).all() and (attention[0, 4:] == 0).all()


def test_last_pooling_is_the_final_state_of_each_direction():
    model = small_model("gru", "last")
    tokens, lengths = pad_batch([[3, 4, 9, 5], [2, 8]])
    steps, h_n = model.encoder(model.embed(tokens), lengths=lengths)
    forward_last = steps[1, 1, :5]  # the forward direction at the true last step of the short text
    backward_first = steps[1, 0, 5:]  # the backward direction ends at step 0
    torch.testing.assert_close(h_n[-2, 1], forward_last)
    torch.testing.assert_close(h_n[-1, 1], backward_first)
    logits, _ = model(tokens, lengths)
    torch.testing.assert_close(logits[1], model.output.logits(torch.cat([forward_last, backward_first])))


def test_word_dropout_turns_words_into_unk_in_training_only():
    model = small_model()
    model.config.word_dropout = 0.5
    seen = []
    model.embed.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].clone()))
    tokens, lengths = pad_batch([[2 + i % 8 for i in range(400)], [3, 4, 5]])
    evaluated, _ = model(tokens, lengths)
    assert torch.equal(seen[-1], tokens)  # evaluation reads every word
    model.train()
    torch.manual_seed(0)
    model(tokens, lengths)
    dropped = seen[-1] != tokens
    assert (seen[-1][dropped] == 1).all() and (seen[-1][1, 3:] == 0).all()  # to <unk>; padding stays padding
    assert 0.4 < dropped[0].float().mean() < 0.6  # each word with probability 0.5
    model.eval()
    torch.testing.assert_close(model(tokens, lengths)[0], evaluated)


def test_the_bidirectional_language_model_reads_each_side_only():
    torch.manual_seed(0)
    config = ClassifierConfig(WORDS, ["negative", "positive"], "lstm", embedding=6, hidden=5, dropout=0.0, lm_words=6)
    model = SequenceClassifier(config).eval()
    tokens, lengths = pad_batch([[3, 4, 9, 5, 2, 7], [8, 3, 2]])
    forward, backward = model.lm_log_probs(tokens, lengths)
    assert forward.shape == (2, 6, 6)  # the 6 most frequent ids (specials included)
    torch.testing.assert_close(forward.exp().sum(-1), torch.ones(2, 6))  # the adaptive softmax is a distribution
    changed = tokens.clone()
    changed[0, 3] = 8  # w_3 changes: forward scores at t < 3 and backward ones at t > 3 do not
    forward2, backward2 = model.lm_log_probs(changed, lengths)
    torch.testing.assert_close(forward2[:1, :3], forward[:1, :3])
    torch.testing.assert_close(backward2[:1, 4:], backward[:1, 4:])
    assert not torch.allclose(forward2[0, 3], forward[0, 3]) and not torch.allclose(backward2[0, 3], backward[0, 3])
    seen = tokens.masked_fill(tokens >= 6, 1)  # ids past the LM's 6 words are scored as <unk> (1)
    nll = torch.nn.functional.nll_loss
    forward_terms = torch.cat([forward[0, :5], forward[1, :2]]), torch.cat([seen[0, 1:], seen[1, 1:3]])
    backward_terms = torch.cat([backward[0, 1:], backward[1, 1:3]]), torch.cat([seen[0, :5], seen[1, :2]])
    by_hand = (nll(*forward_terms) + nll(*backward_terms)) / 2  # padding neither scores nor is scored
    torch.testing.assert_close(model.lm_loss(tokens, lengths), by_hand)


def test_the_language_model_softmax_is_adaptive_over_frequency_ranked_words():
    head = language_model_head(64, 30_000)
    assert head.cutoffs == [500, 2500, 10_000, 30_000]
    assert language_model_head(8, 6).cutoffs == [3, 6]  # a tiny vocabulary still gets a valid split


def test_pretraining_then_fine_tuning_in_one_run(trained, tmp_path):
    _, csv = trained
    argv = ["train", "sentiment", "--data", str(csv), "--text-col", "sentence", "--label-col", "polarity", "--hidden", "32",
            "--embedding", "32", "--pretrain-steps", "40", "--lm-words", "2000", "--steps", "60", "--lr", "1e-2",
            "--warmup-steps", "5", "--eval-every", "20", "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lm = [r["loss"] for r in records if r["kind"] == "train" and r["step"] <= 40]
    assert sum(lm[-5:]) / 5 < sum(lm[:5]) / 5 - 1.0  # the language model learns (from ~ln 2000 = 7.6 nats)
    evals = {r["step"]: r for r in records if r["kind"] == "eval"}
    assert "val_lm_loss" in evals[20] and "val_lm_loss" not in evals[60]
    classifier = rnnkit.load(tmp_path / "run")
    assert classifier.config.lm_words == 2000 and len(classifier.predict(["a fine film"])) == 1


def test_pretraining_alone_keeps_the_best_language_model_and_init_starts_from_it(trained, tmp_path):
    _, csv = trained
    data = ["--data", str(csv), "--text-col", "sentence", "--label-col", "polarity"]
    argv = ["train", "sentiment", *data, "--hidden", "16", "--embedding", "12", "--pretrain-steps", "30", "--steps", "30",
            "--lr", "1e-2", "--eval-every", "10", "--out", str(tmp_path / "lm"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "lm" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert all(set(r) == {"kind", "step", "val_lm_loss"} for r in evals), "pretraining alone never scores the classes"
    best = min(evals, key=lambda r: r["val_lm_loss"])
    assert json.loads((tmp_path / "lm" / "config.json").read_text())["weights_from_step"] == best["step"]

    args = build_parser().parse_args(["train", "sentiment", *data, "--init", str(tmp_path / "lm"), "--hidden", "99",
                                      "--pooling", "max", "--steps", "5"])  # fmt: skip
    task, _ = sentiment.build(args, train_config(args, sentiment.TRAIN_DEFAULTS), DistContext())
    pretrained = rnnkit.load(tmp_path / "lm").model
    assert (task.model.config.hidden, task.model.config.pooling, task.model.config.words) == (16, "max", pretrained.config.words)
    for name, tensor in pretrained.state_dict().items():
        if name.split(".")[0] in ("embed", "encoder", "lm_heads"):
            torch.testing.assert_close(task.model.state_dict()[name], tensor, rtol=0, atol=0)
    assert task.metric == "val_error" and task.model.config.lm_words == pretrained.config.lm_words


def test_encoder_lr_scale_fine_tunes_the_encoder_slower_and_zero_freezes_it(trained, tmp_path):
    run, csv = trained
    data = ["--data", str(csv), "--text-col", "sentence", "--label-col", "polarity"]
    argv = ["train", "sentiment", *data, "--init", str(run), "--encoder-lr-scale", "0", "--steps", "20", "--lr", "1e-2",
            "--warmup-steps", "1", "--eval-every", "10", "--out", str(tmp_path / "frozen"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    before, after = rnnkit.load(run).model.state_dict(), rnnkit.load(tmp_path / "frozen").model.state_dict()
    for name, tensor in after.items():
        if name.split(".")[0] in ("embed", "encoder"):
            torch.testing.assert_close(tensor, before[name], rtol=0, atol=0)
    assert not torch.equal(after["output.linear.weight"], before["output.linear.weight"])
    args = build_parser().parse_args(["train", "sentiment", *data, "--encoder-lr-scale", "0.3", "--lr", "1e-3"])
    task, _ = sentiment.build(args, train_config(args, sentiment.TRAIN_DEFAULTS), DistContext())
    groups = task.parameter_groups()
    assert [group["lr_scale"] for group in groups] == [1.0, 0.3]
    encoder = [*task.model.embed.parameters(), *task.model.encoder.parameters()]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in encoder}


def test_pretraining_on_other_reviews_switches_to_the_labelled_texts_after_it(trained):
    _, csv = trained
    args = build_parser().parse_args(["train", "sentiment", "--dataset", "rt", "--pretrain-data", "both", "--pretrain-steps",
                                      "3", "--steps", "5", "--batch-size", "4"])  # fmt: skip
    task, source = sentiment.build(args, train_config(args, sentiment.TRAIN_DEFAULTS), DistContext())
    both, rt = movie_reviews("both", seed=0), movie_reviews("rt", seed=0)
    vocabulary = set(WordVocab.build([t for t, _ in both.train + rt.train], args.vocab_size).words())
    assert set(task.model.config.words) == vocabulary  # training splits only, of both sources
    assert isinstance(source, PhasedBatches) and source.first.examples is not source.then.examples
    assert len(source.first.examples) > 20_000 and len(source.then.examples) < 7_000
    assert len(task.lm_valid) == sentiment.LM_VALID


def test_metrics_by_hand():
    gold, predicted = [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]
    assert confusion(gold, predicted, 2).tolist() == [[1, 1], [1, 2]]
    report = classification_report(gold, predicted, 2)
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)  # F1: class 0 P=R=1/2, class 1 P=R=2/3


# -- training and the CLI ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small classifier trained on 2,000 Rotten Tomatoes sentences (a CSV of them)."""
    tmp_path = tmp_path_factory.mktemp("sentiment")
    rt = movie_reviews("rt", seed=0)
    csv = tmp_path / "rt.csv"
    pd.DataFrame(rt.train[:2000], columns=["sentence", "polarity"]).to_csv(csv, index=False)
    argv = ["train", "sentiment", "--data", str(csv), "--text-col", "sentence", "--label-col", "polarity", "--hidden", "64",
            "--embedding", "64", "--steps", "250", "--lr", "3e-3", "--eval-every", "50", "--out", str(tmp_path / "run"),
            "--no-progress"]  # fmt: skip
    torch.manual_seed(0)
    assert main(argv) == 0
    return tmp_path / "run", csv


def test_a_short_run_beats_chance_clearly_and_keeps_the_best_weights(trained):
    run, _ = trained
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    best = max(evals, key=lambda r: r["val_accuracy"])
    assert best["val_accuracy"] >= 0.6, evals  # 200 validation sentences: chance is 0.5 +- 0.035
    assert json.loads((run / "config.json").read_text())["weights_from_step"] == best["step"]


def test_save_load_round_trip(trained):
    first, second = rnnkit.load(trained[0]), rnnkit.load(trained[0])
    texts = ["a gorgeous , moving film .", "dull , lifeless and far too long ."]
    torch.testing.assert_close(first.probabilities(texts), second.probabilities(texts), rtol=0, atol=0)
    assert isinstance(first, Classifier) and first.config.classes == ["0", "1"]


def test_cli_predict_explain_and_evaluate(trained, capsys, tmp_path):
    run, _ = trained
    file = tmp_path / "texts.txt"
    file.write_text("one of the best films of the year\n\nan utter bore\n", encoding="utf-8")
    assert main(["predict", "--model", str(run), "--file", str(file), "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].split("\t")[0] in ("0", "1") and lines[1].startswith("\t")
    assert main(["evaluate", "--model", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "tf-idf test accuracy" in out and (run / "confusion.png").is_file()


# -- the n-gram model and the mix ---------------------------------------------------------------
def small_reviews(classes: int) -> LabelledTexts:
    rt = movie_reviews("rt", seed=0)
    relabel = (lambda text, label: label) if classes == 2 else (lambda text, label: 2 if len(text) % 3 == 0 else label)
    take = lambda examples: [(text, relabel(text, label)) for text, label in examples]  # noqa: E731
    names = ["negative", "positive", "third"][:classes]
    return LabelledTexts(take(rt.train[:1500]), take(rt.valid[:300]), take(rt.test[:300]), names)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_ngram_model_computes_scikit_learns_tfidf_probabilities(classes):
    data = small_reviews(classes)
    vectorizer, logistic = fit_tfidf(data)
    ngrams = NgramClassifier.from_sklearn(vectorizer, logistic, classes)
    texts = [text for text, _ in data.test] + ["zzqx wqpt", "a"]  # no known n-gram at all: the bias alone
    expected = torch.from_numpy(logistic.predict_proba(vectorizer.transform(texts))).float()
    torch.testing.assert_close(ngrams.probabilities(texts), expected, rtol=0, atol=1e-6)
    assert ngrams.grams[vectorizer.vocabulary_["not"]] == "not" and "not a" in ngrams.index


def test_the_mix_weight_is_the_most_accurate_on_validation_and_the_smaller_on_ties():
    net = torch.tensor([[0.6, 0.4], [0.6, 0.4], [0.3, 0.7]])
    ngram = torch.tensor([[0.2, 0.8], [0.45, 0.55], [0.9, 0.1]])
    # by hand: row 0 is right for w > 1/4 (0.4 + 0.4 w > 0.5), row 1 for w < 2/3, row 2 for w < 1/3
    assert choose_mix_weight(net, ngram, torch.tensor([1, 0, 1])) == (0.3, 1.0)
    assert choose_mix_weight(net, net, torch.tensor([0, 0, 1])) == (0.0, 1.0)  # every w is as good: the smallest


def test_ngram_mix_trains_saves_and_evaluates_the_mix(trained, tmp_path, capsys):
    _, csv = trained
    out = tmp_path / "mixed"
    argv = ["train", "sentiment", "--data", str(csv), "--text-col", "sentence", "--label-col", "polarity", "--hidden", "16",
            "--embedding", "16", "--steps", "20", "--eval-every", "20", "--ngram-mix", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    classifier = rnnkit.load(out)
    config = json.loads((out / "config.json").read_text())["model"]
    assert config["ngram_weight"] == classifier.config.ngram_weight and len(config["ngrams"]) > 1000
    data = sentiment.rebuild_data(classifier)
    texts, labels = [t for t, _ in data.valid], torch.tensor([label for _, label in data.valid])
    network, ngram = classifier.probabilities(texts, mix=False), classifier.model.ngrams.probabilities(texts)
    assert choose_mix_weight(network, ngram, labels)[0] == classifier.config.ngram_weight  # chosen on validation
    w = classifier.config.ngram_weight
    torch.testing.assert_close(classifier.probabilities(texts), (1 - w) * network + w * ngram)
    assert main(["evaluate", "--model", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("network alone test accuracy" in printed) == (w > 0)


def test_ngram_mix_without_scikit_learn_says_what_to_install(trained, capsys, monkeypatch):
    _, csv = trained
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    argv = ["train", "sentiment", "--data", str(csv), "--text-col", "sentence", "--label-col", "polarity", "--ngram-mix"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--ngram-mix needs scikit-learn: pip install 'rnnkit[sentiment]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--model", "{m}", "   "], "cannot classify an empty text"),
        (["predict", "--model", "{m}", "zzqx wqpt"], "every word of 'zzqx wqpt' is unknown to the model"),
        (["predict", "--model", "{m}"], "give texts, or --file"),
        (["train", "sentiment", "--data", "{csv}", "--text-col", "nope", "--steps", "1"], "no column 'nope'"),
        (["train", "sentiment", "--data", "{csv}", "--dataset", "rt", "--steps", "1"], "give --data or --dataset"),
        (["train", "sentiment", "--pretrain-data", "rt", "--steps", "1"], "--pretrain-data needs --pretrain-steps"),
        (["train", "sentiment", "--data", "{csv}", "--init", "{csv}", "--steps", "1"], "--init: model directory"),
        (
            ["train", "sentiment", "--data", "{csv}", "--text-col", "sentence", "--label-col", "polarity", "--word-dropout", "1"],
            "--word-dropout must be in [0, 1), got 1.0",
        ),
        (
            ["train", "sentiment", "--data", "{csv}", "--ngram-mix", "--pretrain-steps", "2", "--steps", "2"],
            "--ngram-mix applies to a classifier",
        ),
        (
            ["train", "sentiment", "--data", "{csv}", "--encoder-lr-scale", "-1", "--steps", "1"],
            "--encoder-lr-scale must be >= 0",
        ),
        (
            ["train", "sentiment", "--data", "{csv}", "--encoder-lr-scale", "0.5", "--pretrain-steps", "2", "--steps", "4"],
            "--encoder-lr-scale applies to fine-tuning",
        ),
    ],
)
def test_cli_bad_input_one_line(trained, capsys, argv, message):
    run, csv = trained
    argv = [a.replace("{m}", str(run)).replace("{csv}", str(csv)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_probabilities_come_back_in_the_order_of_the_texts_batched_by_length():
    classifier = Classifier(small_model())
    texts = ["a good film , not dull at all", "bad", "great film", "a dull , bad , bad film", "good"]
    together = classifier.probabilities(texts, batch_size=2)
    alone = torch.cat([classifier.probabilities([text]) for text in texts])
    torch.testing.assert_close(together, alone)


def test_explain_needs_attention_pooling():
    classifier = Classifier(small_model(pooling="max"))
    with pytest.raises(ValueError, match="--explain needs a model with attention pooling"):
        classifier.explain("a good film")
    assert [w for w, _ in Classifier(small_model()).explain("a good film", top=2)] != []


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities_each_with_its_own_vocabulary():
    first = Classifier(small_model(seed=1))
    second = Classifier(small_model("gru", seed=2, words=list(reversed(WORDS))))  # other ids for the same words
    texts = ["a good film", "not great , dull .", "bad"]
    ensemble = Ensemble([first, second])
    expected = (first.probabilities(texts) + second.probabilities(texts)) / 2
    torch.testing.assert_close(ensemble.probabilities(texts), expected, rtol=0, atol=1e-7)
    assert not torch.allclose(first.probabilities(texts), second.probabilities(texts), atol=1e-3)
    best = expected.argmax(dim=-1)
    assert ensemble.predict(texts) == [(first.config.classes[int(i)], pytest.approx(float(p[i]))) for i, p in zip(best, expected)]
    with pytest.raises(ValueError, match="--model: the ensemble's models have different classes"):
        Ensemble([first, Classifier(small_model(classes=("neg", "pos")))])
    with pytest.raises(ValueError, match="--model: an ensemble needs at least 2 models"):
        Ensemble([first])
    with pytest.raises(ValueError, match="--explain: give one --model"):
        ensemble.explain("a good film")


def test_the_split_is_fixed_by_split_seed_not_by_the_training_seed(trained, tmp_path):
    def validation(*flags):
        args = build_parser().parse_args(["train", "sentiment", "--dataset", "rt", "--steps", "1", *flags])
        task, _ = sentiment.build(args, train_config(args, sentiment.TRAIN_DEFAULTS), DistContext())
        return task.valid, task.model.config.data

    (default, described), (reseeded, _), (resplit, _) = validation(), validation("--seed", "7"), validation("--split-seed", "7")
    assert default == reseeded and default != resplit and described["split_seed"] == 0
    # --init from a model of another split would train on this split's test texts
    model = small_model()
    save_model(tmp_path / "other", "sentiment", {**model.describe(), "data": {**described, "split_seed": 3}}, model)
    with pytest.raises(ValueError, match="--split-seed: .* was trained on the split of seed 3"):
        validation("--init", str(tmp_path / "other"))
    legacy = {**described, "seed": 3}  # saved before --split-seed: the training seed made the split
    del legacy["split_seed"]
    save_model(tmp_path / "legacy", "sentiment", {**model.describe(), "data": legacy}, model)
    with pytest.raises(ValueError, match="split of seed 3"):
        validation("--init", str(tmp_path / "legacy"))


def test_cli_predict_and_evaluate_an_ensemble(trained, capsys, tmp_path):
    run, csv = trained
    data = ["--data", str(csv), "--text-col", "sentence", "--label-col", "polarity"]
    argv = ["train", "sentiment", *data, "--init", str(run), "--seed", "1", "--steps", "10", "--lr", "1e-3",
            "--eval-every", "5", "--out", str(tmp_path / "second"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()  # the training's report
    members = [str(run), str(tmp_path / "second")]
    models = ["--model", members[0], "--model", members[1]]
    texts = ["one of the best films of the year", "an utter bore"]
    assert main(["predict", *models, *texts]) == 0
    printed = [float(line.split("\t")[1]) for line in capsys.readouterr().out.splitlines()]
    mean = (rnnkit.load(members[0]).probabilities(texts) + rnnkit.load(members[1]).probabilities(texts)) / 2
    assert printed == pytest.approx(mean.max(dim=-1).values.tolist(), abs=1e-3)
    assert main(["evaluate", *models]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and (run / "ensemble-confusion.png").is_file()
    assert main(["predict", *models, "--explain", "a fine film"]) == 2
    err = capsys.readouterr().err
    assert "--explain: give one --model" in err and len(err.strip().splitlines()) == 1
