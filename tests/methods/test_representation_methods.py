"""The representation methods of seed 003 ch. 3 (ADR, ASCL): each loss against its METHODS.md
equation computed independently in float64 from fixed features and logits (the contrastive
terms by fastadv.reference.contrastive, the rest by hand), ASCL's two-view layout, ADR's λ_conf
resolution, a training step of each, and bad options refused by name."""
import math

import pytest
import torch
from torch import nn

from fastadv.data import dataset_info
from fastadv.ensemble import Ensemble
from fastadv.methods import build_method
from fastadv.methods.adr import adr_loss, input_channels, is_residual
from fastadv.methods.ascl import ascl_loss, ascl_views
from fastadv.models import MODELS, FeatureNetwork, build_model
from fastadv.reference import contrastive as reference

STRATEGIES = ("global", "hard-ls", "soft-ls", "leaked-ls")


def fixed_representations(seed=0, batch=8, dim=5, classes=4):
    g = torch.Generator().manual_seed(seed)
    f_nat = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    f_adv = f_nat + 0.5 * torch.randn(batch, dim, generator=g, dtype=torch.float64)
    z_nat = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 2
    z_adv = z_nat + torch.randn(batch, classes, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=g)
    return f_nat, z_nat, f_adv, z_adv, y


def softmax_row(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def by_hand(z_nat, z_adv, y):
    """Batch means of CE(h(x), y), CE(h(x'), y), H(h(x)), H(h(x')) and KL(h(x) ‖ h(x'))."""
    sums = [0.0] * 5
    for zn, za, label in zip(z_nat.tolist(), z_adv.tolist(), y.tolist()):
        p, q = softmax_row(zn), softmax_row(za)
        terms = (-math.log(p[label]), -math.log(q[label]), -sum(v * math.log(v) for v in p),
                 -sum(v * math.log(v) for v in q), sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)))
        sums = [s + t for s, t in zip(sums, terms)]
    return [s / len(y) for s in sums]


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (0.3, 2.0, 0.0, 0.7)])
def test_adr_matches_its_equation(p, weights):
    """CE(h(x'),y) + CE(h(x),y) + λ_lc·mean_i‖f(x_i) − f(x'_i)‖_p + λ_gb·mean_ij w_ij‖f(x_i) − f(x_j)‖_p
    + λ_conf(H(h(x')) + H(h(x))) + λ_smt·KL(h(x)‖h(x'))."""
    f_nat, z_nat, f_adv, z_adv, y = fixed_representations()
    lc, gb, conf, smt = weights
    a = 0.9
    ce_nat, ce_adv, h_nat, h_adv, kl = by_hand(z_nat, z_adv, y)
    local = sum(sum(abs(u - v) ** p for u, v in zip(fn, fa)) ** (1 / p)
                for fn, fa in zip(f_nat.tolist(), f_adv.tolist())) / len(y)
    global_ = reference.pairwise_compactness(f_nat, y, a, p).item()
    expected = ce_adv + ce_nat + lc * local + gb * global_ + conf * (h_adv + h_nat) + smt * kl
    loss, parts = adr_loss(f_nat, z_nat, f_adv, z_adv, y, a=a, p=p, local_weight=lc, global_weight=gb,
                           conf_weight=conf, smooth_weight=smt)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert parts["local_compactness"].item() == pytest.approx(local, rel=1e-10)
    assert parts["global_compactness"].item() == pytest.approx(global_, rel=1e-10)
    assert parts["entropy"].item() == pytest.approx(h_adv + h_nat, rel=1e-10)


def test_adr_global_compactness_weights_by_hand():
    """The reference's w_ij = 1 (same label), (a − 1)/a otherwise, over all B² ordered pairs."""
    f_nat, z_nat, f_adv, z_adv, y = fixed_representations(1)
    a, rows = 0.99, f_nat.tolist()
    total = sum((1.0 if y[i] == y[j] else (a - 1) / a) * math.dist(rows[i], rows[j])
                for i in range(len(rows)) for j in range(len(rows)))
    _, parts = adr_loss(f_nat, z_nat, f_adv, z_adv, y)
    assert parts["global_compactness"].item() == pytest.approx(total / len(rows) ** 2, rel=1e-10)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("similarity", ["cosine", "l2"])
def test_ascl_matches_its_equation(strategy, similarity):
    """CE(h(x),y) + CE(h(x'),y) + λ_scl·L_SCL + λ_vat·KL(h(x)‖h(x')), L_SCL over [f(x); f(x')] as
    seed 003's Eq. 3: (1/N) Σ_i (L_i + L_i^a), the sum over the 2N anchors over N."""
    f_nat, z_nat, f_adv, z_adv, y = fixed_representations(2)
    ce_nat, ce_adv, _, _, kl = by_hand(z_nat, z_adv, y)
    b = len(y)
    preds = torch.cat([z_nat.argmax(1), z_adv.argmax(1)])
    pair = torch.tensor([i + b for i in range(b)] + list(range(b)))
    scl = reference.supcon_loss(torch.cat([f_nat, f_adv]), torch.cat([y, y]), preds, pair, 0.1, strategy,
                                similarity, "sum").item() / b
    expected = ce_nat + ce_adv + 0.5 * scl + 3.0 * kl
    loss, parts = ascl_loss(f_nat, z_nat, f_adv, z_adv, y, tau=0.1, strategy=strategy, similarity=similarity,
                            scl_weight=0.5, vat_weight=3.0)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert parts["contrastive_loss"].item() == pytest.approx(scl, rel=1e-10)


def test_ascl_defaults_are_the_seeds():
    method = build_method("ascl")
    assert (method.strategy, method.tau, method.similarity, method.scl_weight, method.vat_weight) == (
        "global", 0.07, "cosine", 1.0, 2.0)
    assert (method.attack_loss, method.attack_init) == ("ce", "uniform")
    f_nat, z_nat, f_adv, z_adv, y = fixed_representations(3)
    ce_nat, ce_adv, _, _, kl = by_hand(z_nat, z_adv, y)
    preds = torch.cat([z_nat.argmax(1), z_adv.argmax(1)])
    scl = reference.supcon_loss(torch.cat([f_nat, f_adv]), torch.cat([y, y]), preds,
                                reference.two_view_pair(len(y)), 0.07, reduction="sum").item() / len(y)
    assert ascl_loss(f_nat, z_nat, f_adv, z_adv, y)[0].item() == pytest.approx(ce_nat + ce_adv + scl + 2 * kl,
                                                                              rel=1e-10)


def test_ascl_view_layout():
    f_nat, z_nat, f_adv, z_adv, y = fixed_representations(4, batch=5)
    z, labels, preds, pair = ascl_views(f_nat, z_nat, f_adv, z_adv, y)
    assert torch.equal(z, torch.cat([f_nat, f_adv]))
    assert labels.tolist() == y.tolist() * 2
    assert preds.tolist() == z_nat.argmax(1).tolist() + z_adv.argmax(1).tolist()
    assert pair.tolist() == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
    assert not preds.requires_grad


def test_adr_defaults_are_the_seeds():
    method = build_method("adr")
    assert (method.compactness_a, method.norm_p, method.local_weight, method.global_weight, method.conf_weight,
            method.smooth_weight) == (0.99, 2, 1.0, 1.0, "auto", 1.0)
    assert (method.attack_loss, method.attack_init) == ("ce", "uniform")


def test_conf_weight_resolution():
    """λ_conf by data and architecture (supplementary Table 1): 0 on MNIST-like (one-channel)
    data and on a residual network, 1 for a plain network on colour images."""
    digits, cifar = dataset_info("digits"), dataset_info("cifar10")
    cnn, resnet = build_model("digits_cnn", digits), build_model("digits_resnet", digits)
    cifar_cnn, cifar_resnet = build_model("cnn_4c3f", cifar), build_model("preact_resnet18", cifar)
    assert not is_residual(cnn) and is_residual(resnet) and is_residual(cifar_resnet)
    assert (input_channels(cnn), input_channels(cifar_cnn), input_channels(cifar_resnet.net)) == (1, 3, 3)
    method = build_method("adr")
    assert [method.confidence_weight(m) for m in (cnn, resnet, cifar_cnn, cifar_resnet)] == [0.0, 0.0, 1.0, 0.0]
    method.prepare(cifar_resnet, 10)
    assert method.hyperparameters()["conf_weight_resolved"] == 0.0
    method.prepare(Ensemble([cifar_cnn, cifar_resnet]), 10)
    assert method.conf_weight_resolved == [1.0, 0.0]
    for given in (0.5, "0.5"):  # a number wins, from Python or from the command line's string
        explicit = build_method("adr", conf_weight=given)
        assert explicit.confidence_weight(resnet) == 0.5 and explicit.confidence_weight(cifar_cnn) == 0.5


@pytest.mark.parametrize("name, dataset, layer, dim", [
    ("digits_cnn", "digits", "convolutional", 64 * 4 * 4), ("cnn_4c3f", "cifar10", "convolutional", 32 * 5 * 5),
    ("digits_mlp", "digits", "penultimate", 128), ("digits_resnet", "digits", "penultimate", 32),
    ("preact_resnet18", "digits", "penultimate", 512), ("wide_resnet34_10", "digits", "penultimate", 640)])
def test_every_model_names_the_layer_adr_uses(name, dataset, layer, dim):
    """supplementary Table 3: the last convolutional block, flattened, for a plain CNN; the
    pooled penultimate layer for a residual network (and an MLP, which has no convolution)."""
    assert name in MODELS
    info = dataset_info(dataset)
    torch.manual_seed(0)
    model = build_model(name, info).eval()
    assert model.adr_layer == layer and build_method("adr").feature_layer(model) == layer
    x = torch.rand(3, *info.input_shape)
    with torch.no_grad():
        features, logits = model.forward_with_features(x, layer)
        assert features.shape == (3, dim)
        torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-6)
        if layer == "convolutional":  # the flattened output of the last convolution's block
            convs = [m for m in model.net.modules() if isinstance(m, nn.Conv2d)]
            outputs = []
            handle = convs[-1].register_forward_hook(lambda module, args, out: outputs.append(out))
            model(x)
            handle.remove()
            block = torch.relu(outputs[0])
            torch.testing.assert_close(features, torch.flatten(nn.functional.max_pool2d(block, 2), 1))
        else:
            torch.testing.assert_close(features, model.features(x))


def test_adr_takes_its_compactness_on_the_layer_the_model_names():
    """ADR's local compactness on digits_cnn is the distance of the convolutional features; ASCL
    stays on the penultimate layer."""
    info = dataset_info("digits")
    torch.manual_seed(0)
    model = build_model("digits_cnn", info).train()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    method = build_method("adr", eps=0.2, alpha=0.05, steps=2)
    x_adv = method.attack(model, x, y).x_adv
    _, metrics, _ = method.loss(model, x, x_adv, y)
    with torch.no_grad():
        conv = lambda images: model.net.convolutional(model.normalize(images))
        expected = torch.linalg.vector_norm(conv(x) - conv(x_adv), dim=1).mean()
        penultimate = torch.linalg.vector_norm(model.features(x) - model.features(x_adv), dim=1).mean()
    torch.testing.assert_close(metrics["local_compactness"], expected)
    assert not torch.allclose(expected, penultimate)
    assert build_method("ascl").feature_layer(model) == "penultimate"


def test_a_hooked_network_has_its_hooked_layer_only():
    torchvision = pytest.importorskip("torchvision")
    from fastadv.models import NormalizedModel

    model = NormalizedModel(torchvision.models.vgg11(num_classes=10), (0.5,) * 3, (0.25,) * 3, "avgpool")
    assert model.adr_layer == "penultimate"
    features, _ = model.forward_with_features(torch.rand(2, 3, 32, 32))
    assert features.shape == (2, 512)  # VGG's convolutional output, 512 x 1 x 1, flattened
    with pytest.raises(ValueError, match="layer must be 'penultimate' .* got 'convolutional'; name the layer "
                                         "with feature_layer="):
        model.forward_with_features(torch.rand(2, 3, 32, 32), "convolutional")
    with pytest.raises(ValueError, match="DigitsMLP has no convolutional block"):
        build_model("digits_mlp", dataset_info("digits")).forward_with_features(torch.rand(2, 1, 8, 8), "convolutional")


def test_residual_classes():
    from fastadv.models import DigitsCNN, DigitsMLP, DigitsResNet, PreActResNet, WideResNet

    assert all(cls.residual for cls in (DigitsResNet, PreActResNet, WideResNet))
    assert not any(getattr(cls, "residual", False) for cls in (DigitsCNN, DigitsMLP))
    torchvision = pytest.importorskip("torchvision")
    for name in ("resnet18", "resnext50_32x4d", "wide_resnet50_2"):
        assert is_residual(getattr(torchvision.models, name)(num_classes=10))
    assert not is_residual(torchvision.models.vgg11(num_classes=10))


class Recorder(FeatureNetwork):
    """A linear model with a feature layer that records its inputs and mode at each forward."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU())
        self.classifier = nn.Linear(6, 4)
        self.calls = []

    def features(self, x):
        self.calls.append((x.detach().clone(), self.training))
        return self.encoder(x)


@pytest.mark.parametrize("name, options", [("adr", {}), ("adr", {"norm_p": 1})]
                         + [("ascl", {"strategy": s}) for s in STRATEGIES])
def test_a_training_step_changes_the_parameters(name, options):
    torch.manual_seed(0)
    model = Recorder().train()
    x, y = torch.rand(8, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    method = build_method(name, eps=0.1, alpha=0.03, steps=3, **options)
    before = [p.detach().clone() for p in model.parameters()]
    loss, metrics = method(model, x, y)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    loss_calls = [c for c in model.calls if c[1]]
    assert len(loss_calls) == 2 and torch.equal(loss_calls[0][0], x), "natural first, in training mode"
    assert 0 < (loss_calls[1][0] - x).abs().max() <= 0.1 + 1e-6


@pytest.mark.parametrize("name", ["adr", "ascl"])
def test_a_training_step_of_a_digits_network_and_of_an_ensembles_members(name):
    digits = dataset_info("digits")
    torch.manual_seed(0)
    x, y = torch.rand(12, 1, 8, 8), torch.arange(12) % 10
    method = build_method(name, eps=0.2, alpha=0.05, steps=2)
    for model in (build_model("digits_resnet", digits), Ensemble([build_model("digits_cnn", digits)
                                                                 for _ in range(2)], combine="logit")):
        model.train()
        method.prepare(model, 1)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        turns = 0
        for loss, metrics in method.turns(model, x, y):
            assert torch.isfinite(loss)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            turns += 1
        assert turns == (2 if isinstance(model, Ensemble) else 1)  # seed 000's protocol: a turn per reference
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name, options, error, message", [
    ("ascl", {"strategy": "bogus"}, ValueError, "^ascl: strategy must be one of 'global', 'hard-ls', 'soft-ls', "
                                                "'leaked-ls', got 'bogus'"),
    ("ascl", {"tau": 0.0}, ValueError, "^ascl: tau must be > 0, got 0.0"),
    ("ascl", {"tau": -1.0}, ValueError, "^ascl: tau must be > 0"),
    ("ascl", {"tau": math.inf}, ValueError, "^ascl: tau must be > 0, got inf"),
    ("ascl", {"similarity": "dot"}, ValueError, "^ascl: similarity must be one of"),
    ("ascl", {"vat_weight": -1.0}, ValueError, "^ascl: vat_weight must be >= 0"),
    ("adr", {"compactness_a": 0.0}, ValueError, r"^adr: compactness_a must be in \(0, 1\], got 0.0"),
    ("adr", {"compactness_a": 1.5}, ValueError, r"^adr: compactness_a must be in \(0, 1\], got 1.5"),
    ("adr", {"norm_p": 3}, ValueError, r"^adr: norm_p must be an integer in \[1, 2\], got 3"),
    ("adr", {"norm_p": 2.0}, TypeError, "^adr: norm_p must be an integer"),
    ("adr", {"conf_weight": -1.0}, ValueError, "^adr: conf_weight must be >= 0"),
    ("adr", {"conf_weight": "high"}, ValueError, "^adr: conf_weight must be a number >= 0 or 'auto', got 'high'"),
    ("adr", {"local_weight": -1.0}, ValueError, "^adr: local_weight must be >= 0"),
])
def test_bad_options_are_refused_by_name(name, options, error, message):
    with pytest.raises(error, match=message):
        build_method(name, **options)
