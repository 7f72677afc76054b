"""params.yaml: the book's defaults, validation errors that name the key, and `set_params` overrides."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tasks.errors import ParamsError
from tasks.params import flatten, load_params, parse_params, set_params

REPO_PARAMS = Path(__file__).parents[1] / "params.yaml"


@pytest.fixture
def params_copy(tmp_path: Path) -> Path:
    target = tmp_path / "params.yaml"
    shutil.copyfile(REPO_PARAMS, target)
    return target


def test_repo_params_hold_the_books_word2vec_hyperparameters():
    params = load_params(REPO_PARAMS)
    pre, train = params.word2vec.preprocess, params.word2vec.train
    assert train.lr == 0.002
    assert train.epochs == 5
    assert train.batch_size == 512
    assert train.embed_size == 100
    assert pre.max_window_size == 5
    assert pre.num_noise_words == 5
    assert pre.min_freq == 10
    assert pre.subsample_t == 1e-4
    assert pre.subsample is True
    assert train.resample_every_epoch is False


def test_relative_paths_resolve_against_the_params_file_directory(params_copy: Path):
    params = load_params(params_copy)
    assert params.root() == params_copy.parent.resolve()
    assert params.path("data/ptb") == params_copy.parent.resolve() / "data" / "ptb"
    assert params.path("/abs/x") == Path("/abs/x")


def test_unknown_key_error_names_the_full_dotted_key():
    with pytest.raises(ParamsError) as info:
        parse_params({"word2vec": {"train": {"lrr": 0.01}}})
    assert "unknown key 'word2vec.train.lrr'" in str(info.value)


def test_unknown_key_in_a_file_names_the_file_and_key(params_copy: Path):
    params_copy.write_text(params_copy.read_text().replace("  train:\n", "  train:\n    lerning_rate: 1\n"))
    with pytest.raises(ParamsError) as info:
        load_params(params_copy)
    message = str(info.value)
    assert str(params_copy) in message
    assert "'word2vec.train.lerning_rate'" in message


@pytest.mark.parametrize(("section", "key", "value"), [
    ("train", "lr", "abc"),
    ("train", "epochs", 2.5),
    ("preprocess", "subsample_t", "tiny"),
])
def test_wrong_type_error_names_the_key_and_the_found_value(section: str, key: str, value: object):
    with pytest.raises(ParamsError) as info:
        parse_params({"word2vec": {section: {key: value}}})
    message = str(info.value)
    assert f"'word2vec.{section}.{key}'" in message
    assert f"(found {value!r})" in message


def test_out_of_range_value_is_rejected_with_its_key():
    with pytest.raises(ParamsError, match=r"'word2vec\.train\.lr'.*found -0\.1"):
        parse_params({"word2vec": {"train": {"lr": -0.1}}})


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_unsupported_device_is_rejected(device: str):
    with pytest.raises(ParamsError, match=rf"'device'.*found '{device}'"):
        parse_params({"device": device})


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_supported_devices_are_accepted(device: str):
    assert parse_params({"device": device}).device == device


def test_set_params_applies_override_and_keeps_comments(params_copy: Path):
    before = params_copy.read_text()
    set_params(params_copy, ["word2vec.train.lr=0.01"])
    after = params_copy.read_text()

    params = load_params(params_copy)
    assert params.word2vec.train.lr == 0.01
    comments = [line.split("#", 1)[1] for line in before.splitlines() if "#" in line]
    assert len(comments) >= 5  # the repo file is commented; guard against a vacuous loop
    for comment in comments:
        assert comment in after
    # Every other value is unchanged.
    expected = flatten(load_params(REPO_PARAMS))
    expected["word2vec.train.lr"] = 0.01
    assert flatten(params) == expected
    assert "    lr: 0.01\n" in after


def test_set_params_applies_several_overrides_with_yaml_types(params_copy: Path):
    set_params(params_copy, ["word2vec.train.epochs=2", "word2vec.preprocess.subsample=false", "device=cpu"])
    params = load_params(params_copy)
    assert params.word2vec.train.epochs == 2
    assert params.word2vec.preprocess.subsample is False
    assert params.device == "cpu"


@pytest.mark.parametrize(("override", "names"), [
    ("word2vec.train.lr=abc", "'word2vec.train.lr'"),
    ("nosuch.lr=1", "'nosuch' is not a section"),
    ("word2vec.nosuch.lr=1", "'nosuch' is not a section"),
    ("word2vec.train.nosuch=1", "'word2vec.train.nosuch'"),
    ("word2vec.train.lr", "expected KEY=VALUE"),
    ("device=gpu", "'device'"),
])
def test_bad_override_raises_and_leaves_the_file_byte_identical(params_copy: Path, override: str, names: str):
    before = params_copy.read_bytes()
    with pytest.raises(ParamsError) as info:
        set_params(params_copy, ["word2vec.train.epochs=2", override])
    assert names in str(info.value)
    assert params_copy.read_bytes() == before
    assert sorted(p.name for p in params_copy.parent.iterdir()) == ["params.yaml"]  # no temp file left


def test_flatten_gives_full_dotted_keys():
    flat = flatten(load_params(REPO_PARAMS))
    assert flat["word2vec.train.lr"] == 0.002
    assert flat["word2vec.preprocess.subsample_t"] == 1e-4
    assert flat["word2vec.data.synthetic.sentences"] == yaml.safe_load(REPO_PARAMS.read_text())[
        "word2vec"]["data"]["synthetic"]["sentences"]
    assert flat["seed"] == 0
    assert flat["mlflow.tracking_uri"] == "sqlite:///mlflow.db"
    assert not any(isinstance(value, dict) for value in flat.values())


def test_flatten_of_a_nested_dict():
    assert flatten({"a": {"b": {"c": 1}, "d": 2}, "e": 3}) == {"a.b.c": 1, "a.d": 2, "e": 3}


def test_missing_params_file_is_a_params_error(tmp_path: Path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_invalid_yaml_is_a_params_error(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("word2vec: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)


def _set_lr(path: str, index: int) -> None:
    set_params(path, [f"word2vec.train.lr={0.001 * (index + 1)}"])


def test_concurrent_set_params_calls_in_separate_processes_all_succeed(params_copy: Path):
    """Each call writes its own temporary file (a fixed `.params.yaml.tmp` made concurrent calls
    rename each other's file away); every call succeeds and the file ends valid, holding one call's value."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    calls = 400
    with context.Pool(8) as pool:
        results = [pool.apply_async(_set_lr, (str(params_copy), i)) for i in range(calls)]
        errors = []
        for result in results:
            try:
                result.get(timeout=120)
            except Exception as error:  # collected to report every failed call
                errors.append(repr(error))
    assert errors == []
    assert load_params(params_copy).word2vec.train.lr in {0.001 * (i + 1) for i in range(calls)}
    assert [p.name for p in params_copy.parent.iterdir()] == ["params.yaml"]
