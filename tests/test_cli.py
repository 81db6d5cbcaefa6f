"""The command line: end to end, resume without repeating options, shared options, bad input."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rnnkit.cli
from rnnkit.apps import APPS, get_app
from rnnkit.cli import build_parser, main, train_config
from rnnkit.kernels import cpu_has_bf16
from rnnkit.train.distributed import DistContext

TEXT = "".join(f"SPEAKER {i % 7}:\nthe quick brown fox jumps over the lazy dog {i}.\n\n" for i in range(400))
TINY = ["--hidden", "32", "--layers", "1", "--embedding", "8", "--batch-size", "4", "--bptt-steps", "20", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="module")
def model_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "charlm", "--data", str(corpus), "--steps", "8", "--eval-every", "4", "--out", str(out), *TINY]) == 0
    return out


def test_end_to_end_in_a_subprocess(corpus, tmp_path):
    out = tmp_path / "run"
    rnnkit = [sys.executable, "-m", "rnnkit.cli"]
    train = subprocess.run([*rnnkit, "train", "charlm", "--data", str(corpus), "--steps", "5", "--out", str(out), *TINY],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert f"model saved in {out}" in train.stdout
    generated = subprocess.run([*rnnkit, "generate", "--model", str(out), "--prime", "the", "--length", "40", "--seed", "1"],
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert generated.returncode == 0 and generated.stdout.startswith("the") and len(generated.stdout) == 3 + 40 + 1
    evaluated = subprocess.run([*rnnkit, "evaluate", "--model", str(out)], capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0 and "val_loss" in evaluated.stdout and "bits_per_char" in evaluated.stdout


def test_resume_needs_no_repeated_options(model_dir, corpus):
    assert main(["train", "charlm", "--out", str(model_dir), "--resume", "--steps", "12"]) == 0
    config = json.loads((model_dir / "config.json").read_text())
    assert config["step"] == 12 and config["model"]["hidden"] == 32 and config["model"]["data"] == str(corpus)


def test_every_app_shares_the_training_options():
    parser = build_parser()
    shared = {"--steps", "--minutes", "--out", "--seed", "--resume", "--cell", "--clip-norm", "--clip-value",
              "--bptt-steps", "--lr", "--batch-size", "--checkpoint-every"}  # fmt: skip
    for app in APPS:
        options = set(parser.app_parsers[app]._option_string_actions)
        assert shared <= options, app
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "charlm", "--steps", "5", "--minutes", "2"])  # one budget, not both


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_is_on_by_default_for_the_char_lm_where_the_cpu_has_bf16_and_the_flags_override_it(monkeypatch, has_bf16):
    monkeypatch.setattr(rnnkit.cli, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(rnnkit.cli.torch.cuda, "is_available", lambda: False)
    parser = build_parser()

    def bf16(*argv: str) -> bool:
        return train_config(parser.parse_args(["train", *argv]), get_app(argv[0]).TRAIN_DEFAULTS).bf16

    assert bf16("charlm") is has_bf16
    assert bf16("charlm", "--bf16") is True and bf16("charlm", "--no-bf16") is False
    assert bf16("sentiment") is False and bf16("sentiment", "--bf16") is True
    demo = parser.parse_args(["train", "charlm", *get_app("charlm").DEMO_FLAGS])
    assert demo.bf16 is False, "the demo runs in float32 on every CPU: the same run everywhere"


def test_the_demo_keeps_its_own_training_whatever_the_full_defaults():
    """The README's demo numbers come from chunks of 25, no weight averaging, float32."""
    charlm = get_app("charlm")
    config = train_config(build_parser().parse_args(["train", "charlm", *charlm.DEMO_FLAGS]), charlm.TRAIN_DEFAULTS)
    assert (config.bptt_steps, config.ema_decay, config.bf16, config.lr, config.batch_size) == (25, None, False, 4e-3, 64)
    full = train_config(build_parser().parse_args(["train", "charlm", "--bf16"]), charlm.TRAIN_DEFAULTS)
    assert (full.steps, full.bptt_steps, full.ema_decay) == (4000, 200, 0.999)


@pytest.mark.parametrize("has_bf16", [True, False])
def test_the_char_lm_default_fits_the_hour_in_float32_with_its_own_steps_and_chunks(monkeypatch, has_bf16):
    """bf16 mode: 4,000 steps of 200 characters; float32 (no bf16 instructions, or --no-bf16):
    6,000 steps of 50, what fits 60 minutes on an AVX2 CPU. Flags given override either."""
    monkeypatch.setattr(rnnkit.cli, "cpu_has_bf16", lambda: has_bf16)
    monkeypatch.setattr(rnnkit.cli.torch.cuda, "is_available", lambda: False)
    parser, defaults = build_parser(), get_app("charlm").TRAIN_DEFAULTS

    def config(*argv: str):
        return train_config(parser.parse_args(["train", "charlm", *argv]), defaults)

    default = config()
    assert (default.bf16, default.steps, default.bptt_steps) == ((True, 4000, 200) if has_bf16 else (False, 6000, 50))
    assert (config("--no-bf16").steps, config("--no-bf16").bptt_steps) == (6000, 50)
    assert (config("--bf16").steps, config("--bf16").bptt_steps) == (4000, 200)
    given = config("--no-bf16", "--steps", "7", "--bptt-steps", "30")
    assert (given.steps, given.bptt_steps, given.minutes) == (7, 30, None)
    # the README's AVX2 hour, 2026-12-07 (and --dropout 0.2: the model's default, tested below)
    measured = config("--no-bf16", "--steps", "6000", "--bptt-steps", "50")
    assert config("--no-bf16") == measured, "the float32 default trains as the run the README measured"
    timed = config("--no-bf16", "--minutes", "5")  # the trainer sizes the steps that fit, for the cosine decay
    assert (timed.steps, timed.minutes, timed.bptt_steps, timed.schedule) == (None, 5, 50, "cosine")
    sentiment = train_config(parser.parse_args(["train", "sentiment"]), get_app("sentiment").TRAIN_DEFAULTS)
    assert sentiment.bptt_steps == get_app("sentiment").TRAIN_DEFAULTS.get("bptt_steps")


def test_the_char_lm_dropout_follows_the_precision_unless_given(corpus):
    """0.3 in bf16 mode (51 M characters), 0.2 in float32 (19.2 M): the README's two recipes."""
    charlm, parser = get_app("charlm"), build_parser()

    def dropout(*argv: str) -> float:
        args = parser.parse_args(["train", "charlm", "--data", str(corpus), *argv])
        task, _ = charlm.build(args, train_config(args, charlm.TRAIN_DEFAULTS), DistContext())
        return task.model.config.dropout

    assert (dropout("--bf16"), dropout("--no-bf16")) == (0.3, 0.2)
    assert (dropout("--bf16", "--dropout", "0.1"), dropout("--no-bf16", "--dropout", "0.3")) == (0.1, 0.3)


def test_a_run_saves_its_resolved_precision_and_chunks_so_resume_trains_the_same_run(corpus, tmp_path, monkeypatch):
    """``args.json`` holds the first run's options as resolved; ``--resume`` alone trains the same
    run (its precision, chunks, dropout and budget) even where the defaults differ."""
    monkeypatch.setattr(rnnkit.cli, "cpu_has_bf16", lambda: False)
    out = tmp_path / "run"
    tiny = [a for a in TINY if a not in ("--bptt-steps", "20")]
    assert main(["train", "charlm", "--data", str(corpus), "--steps", "3", "--out", str(out), *tiny]) == 0
    saved = json.loads((out / "args.json").read_text())
    assert (saved["bf16"], saved["bptt_steps"]) == (False, 50), "float32: the float32 chunks, saved as numbers"
    monkeypatch.setattr(rnnkit.cli, "cpu_has_bf16", lambda: True)  # the same run, resumed where bf16 is the default
    monkeypatch.setattr(rnnkit.cli.Trainer, "fit", lambda trainer: trainer)

    def resumed(*budget: str):
        parser, argv = build_parser(), ["train", "charlm", "--out", str(out), "--resume", *budget]
        trainer = rnnkit.cli.run_train("charlm", argv, parser, parser.parse_args(argv))[0]
        return trainer.config, trainer.task.model.config.dropout

    config, dropout = resumed()
    assert (config.bf16, config.bptt_steps, config.steps, config.minutes, dropout) == (False, 50, 3, None, 0.2)
    config, _ = resumed("--minutes", "7")
    assert (config.steps, config.minutes) == (None, 7), "a budget given now replaces the first run's"
    saved["steps"] = None  # as if the first run had taken the default budget
    (out / "args.json").write_text(json.dumps(saved))
    config, dropout = resumed()
    assert (config.bf16, config.bptt_steps, config.steps, dropout) == (False, 50, 6000, 0.2), "float32's default"


def test_freed_memory_is_kept_by_default_and_the_flag_turns_it_off():
    parser, defaults = build_parser(), get_app("sentiment").TRAIN_DEFAULTS
    assert train_config(parser.parse_args(["train", "sentiment"]), defaults).keep_freed_memory is True
    off = parser.parse_args(["train", "sentiment", "--no-keep-freed-memory"])
    assert train_config(off, defaults).keep_freed_memory is False


@pytest.mark.skipif(
    not (Path("/proc/cpuinfo").is_file() and platform.machine() in ("x86_64", "AMD64")),
    reason="reads an x86 CPU's flags from Linux's /proc/cpuinfo",
)
def test_cpu_has_bf16_agrees_with_the_cpu_flags():
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = set(next(line for line in lines if line.startswith("flags")).split())
    assert cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def error_of(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("rnnkit: error: ")
    return err


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "the corpus is empty"),
        (b"\x00\x01binary", "is a binary file, not text"),
        ("d\xe9j\xe0 vu".encode("latin-1") * 50, "is not UTF-8 text"),
        (b"too short", "fewer than one chunk needs"),
    ],
)
def test_bad_corpus(capsys, tmp_path, content, message):
    data = tmp_path / "corpus.txt"
    data.write_bytes(content)
    err = error_of(capsys, ["train", "charlm", "--data", str(data), "--steps", "2", "--out", str(tmp_path / "o"), *TINY])
    assert message in err


def test_bad_generation_and_model_dirs(capsys, model_dir, tmp_path):
    assert "prime has characters the model never saw: 'é'" in error_of(
        capsys, ["generate", "--model", str(model_dir), "--prime", "é"]
    )
    assert "temperature must be a number >= 0" in error_of(capsys, ["generate", "--model", str(model_dir), "--temperature", "-1"])
    assert "top_p must be in (0, 1]" in error_of(capsys, ["generate", "--model", str(model_dir), "--top-p", "1.5"])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert "has no model.safetensors" in error_of(capsys, ["generate", "--model", str(tmp_path / "half")])
    assert "does not exist" in error_of(capsys, ["evaluate", "--model", str(tmp_path / "nowhere")])


def test_weight_dropout_and_ema_reach_the_model_directory(corpus, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "charlm", "--data", str(corpus), "--steps", "4", "--out", str(out), *TINY]
    assert main([*argv, "--weight-dropout", "0.25", "--ema-decay", "0.9"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["weight_dropout"] == 0.25 and config["train"]["ema_decay"] == 0.9
    assert rnnkit.load(out).model.rnn.weight_dropout == 0.25


def test_rename_speakers_reaches_the_stream_source_and_is_off_by_default(corpus):
    charlm = get_app("charlm")
    for flags, renamed in (([], False), (["--rename-speakers"], True)):
        args = build_parser().parse_args(["train", "charlm", "--data", str(corpus), "--steps", "1", *TINY, *flags])
        _, batches = charlm.build(args, train_config(args, charlm.TRAIN_DEFAULTS), DistContext())
        assert (batches.epoch_tokens is not None) == renamed
    names = {f"SPEAKER {i}" for i in range(7)}
    assert set(batches.epoch_tokens.names) == names  # the corpus's speakers, all of one length
    first, second = batches.epoch_tokens(0), batches.epoch_tokens(1)
    assert first.shape == second.shape and not torch.equal(first, second), "each epoch renames differently"


def test_bad_training_options(capsys, model_dir, corpus, tmp_path):
    assert "steps must be a positive integer, got 0" in error_of(
        capsys, ["train", "charlm", "--steps", "0", "--out", str(tmp_path)]
    )
    assert "ema_decay must be a number in (0, 1) or None, got 1.5" in error_of(
        capsys, ["train", "charlm", "--steps", "1", "--ema-decay", "1.5", "--out", str(tmp_path)]
    )
    assert "weight_dropout must be a number in [0, 1), got 1.0" in error_of(
        capsys, ["train", "charlm", "--data", str(corpus), "--steps", "1", "--weight-dropout", "1", "--out", str(tmp_path), *TINY]
    )
    err = error_of(capsys, ["train", "charlm", "--data", str(corpus), "--steps", "2", "--out", str(model_dir), *TINY])
    assert "already holds checkpoints: pass --resume" in err
