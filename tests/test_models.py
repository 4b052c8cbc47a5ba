import gc
import weakref

import pytest
import torch

from fastadv.data import DATASETS, dataset_info
from fastadv.models import (FeatureNetwork, MODELS, CNN4C3F, Normalize, NormalizedModel, build_model, default_model,
                            penultimate_layer, preact_resnet18, wide_resnet34_10)

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
    assert model.feature_layer == "fc"


def test_torchvision_model_that_cannot_take_the_input_is_rejected():
    with pytest.raises(ValueError, match=r"torchvision:resnet18 cannot take inputs of shape \(1, 8, 8\)"):
        build_model("torchvision:resnet18", dataset_info("digits"))
    with pytest.raises(ValueError, match="not a torchvision classifier"):
        build_model("torchvision:not_a_model", dataset_info("cifar10"))


def test_unknown_model_lists_the_choices():
    choices = ".*".join(MODELS)
    with pytest.raises(ValueError, match=f"{choices}.*torchvision:"):
        build_model("resnet1000", dataset_info("cifar10"))


def test_default_models():
    assert default_model("digits") == "digits_cnn"
    for name in ("cifar10", "cifar100", "synthetic"):
        assert default_model(name) == "preact_resnet18"
    with pytest.raises(ValueError, match="dataset"):
        default_model("imagenet")


def test_every_dataset_default_model_is_registered_and_builds():
    """A dataset names its default model where it is declared (fastadv.data.DATASETS); it must be
    one of MODELS and build for the dataset's shape and classes."""
    for name, dataset in DATASETS.items():
        assert dataset.default_model in MODELS, name
        model = build_model(dataset.default_model, dataset.info)
        x = torch.rand(2, *dataset.info.input_shape)
        assert model(x).shape == (2, dataset.info.num_classes)


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


@pytest.mark.parametrize("name, data, width", CASES)
def test_forward_with_features_is_one_pass_of_features_and_logits(built, name, data, width):
    model, info = built[name, data], dataset_info(data)
    x = torch.rand(2, *info.input_shape)
    with torch.no_grad():
        features, logits = model.forward_with_features(x)
        assert features.shape == (2, width) and logits.shape == (2, info.num_classes)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(features, model.features(x), rtol=0, atol=1e-6)
    # The features carry gradients to the input (through the normalisation) and the weights.
    x.requires_grad_(True)
    first_weight = next(model.net.parameters())
    features, _ = model.forward_with_features(x)
    x_grad, weight_grad = torch.autograd.grad(features.square().sum(), (x, first_weight))
    assert x_grad.abs().sum() > 0 and weight_grad.abs().sum() > 0


@pytest.fixture(scope="module")
def torchvision_models():
    torch.manual_seed(0)
    return {name: build_model(f"torchvision:{name}", dataset_info("cifar10")).eval()
            for name in ("resnet18", "mobilenet_v3_small")}


@pytest.mark.parametrize("name, layer", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3")])
def test_torchvision_features_are_the_input_of_the_final_linear(torchvision_models, name, layer):
    model = torchvision_models[name]
    assert model.feature_layer == layer
    final = model.net.get_submodule(layer)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features, logits = model.forward_with_features(x)
        assert features.shape == (2, final.in_features)
        torch.testing.assert_close(logits, model(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(model.features(x), features, rtol=0, atol=1e-6)
        torch.testing.assert_close(final(features), logits)
    # The hook lives only for the call.
    assert not final._forward_pre_hooks
    x.requires_grad_(True)
    features = model.features(x)
    first_weight = next(model.net.parameters())
    x_grad, weight_grad = torch.autograd.grad(features.square().sum(), (x, first_weight))
    assert x_grad.abs().sum() > 0 and weight_grad.abs().sum() > 0


def test_the_hook_keeps_no_tensor_after_the_call(torchvision_models):
    model = torchvision_models["resnet18"]
    with torch.no_grad():
        features, logits = model.forward_with_features(torch.rand(2, 3, 32, 32))
    references = weakref.ref(features), weakref.ref(logits)
    del features, logits
    gc.collect()
    assert all(reference() is None for reference in references)


def test_resnet18_classifier_reproduces_the_logits_from_the_features(torchvision_models):
    model = torchvision_models["resnet18"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features, logits = model.forward_with_features(x)
    torch.testing.assert_close(model.net.fc(features), logits)


def test_feature_layer_by_name():
    torch.manual_seed(0)
    info = dataset_info("digits")
    net = MODELS["digits_cnn"](num_classes=10, input_shape=info.input_shape).eval()
    model = NormalizedModel(net, info.mean, info.std)
    # The hook on a fastadv network's classifier reads its own features.
    hooked = NormalizedModel(net, info.mean, info.std, feature_layer="classifier")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        for expected, found in zip(model.forward_with_features(x), hooked.forward_with_features(x)):
            torch.testing.assert_close(found, expected, rtol=0, atol=1e-6)
        # An earlier layer: the input of the first convolution is the normalised image, flattened.
        early = NormalizedModel(net, info.mean, info.std, feature_layer="encoder.0")
        torch.testing.assert_close(early.features(x), early.normalize(x).flatten(1))
    assert penultimate_layer(net, 10) == "classifier"
    with pytest.raises(ValueError, match="feature_layer 'nowhere' is not a module of DigitsCNN"):
        NormalizedModel(net, info.mean, info.std, feature_layer="nowhere")


class ConvolutionalHead(torch.nn.Module):
    """A classifier without an nn.Linear (like squeezenet's)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 10, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_network_without_a_final_linear_is_a_clear_error():
    model = NormalizedModel(ConvolutionalHead(), (0.5,) * 3, (0.25,) * 3)
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)
    for read in (model.features, model.forward_with_features):
        with pytest.raises(ValueError, match="ConvolutionalHead has no final classification nn.Linear"):
            read(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="ConvolutionalHead has no final classification nn.Linear with 10 outputs"):
        penultimate_layer(ConvolutionalHead(), 10)


def test_a_last_linear_that_is_not_the_classifier_is_a_clear_error():
    # A projection after a convolutional classifier: the last nn.Linear does not give the logits.
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.Unflatten(1, (4, 1, 1)),
                              torch.nn.Conv2d(4, 10, 1), torch.nn.Flatten())
    model = NormalizedModel(net, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match="last nn.Linear '1' has 4 outputs, not the 10 logits"):
        model.features(torch.rand(2, 3, 2, 2))


def test_a_feature_network_must_define_its_features():
    class NoFeatures(FeatureNetwork):
        pass

    with pytest.raises(TypeError, match="features"):
        NoFeatures()
