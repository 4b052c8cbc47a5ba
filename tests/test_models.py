import pytest
import torch

from fastadv.data import dataset_info
from fastadv.models import (MODELS, CNN4C3F, Normalize, NormalizedModel, build_model, default_model,
                            preact_resnet18, wide_resnet34_10)

# Each network on the data set it is meant for, and the width of its penultimate layer.
CASES = [
    ("digits_cnn", "digits", 128),
    ("digits_mlp", "digits", 128),
    ("digits_resnet", "digits", 32),
    ("preact_resnet18", "cifar10", 512),
    ("preact_resnet18", "cifar100", 512),
    ("wide_resnet34_10", "cifar10", 640),
    ("cnn_4c3f", "cifar10", 200),
]


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    return {(name, data): build_model(name, dataset_info(data)).eval() for name, data, _ in CASES}


def test_every_registered_model_is_covered():
    assert {name for name, _, _ in CASES} == set(MODELS)


@pytest.mark.parametrize("name, data, width", CASES)
def test_forward_and_features_shapes(built, name, data, width):
    model, info = built[name, data], dataset_info(data)
    assert isinstance(model, NormalizedModel)
    x = torch.rand(2, *info.input_shape)
    with torch.no_grad():
        logits, features = model(x), model.features(x)
    assert logits.shape == (2, info.num_classes) and logits.dtype == torch.float32
    assert features.shape == (2, width)
    # The network is its last layer on top of its features.
    torch.testing.assert_close(model.net.classifier(features), logits)


@pytest.mark.parametrize("name, data, width", CASES)
def test_normalisation_is_inside_the_model(built, name, data, width):
    model, info = built[name, data], dataset_info(data)
    x = torch.rand(2, *info.input_shape)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std))
        assert not torch.allclose(model(x), model.net(x))


def test_gradients_reach_the_input_through_the_normalisation():
    model = build_model("digits_cnn", dataset_info("digits"))
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_parameter_counts():
    # Rice et al.'s PreActResNet-18. 11,173,962 is the post-activation ResNet-18's count: its
    # three shortcut convolutions carry BatchNorms (2 * (128 + 256 + 512) = 1,792 parameters)
    # that the pre-activation network does not have.
    assert parameter_count(preact_resnet18(10)) == 11_172_170
    with torch.device("meta"):
        assert parameter_count(wide_resnet34_10(10)) == 46_160_474


def test_cnn_4c3f_is_unpadded():
    # Carlini and Wagner's layout: 28x28 -> 26 -> 24 -> 12 -> 10 -> 8 -> 4, so 32 * 4 * 4 inputs
    # to FC(200); 32x32 -> 5x5.
    assert CNN4C3F(10, (1, 28, 28)).hidden[0].in_features == 32 * 4 * 4
    assert CNN4C3F(10, (3, 32, 32)).hidden[0].in_features == 32 * 5 * 5
    assert CNN4C3F(10, (1, 28, 28), conv_channels=(32, 64)).hidden[0].in_features == 64 * 4 * 4
    assert CNN4C3F(10, (1, 16, 16))(torch.rand(2, 1, 16, 16)).shape == (2, 10)


def test_model_too_large_for_the_input_is_rejected():
    with pytest.raises(ValueError, match="cnn_4c3f needs inputs of at least 16x16.*got 8x8"):
        build_model("cnn_4c3f", dataset_info("digits"))


def test_fastadv_networks_take_any_channel_count_and_small_images():
    digits = dataset_info("digits")
    for name in ("preact_resnet18", "wide_resnet34_10"):
        with torch.device("meta"):
            model = build_model(name, digits)
        assert model(torch.rand(2, 1, 8, 8, device="meta")).shape == (2, 10)


def test_torchvision_model_by_name():
    info = dataset_info("cifar10")
    model = build_model("torchvision:resnet18", info)
    assert isinstance(model, NormalizedModel)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert model.training
    with pytest.raises(TypeError, match="features"):
        model.features(torch.rand(2, 3, 32, 32))


def test_torchvision_model_that_cannot_take_the_input_is_rejected():
    with pytest.raises(ValueError, match=r"torchvision:resnet18 cannot take inputs of shape \(1, 8, 8\)"):
        build_model("torchvision:resnet18", dataset_info("digits"))
    with pytest.raises(ValueError, match="not a torchvision classifier"):
        build_model("torchvision:not_a_model", dataset_info("cifar10"))


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="digits_cnn.*digits_mlp.*digits_resnet.*preact_resnet18.*wide_resnet34_10.*cnn_4c3f.*torchvision:"):
        build_model("resnet1000", dataset_info("cifar10"))


def test_default_models():
    assert default_model("digits") == "digits_cnn"
    for name in ("cifar10", "cifar100", "synthetic"):
        assert default_model(name) == "preact_resnet18"
    with pytest.raises(ValueError, match="dataset"):
        default_model("imagenet")


def test_normalize_buffers_and_validation():
    normalize = Normalize((0.5, 0.25, 0.125), (0.5, 0.5, 0.25))
    assert normalize.mean.shape == normalize.std.shape == (1, 3, 1, 1)
    assert set(normalize.state_dict()) == {"mean", "std"}
    x = torch.ones(2, 3, 4, 4)
    torch.testing.assert_close(normalize(x)[:, :, 0, 0], torch.tensor([[1.0, 1.5, 3.5]] * 2))
    with pytest.raises(ValueError, match="x must have shape"):
        normalize(torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalize((0.5,), (0.0,))
    with pytest.raises(ValueError, match="one entry per channel"):
        Normalize((0.5, 0.5), (0.5,))
