"""DepthwiseCNN (notebook 09), its training recipes, and BatchNorm folding into depthwise
convolutions, also when a channel's running variance is tiny (a dead channel)."""

import math

import pytest
import torch
from torch import nn

from ptqlib.batchnorm import fold_model
from ptqlib.errors import InputError
from ptqlib.models import DepthwiseCNN, build_model, count_parameters, model_name
from ptqlib.plan import is_depthwise
from ptqlib.training import RECIPES, baseline_path, recipe_for, train, training_meta


def random_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics, gamma and beta (a trained look)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator))
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.1)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    return model.eval()


def test_depthwise_cnn_shape_and_layers():
    model = build_model("dwcnn")
    assert isinstance(model, DepthwiseCNN) and model_name(model) == "dwcnn"
    assert 8_000 < count_parameters(model) < 10_000
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    convs = [(name, m) for name, m in model.named_children() if isinstance(m, nn.Conv2d)]
    depthwise = [name for name, module in convs if is_depthwise(module)]
    assert depthwise == ["dw1", "dw2", "dw3"]
    assert tuple(model.dw2.weight.shape) == (32, 1, 3, 3)


def test_recipes_are_named_and_checked():
    assert set(RECIPES["dwcnn"]) == {"default", "hot"}
    hot = recipe_for("dwcnn", "hot")
    assert (hot.optimizer, hot.learning_rate, hot.momentum, hot.cosine) == ("sgd", 2.0, 0.9, True)
    with pytest.raises(InputError, match="recipe"):
        recipe_for("cnn", "hot")
    with pytest.raises(InputError, match="model"):
        recipe_for("resnet", "default")


def test_baseline_path_names_the_recipe(offline_data, tmp_path):
    hot = baseline_path(offline_data, 8, 0, tmp_path, model="dwcnn", recipe="hot")
    default = baseline_path(offline_data, 8, 0, tmp_path, model="dwcnn")
    assert hot.name.startswith("dwcnn_hot_fp32_e8_s0_")
    assert default.name.startswith("dwcnn_fp32_e8_s0_") and hot != default


def test_one_epoch_of_the_hot_recipe_is_recorded(offline_data):
    result = train(offline_data, epochs=1, seed=0, progress=False, model="dwcnn", recipe="hot")
    assert isinstance(result.model, DepthwiseCNN) and not result.model.training
    meta = training_meta(result, offline_data, 1, 0, "hot")
    assert meta["recipe"] == "hot"
    assert "recipe" not in training_meta(result, offline_data, 1, 0)


def test_folding_depthwise_convs_keeps_the_outputs():
    model = random_statistics(DepthwiseCNN())
    folded = fold_model(model)
    assert is_depthwise(folded.dw1) and folded.dw1.bias is not None
    images = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(folded(images), model(images), atol=1e-4)


def test_folding_with_a_tiny_running_variance_multiplies_the_filter_by_gamma_over_root_eps():
    model = random_statistics(DepthwiseCNN())
    channel, gamma = 5, 0.7
    with torch.no_grad():
        model.dw3_bn.running_var[channel] = 1e-20  # the channel saw only zeros in training
        model.dw3_bn.weight[channel] = gamma
    folded = fold_model(model)
    factor = gamma / math.sqrt(1e-20 + model.dw3_bn.eps)  # ~ 316 gamma
    assert factor == pytest.approx(gamma * 316.2, rel=1e-3)
    expected = model.dw3.weight[channel].double() * factor
    assert torch.allclose(folded.dw3.weight[channel].double(), expected, rtol=1e-6)
    # The other channels' filters keep their size, so the one tensor's range is dominated:
    ranges = folded.dw3.weight.abs().flatten(1).amax(dim=1)
    assert int(ranges.argmax()) == channel
    # Harmless in float: the folded model computes what the unfolded one does.
    images = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(images)
        assert torch.allclose(folded(images), reference, atol=1e-4 * float(reference.abs().max()))


def test_a_recipe_the_model_lacks_is_one_line_before_any_work(capsys):
    from ptqlib.app.cli import EXIT_ERROR, main

    arguments = ["train", "--model", "cnn", "--recipe", "hot", "--data-dir", "/nowhere"]
    assert main(arguments) == EXIT_ERROR
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert "recipe" in error and "hot" in error and error.count("\n") == 0
    assert "MNIST" not in captured.out  # it failed before loading any data
