"""The architectures of the adversarial-training literature, with normalisation inside the model.

Inputs stay in [0, 1] everywhere (the attacks' epsilon-balls and clipping live there);
:class:`NormalizedModel` subtracts the dataset's mean and divides by its std as its first
layer, so an attack differentiates through the normalisation like through any other layer.

Every fastadv network is a :class:`FeatureNetwork`, ``classifier(features(x))``: ``features``
returns the penultimate representation f(x), the input of the last ``nn.Linear`` g =
``classifier`` (what ADR, ASCL and the compactness losses of METHODS.md act on), and
``forward_with_features(x)`` returns ``(f(x), g(f(x)))`` from one forward pass.

Torchvision models, built by name with the prefix ``torchvision:``, have no such split. For
them (and any other network without a ``forward_with_features`` method) :class:`NormalizedModel`
reads the representation through a hook: the input of the network's final classification
``nn.Linear`` (the last one in ``net.modules()`` order with ``num_classes`` outputs, found by
:func:`penultimate_layer`: resnet's ``fc``, vgg's and mobilenet's ``classifier[-1]``, vit's
``heads.head``), captured by a forward pre-hook during one ordinary forward call and flattened to
[B, D]. The hook lives only for that call, so nothing is kept between calls and the features
carry gradients like the logits. ``NormalizedModel(net, mean, std, feature_layer="<module
path>")`` names the layer where the rule picks the wrong one (or none, as for squeezenet, whose
classifier is a convolution).
"""
from __future__ import annotations

import abc
from numbers import Integral, Real
from typing import Callable, ClassVar, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DATASETS, DatasetInfo
from .ensemble import Ensemble

TORCHVISION_PREFIX = "torchvision:"
#: the representations ``forward_with_features(x, layer)`` returns: the penultimate layer (the
#: classifier's input) or the flattened output of the last convolutional block (a plain CNN's)
FEATURE_LAYERS = ("penultimate", "convolutional")

__all__ = ["MODELS", "TORCHVISION_PREFIX", "FEATURE_LAYERS", "Normalize", "NormalizedModel", "FeatureNetwork", "penultimate_layer",
           "DigitsCNN", "DigitsMLP", "DigitsResNet",
           "PreActBlock", "PreActResNet", "WideBasicBlock", "WideResNet", "CNN4C3F",
           "preact_resnet18", "wide_resnet34_10", "build_model", "default_model", "Ensemble"]


def _input_shape(model: str, input_shape) -> Tuple[int, int, int]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"{model}: input_shape must be a (C, H, W) tuple, got {input_shape!r}") from None
    if len(shape) != 3 or not all(isinstance(s, Integral) and s >= 1 for s in shape):
        raise ValueError(f"{model}: input_shape must be (C, H, W) with positive integers, got {input_shape!r}")
    return tuple(int(s) for s in shape)


def _num_classes(model: str, num_classes) -> int:
    if not isinstance(num_classes, Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{model}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


#: fastadv's own networks by name, each registered where it is defined (``@registered("name")`` on
#: its class or factory, which takes ``num_classes`` and ``input_shape``). What a network offers
#: is on its class (a :class:`FeatureNetwork`): ``features``, ``adr_layer`` (the representation
#: ADR takes) and ``residual``; torchvision's classifiers come in as ``torchvision:<name>``.
MODELS: Dict[str, Callable[..., nn.Module]] = {}


def registered(name: str):
    """Adds the decorated class or factory to :data:`MODELS` under ``name``."""
    def register(factory):
        MODELS[name] = factory
        return factory
    return register


# ----------------------------------------------------------------------------- normalisation
class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std as buffers of shape [1, C, 1, 1] (they
    move with the model to its device and are saved in its state dict)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) == 0 or len(mean) != len(std):
            raise ValueError(f"Normalize: mean and std must have one entry per channel, got "
                             f"{len(mean)} and {len(std)}")
        if not all(s > 0 for s in std):
            raise ValueError(f"Normalize: every std must be > 0, got {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"Normalize: x must have shape [B, {self.mean.shape[1]}, H, W], got {list(x.shape)}")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Module):
    """A network behind :class:`Normalize`: takes [0, 1] images, returns logits.

    ``.normalize`` and ``.net`` are the two parts. ``features(x)`` is the network's penultimate
    representation of the normalised input, the input of its final classification layer, and
    ``forward_with_features(x)`` returns ``(features, logits)`` from one forward pass. A
    :class:`FeatureNetwork` gives both itself (``.net.classifier`` maps the features to the
    logits); any other network (torchvision's) through the hook of the module docstring, on the
    layer ``feature_layer`` (a module path of ``net``, e.g. ``"fc"`` or ``"classifier.3"``) or,
    when that is None, on the last ``nn.Linear`` of the network, which must then have as many
    outputs as the network has logits.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float],
                 feature_layer: Optional[str] = None):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        if feature_layer is not None:
            try:
                net.get_submodule(feature_layer)
            except AttributeError as error:
                raise ValueError(f"NormalizedModel: feature_layer {feature_layer!r} is not a module "
                                 f"of {type(net).__name__}: {error}") from None
        self.feature_layer = feature_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def _net_has(self, method: str) -> bool:
        # A method defined on the network's class, not an attribute: torchvision's VGG,
        # MobileNet, EfficientNet... have a *module* called `features` (their convolutional
        # trunk), which is not the penultimate representation.
        return self.feature_layer is None and callable(getattr(type(self.net), method, None))

    @property
    def adr_layer(self) -> str:
        """The layer ADR's compactness acts on (:attr:`FeatureNetwork.adr_layer`): the network's
        own for a fastadv network, else the hooked layer's input ("penultimate")."""
        return self.net.adr_layer if self._net_has("forward_with_features") else "penultimate"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self._net_has("features"):
            return self.net.features(self.normalize(x))
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x: torch.Tensor, layer: str = "penultimate") -> Tuple[torch.Tensor, torch.Tensor]:
        """``(features at layer, logits)`` of the [0, 1] images x from one forward pass; ``layer``
        one of :data:`FEATURE_LAYERS` for a fastadv network, "penultimate" (the hooked layer) for
        any other."""
        x = self.normalize(x)
        if self._net_has("forward_with_features"):
            return self.net.forward_with_features(x, layer)
        if layer != "penultimate":
            raise ValueError(f"NormalizedModel: {type(self.net).__name__} gives its features through a hook on "
                             f"one layer, so layer must be 'penultimate' (the hooked layer), got {layer!r}; "
                             f"name the layer with feature_layer=")
        path = self.feature_layer if self.feature_layer is not None else penultimate_layer(self.net)
        layer = self.net.get_submodule(path)
        inputs = []
        handle = layer.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        try:
            logits = self.net(x)
        finally:
            handle.remove()
        if len(inputs) != 1:
            raise ValueError(f"{type(self.net).__name__}: the feature layer {path!r} ran {len(inputs)} "
                             f"times in one forward pass, not once; name another with feature_layer=")
        if self.feature_layer is None and layer.out_features != logits.shape[-1]:
            raise ValueError(f"{type(self.net).__name__}: its last nn.Linear {path!r} has "
                             f"{layer.out_features} outputs, not the {logits.shape[-1]} logits, so it "
                             f"is not the classifier; name the layer with feature_layer=")
        return torch.flatten(inputs[0], 1), logits

    def extra_repr(self) -> str:
        return "" if self.feature_layer is None else f"feature_layer={self.feature_layer!r}"


def penultimate_layer(net: nn.Module, num_classes: Optional[int] = None) -> str:
    """The module path (for ``net.get_submodule``) of ``net``'s final classification layer,
    whose input is the penultimate representation: the last ``nn.Linear`` in ``net.modules()``
    order with ``num_classes`` outputs (any number when None). ValueError where there is none."""
    linears = [name for name, module in net.named_modules()
               if isinstance(module, nn.Linear) and (num_classes is None or module.out_features == num_classes)]
    if not linears:
        outputs = "" if num_classes is None else f" with {num_classes} outputs"
        raise ValueError(f"{type(net).__name__} has no final classification nn.Linear{outputs} whose "
                         f"input would be its features; name the layer whose input is the "
                         f"representation: NormalizedModel(net, mean, std, feature_layer='<module path>')")
    return linears[-1]


class FeatureNetwork(nn.Module, abc.ABC):
    """A network ``classifier(features(x))``, the split of every fastadv network: a subclass
    defines ``features(x)``, the penultimate representation [B, D], and ``classifier``, the
    ``nn.Linear`` from it to the logits (a subclass without ``features`` cannot be built).

    A plain CNN also defines ``convolutional(x)``, the output of its last convolutional block
    flattened to [B, D'], and ``after_convolutional(c)``, the logits from it, and says
    ``adr_layer = "convolutional"``."""

    #: the layer ADR's compactness terms act on (METHODS.md section 2; seed 003 ch. 3,
    #: supplementary Table 3): "penultimate" for a residual network (the pooled layer) or an
    #: MLP, "convolutional" (the last convolutional block, flattened) for a plain CNN
    adr_layer: ClassVar[str] = "penultimate"

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate representation [B, D] of the (normalised) input."""

    def convolutional(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output of the (normalised) input, flattened [B, D']."""
        raise ValueError(f"{type(self).__name__} has no convolutional block to take features from "
                         f"(layer='convolutional'); its layers are 'penultimate' only")

    def after_convolutional(self, c: torch.Tensor) -> torch.Tensor:
        """The logits from :meth:`convolutional`'s output."""
        raise ValueError(f"{type(self).__name__} has no convolutional block (layer='convolutional')")

    def forward_with_features(self, x: torch.Tensor, layer: str = "penultimate") -> Tuple[torch.Tensor, torch.Tensor]:
        """``(features at layer, logits)`` from one forward pass, ``layer`` one of
        :data:`FEATURE_LAYERS`."""
        if layer == "penultimate":
            features = self.features(x)
            return features, self.classifier(features)
        if layer == "convolutional":
            features = self.convolutional(x)
            return features, self.after_convolutional(features)
        raise ValueError(f"{type(self).__name__}: layer must be one of {FEATURE_LAYERS}, got {layer!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ----------------------------------------------------------------------------- digits CNN
@registered("digits_cnn")
class DigitsCNN(FeatureNetwork):
    """A small CNN for scikit-learn's 8x8 digits: conv 32 -> conv 64 (3x3, padding 1, ReLU) ->
    max-pool 2 -> fc 128 -> ReLU -> fc num_classes.

    The layout of PyTorch's MNIST example (pytorch/examples, mnist/main.py ``Net``) without its
    dropout and with padded convolutions, since an 8x8 image has few pixels to lose. It trains
    on the 1347 training digits in seconds on a CPU.
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8)):
        super().__init__()
        num_classes = _num_classes("digits_cnn", num_classes)
        channels, height, width = _input_shape("digits_cnn", input_shape)
        if height < 2 or width < 2:
            raise ValueError(f"digits_cnn needs inputs of at least 2x2 (one 2x2 max-pool), got {height}x{width}")
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (height // 2) * (width // 2), 128), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(128, num_classes)

    #: ADR acts on the convolutional block (a plain CNN, METHODS.md section 2)
    adr_layer = "convolutional"
    #: the encoder's modules up to the flattened max-pool output (the rest is fc 128 and its ReLU)
    _CONVOLUTIONAL = 6

    def convolutional(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutional block, max-pooled and flattened: [B, 64 * H/2 * W/2]."""
        return self.encoder[:self._CONVOLUTIONAL](x)

    def after_convolutional(self, c: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder[self._CONVOLUTIONAL:](c))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer, the classifier's input: fc 128 after its ReLU, [B, 128]."""
        return self.encoder(x)


# ----------------------------------------------------------------------------- PreActResNet
class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity mappings in deep residual
    networks"): BN-ReLU-conv3x3-BN-ReLU-conv3x3, with a 1x1 convolution on the shortcut where the
    shape changes, fed from the first BN-ReLU as in Rice et al.'s code."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(FeatureNetwork):
    """PreActResNet as used throughout the adversarial-training literature, following Rice, Wong
    and Kolter 2020, "Overfitting in adversarially robust deep learning" (locuslab/robust_overfitting,
    preactresnet.py): conv3x3(64), four stages of pre-activation blocks with 64-128-256-512
    channels (strides 1, 2, 2, 2), final BN + ReLU, average pooling, linear.

    The average pooling is adaptive (global), which equals the original ``avg_pool2d(out, 4)`` on
    32x32 inputs and lets the same network take any input size (e.g. 8x8 digits). The input
    channels follow ``input_shape``.
    """

    #: a residual network (ADR's confidence weight λ_conf defaults to 0 on one)
    residual = True

    def __init__(self, num_blocks: Sequence[int], num_classes: int = 10,
                 input_shape: Sequence[int] = (3, 32, 32)):
        super().__init__()
        num_classes = _num_classes("PreActResNet", num_classes)
        channels = _input_shape("PreActResNet", input_shape)[0]
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], 64
        for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            layers = []
            for block_stride in [stride] + [1] * (blocks - 1):
                layers.append(PreActBlock(in_planes, planes, block_stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.classifier = nn.Linear(512, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer, the classifier's input: the globally pooled final BN-ReLU, [B, 512]."""
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@registered("preact_resnet18")
def preact_resnet18(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> PreActResNet:
    """PreActResNet-18 (Rice et al. 2020): two blocks per stage, 11,172,170 parameters for 10
    classes (the often-quoted 11,173,962 is the post-activation ResNet-18's, whose shortcut
    convolutions have BatchNorms of their own)."""
    return PreActResNet((2, 2, 2, 2), num_classes, input_shape)


# ----------------------------------------------------------------------------- WideResNet
class WideBasicBlock(nn.Module):
    """The wide pre-activation basic block of Zagoruyko and Komodakis 2016 as in the TRADES code:
    BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3. Where the shape changes, the shortcut is a 1x1
    convolution of the pre-activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = (nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
                         if in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideResNet(FeatureNetwork):
    """WideResNet (Zagoruyko and Komodakis 2016, "Wide residual networks") as in the code of
    Madry et al. and TRADES (yaodongyu/TRADES, models/wideresnet.py): conv3x3(16), three stages
    of (depth - 4) / 6 wide blocks with 16k, 32k, 64k channels (strides 1, 2, 2), final BN + ReLU,
    average pooling, linear; Kaiming-normal (fan-out) convolutions, BN weights 1, biases 0.

    Two departures that change no computation: TRADES's file also builds an unused
    ``sub_block1`` (its parameters are never in the forward pass and are left out here), and
    the pooling is adaptive (global), equal to ``avg_pool2d(out, 8)`` on 32x32 inputs.
    """

    #: a residual network (ADR's confidence weight λ_conf defaults to 0 on one)
    residual = True

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10,
                 input_shape: Sequence[int] = (3, 32, 32), dropout: float = 0.0):
        super().__init__()
        if not isinstance(depth, Integral) or depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet: depth must be 6n + 4 with n >= 1, got {depth!r}")
        if not isinstance(widen_factor, Integral) or widen_factor < 1:
            raise ValueError(f"WideResNet: widen_factor must be a positive integer, got {widen_factor!r}")
        if not isinstance(dropout, Real) or not 0 <= dropout < 1:
            raise ValueError(f"WideResNet: dropout must be in [0, 1), got {dropout!r}")
        num_classes = _num_classes("WideResNet", num_classes)
        channels = _input_shape("WideResNet", input_shape)[0]
        blocks = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(channels, 16, 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], 16
        for planes, stride in zip(widths, (1, 2, 2)):
            layers = []
            for block_stride in [stride] + [1] * (blocks - 1):
                layers.append(WideBasicBlock(in_planes, planes, block_stride, float(dropout)))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[-1])
        self.classifier = nn.Linear(widths[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer, the classifier's input: the globally pooled final BN-ReLU, [B, 64k]."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn(out))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


@registered("wide_resnet34_10")
def wide_resnet34_10(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> WideResNet:
    """WRN-34-10 (depth 34, widen factor 10, no dropout): 46,160,474 parameters for 10 classes."""
    return WideResNet(34, 10, num_classes, input_shape)


# ----------------------------------------------------------------------------- CNN-4C3F
@registered("cnn_4c3f")
class CNN4C3F(FeatureNetwork):
    """CNN-4C3F(32) of seed 003 (Bui's thesis, supplementary of the ADR chapter, "Model
    architectures"): generator ``2 x Conv(32) -> MaxPool -> 2 x Conv(32) -> MaxPool -> Flatten``,
    classifier ``FC(200) -> ReLU -> Dropout(0.5) -> FC(200) -> ReLU -> FC(num_classes)``.

    Resolutions of what the seed leaves open:

    - Convolutions are 3x3, stride 1, each followed by ReLU, and *unpadded*: the seed says the
      architecture is identical to Carlini and Wagner 2017's, whose Keras code uses the default
      ``padding='valid'``; max-pooling is 2x2 with stride 2. Inputs must therefore be at least
      16x16 (28x28 flattens to 32*4*4 = 512 features, 32x32 to 32*5*5 = 800); 8x8 digits are
      rejected with a ValueError.
    - Channels are (32, 32) as the seed's CNN-4C3F(32) text reads. The thesis' Table 8 and
      Carlini and Wagner's MNIST network use 64 channels in the second pair:
      ``CNN4C3F(..., conv_channels=(32, 64))``; CNN-4C3F(64) is ``conv_channels=(64, 64),
      hidden=256`` as the seed writes it.
    - ``features`` is the penultimate layer (the second FC(200) after its ReLU), like every
      fastadv network; the seed's "generator" (the flattened convolutional output, where ADR
      applies its compactness terms: ``adr_layer = "convolutional"``) is the submodule
      ``generator`` and :meth:`convolutional`.
    """

    adr_layer = "convolutional"

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32),
                 conv_channels: Sequence[int] = (32, 32), hidden: int = 200):
        super().__init__()
        num_classes = _num_classes("cnn_4c3f", num_classes)
        channels, height, width = _input_shape("cnn_4c3f", input_shape)
        first, second = conv_channels

        def after_stage(size: int) -> int:  # two unpadded 3x3 convolutions, then a 2x2 max-pool
            return (size - 4) // 2

        out_height, out_width = after_stage(after_stage(height)), after_stage(after_stage(width))
        if out_height < 1 or out_width < 1:
            raise ValueError(f"cnn_4c3f needs inputs of at least 16x16 (four unpadded 3x3 "
                             f"convolutions and two 2x2 max-pools), got {height}x{width}; "
                             f"use digits_cnn or preact_resnet18 for smaller images")
        self.generator = nn.Sequential(
            nn.Conv2d(channels, first, 3), nn.ReLU(inplace=True),
            nn.Conv2d(first, first, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3), nn.ReLU(inplace=True),
            nn.Conv2d(second, second, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten())
        self.hidden = nn.Sequential(
            nn.Linear(second * out_height * out_width, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer, the classifier's input: the second FC(hidden) after its ReLU, [B, hidden]."""
        return self.hidden(self.generator(x))

    def convolutional(self, x: torch.Tensor) -> torch.Tensor:
        """The generator: the second max-pool's output, flattened."""
        return self.generator(x)

    def after_convolutional(self, c: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.hidden(c))


@registered("digits_mlp")
class DigitsMLP(FeatureNetwork):
    """A multilayer perceptron for the 8x8 digits: flatten -> fc 256 -> ReLU -> fc 128 -> ReLU
    -> fc num_classes. With :class:`DigitsResNet` and :class:`DigitsCNN` it makes an ensemble
    of different architectures on the digits (seed 003 ch. 4 attacks an ensemble of four
    different CIFAR architectures; these are their small stand-ins)."""

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8), hidden: int = 256):
        super().__init__()
        num_classes = _num_classes("digits_mlp", num_classes)
        channels, height, width = _input_shape("digits_mlp", input_shape)
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * height * width, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden // 2), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden // 2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer, the classifier's input: fc hidden/2 after its ReLU, [B, hidden/2]."""
        return self.encoder(x)


@registered("digits_resnet")
class DigitsResNet(FeatureNetwork):
    """A small residual network for the 8x8 digits: conv 32 (3x3) -> two pre-activation blocks
    of 32 channels (:class:`PreActBlock`, the second with stride 2) -> BN -> ReLU -> global
    average pool -> fc num_classes."""

    #: a residual network (ADR's confidence weight λ_conf defaults to 0 on one)
    residual = True

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8), width: int = 32):
        super().__init__()
        num_classes = _num_classes("digits_resnet", num_classes)
        channels, _, _ = _input_shape("digits_resnet", input_shape)
        self.stem = nn.Conv2d(channels, width, 3, padding=1, bias=False)
        self.blocks = nn.Sequential(PreActBlock(width, width, 1), PreActBlock(width, width, 2))
        self.head = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer, the classifier's input: the globally pooled final BN-ReLU, [B, width]."""
        return self.head(self.blocks(self.stem(x)))


def _torchvision_model(name: str, num_classes: int, input_shape: Tuple[int, int, int]) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)  # classifiers only
    if name not in available:
        raise ValueError(f"{TORCHVISION_PREFIX}{name} is not a torchvision classifier; choose "
                         f"one of {available}")
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    # Torchvision's classifiers are written for 3x224x224; many take 32x32, some need larger
    # inputs (inception_v3, the ViTs) or three channels. A dry run says which, once, here
    # rather than as a shape error deep in the first training step.
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, *input_shape))
    except RuntimeError as error:
        raise ValueError(f"{TORCHVISION_PREFIX}{name} cannot take inputs of shape {input_shape}: {error}") from None
    net.train(was_training)
    return net


def build_model(name: str, info: DatasetInfo) -> NormalizedModel:
    """Build a network for a dataset, behind its normalisation.

    ``name`` is a key of :data:`MODELS` or ``"torchvision:<model>"`` for any torchvision
    classifier (built untrained with ``torchvision.models.get_model(model, weights=None,
    num_classes=...)``; its features are the input of :func:`penultimate_layer`, read through the
    hook of the module docstring). ``info`` gives the number of classes, the input shape and the mean/std.
    """
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"build_model: info must be a DatasetInfo, got {type(info).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"build_model: name must be a string, got {type(name).__name__}")
    feature_layer = None
    if name.startswith(TORCHVISION_PREFIX):
        net = _torchvision_model(name[len(TORCHVISION_PREFIX):], info.num_classes, tuple(info.input_shape))
        try:
            feature_layer = penultimate_layer(net, info.num_classes)
        except ValueError:
            pass  # a convolutional classifier (squeezenet): it trains; asking for its features raises
    elif name in MODELS:
        net = MODELS[name](num_classes=info.num_classes, input_shape=info.input_shape)
    else:
        raise ValueError(f"build_model: model must be one of {tuple(MODELS)} or "
                         f"'{TORCHVISION_PREFIX}<name>' (e.g. '{TORCHVISION_PREFIX}resnet18'), got {name!r}")
    return NormalizedModel(net, info.mean, info.std, feature_layer)


def default_model(dataset_name: str) -> str:
    """The model fastadv trains on a dataset when none is named (its ``default_model`` in
    :data:`fastadv.data.DATASETS`): ``digits_cnn`` on the digits, ``preact_resnet18`` (the
    literature's CIFAR workhorse) elsewhere."""
    if not isinstance(dataset_name, str) or dataset_name.lower() not in DATASETS:
        raise ValueError(f"default_model: dataset must be one of {tuple(DATASETS)}, got {dataset_name!r}")
    return DATASETS[dataset_name.lower()].default_model
