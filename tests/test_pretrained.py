"""The shipped FP32 DepthwiseCNN of notebook 09: it loads with its digest, says how it was
trained, and tells the notebook's story on any CPU (ptqlib's integer engine is exact)."""

import pytest

from ptqlib.app.cli import build_parser
from ptqlib.catalog import default_seed
from ptqlib.data import MNISTSplit, calibration_images
from ptqlib.errors import InputError
from ptqlib.evaluation import accuracy
from ptqlib.fast import FastInt8Model
from ptqlib.models import DepthwiseCNN
from ptqlib.pretrained import PRETRAINED, load_pretrained, pretrained_path
from ptqlib.ptq import post_training_quantize


def test_the_shipped_model_loads_and_names_its_origin():
    model, meta = load_pretrained("dwcnn_hot")
    assert isinstance(model, DepthwiseCNN)
    assert meta["recipe"] == "hot" and meta["seed"] == 2 and meta["epochs"] == 8
    assert meta["command"] == "python -m ptqlib train --model dwcnn --recipe hot --seed 2"
    assert meta["cpu"] and meta["torch"].startswith("2.14")
    assert pretrained_path("dwcnn_hot").stat().st_size < 60_000


def test_the_sensible_contrast_model_names_its_origin():
    model, meta = load_pretrained("dwcnn_default")
    assert isinstance(model, DepthwiseCNN)
    assert "recipe" not in meta and meta["seed"] == 2 and meta["epochs"] == 8
    assert meta["command"] == "python -m ptqlib train --model dwcnn --recipe default --seed 2"
    assert pretrained_path("dwcnn_default").stat().st_size < 60_000


def test_an_unknown_name_is_one_clear_error():
    with pytest.raises(InputError, match="no shipped checkpoint 'resnet'"):
        pretrained_path("resnet")
    assert list(PRETRAINED) == ["dwcnn_hot", "dwcnn_default"]


def test_training_the_hot_recipe_defaults_to_the_story_seed():
    args = build_parser().parse_args(["train", "--model", "dwcnn", "--recipe", "hot"])
    assert args.seed is None and default_seed(args.model, args.recipe) == 2
    assert default_seed("dwcnn") == default_seed("simplenet") == 0


def int8_accuracies(model, offline_data) -> tuple[float, dict[bool, float]]:
    """FP32 accuracy and INT8 accuracy per tensor (False) and per channel (True)."""
    images = calibration_images(offline_data.train, 200)
    test = MNISTSplit(offline_data.test.images[:400], offline_data.test.labels[:400])
    by_granularity = {
        per_channel: accuracy(
            FastInt8Model(  # the teaching path's integers, quickly (the parity matrix)
                post_training_quantize(
                    model, images, observer="minmax", per_channel=per_channel, progress=False
                ).int8_model
            ),
            test,
        )
        for per_channel in (False, True)
    }
    return accuracy(model, test), by_granularity


def test_per_tensor_int8_breaks_the_shipped_model_and_per_channel_repairs_it(offline_data):
    """The story of notebook 09, on the weights every reader gets: per-tensor INT8 at chance,
    per-channel within two points of FP32."""
    fp32, by_granularity = int8_accuracies(load_pretrained("dwcnn_hot")[0], offline_data)
    assert fp32 > 0.93
    assert by_granularity[False] < 0.2
    assert by_granularity[True] > fp32 - 0.02


def test_per_tensor_int8_does_not_break_the_sensibly_trained_model(offline_data):
    fp32, by_granularity = int8_accuracies(load_pretrained("dwcnn_default")[0], offline_data)
    assert fp32 > 0.93
    assert by_granularity[False] > fp32 - 0.02
