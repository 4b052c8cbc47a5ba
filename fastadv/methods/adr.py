"""ADR, adversarial training with local and global compactness (Bui et al. 2020), METHODS.md
section 2, seed 003 ch. 3."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _validate as check
from ..ensemble import Ensemble
from ..models import Normalize
from ..ops.contrastive import DEFAULT_A, DEFAULT_P, NORMS, unchecked
from .representation import RepresentationMethod
from .trades import trades_kl

AUTO = "auto"
#: torchvision's class of its residual families (resnet*, resnext*, wide_resnet*)
_TORCHVISION_RESNET = ("torchvision.models.resnet", "ResNet")


def is_residual(model: nn.Module) -> bool:
    """Whether ``model`` is or wraps a residual network: a fastadv network whose class says
    ``residual = True`` (DigitsResNet, PreActResNet, WideResNet) or torchvision's ResNet (its
    resnet*, resnext* and wide_resnet* families)."""
    return any(getattr(type(module), "residual", False) is True
               or (type(module).__module__, type(module).__name__) == _TORCHVISION_RESNET
               for module in model.modules())


def input_channels(model: nn.Module) -> int | None:
    """The number of channels of the images ``model`` takes: its normalisation's (every model
    fastadv.models.build_model makes is behind a Normalize), else its first convolution's; None
    for a model with neither."""
    for module in model.modules():
        if isinstance(module, Normalize):
            return int(module.mean.shape[1])
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel, or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(h(x)) = −Σ_k p_k log p_k, averaged over the batch."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean()


def adr_loss(features_natural, logits_natural, features_adv, logits_adv, y, *, a=DEFAULT_A, p=DEFAULT_P,
             local_weight=1.0, global_weight=1.0, conf_weight=1.0, smooth_weight=1.0):
    """(loss, its parts) with

        loss = CE(h(x'), y) + CE(h(x), y) + λ_lc·mean_i ‖f(x_i) − f(x'_i)‖_p
               + λ_gb·mean_{i,j} w_ij ‖f(x_i) − f(x_j)‖_p + λ_conf·(H(h(x')) + H(h(x)))
               + λ_smt·KL(h(x) ‖ h(x'))

    ``w_ij = 1`` if y_i = y_j else (a − 1)/a. The labels must be valid class indices (the global
    compactness is the unchecked op: the attack read their range once)."""
    natural = F.cross_entropy(logits_natural, y)
    adversarial = F.cross_entropy(logits_adv, y)
    local = torch.linalg.vector_norm(features_natural - features_adv, ord=p, dim=1).mean()
    global_ = unchecked.pairwise_compactness(features_natural, y, a, p)
    confidence = entropy(logits_adv) + entropy(logits_natural)
    smoothness = trades_kl(logits_natural, logits_adv)
    loss = (adversarial + natural + local_weight * local + global_weight * global_
            + conf_weight * confidence + smooth_weight * smoothness)
    return loss, {"natural_loss": natural, "adversarial_loss": adversarial, "local_compactness": local,
                  "global_compactness": global_, "entropy": confidence, "smoothness": smoothness}


class ADR(RepresentationMethod):
    """ADR (seed 003 ch. 3, METHODS.md section 2): :func:`adr_loss` on the features f and the
    logits h of x and x' = PGD-ce (ADR-ADV: uniform start, the method's ε, α and steps).

    Defaults (seed 003 ch. 3 supplementary Table 1): a = 0.99 (``compactness_a``), p = 2
    (``norm_p``), λ_lc = λ_gb = λ_smt = 1, and λ_conf = 0 on MNIST-like data and on residual
    networks, 1 for a plain network on colour images (CIFAR).

    - f is where the model says (``model.adr_layer``, supplementary Table 3): the last
      convolutional block's output, flattened, for a plain CNN (digits_cnn, cnn_4c3f), the
      penultimate (pooled) layer for a residual network and for an MLP. A torchvision network
      gives the input of its hooked layer (its final ``nn.Linear``, or the ``feature_layer`` named
      to :class:`fastadv.models.NormalizedModel`: ``"avgpool"`` for VGG's convolutional output).

    - The global compactness is over the clean features f(x) of the batch (all B² ordered
      pairs, METHODS.md's formula), by the contrastive family's ``pairwise_compactness``; the
      local one per sample, averaged; H is the prediction entropy averaged over the batch; KL is
      TRADES' (batch mean).
    - ``conf_weight="auto"`` (the default) is resolved per model: 0.0 on MNIST-like data, which
      fastadv reads as a model taking one-channel images (:func:`input_channels`: the digits,
      MNIST, Fashion-MNIST), and on a residual network (:func:`is_residual`), 1.0 otherwise; a
      number overrides it. :meth:`prepare` records the resolved value (``conf_weight_resolved``,
      per member for an ensemble) in the method's hyperparameters, which the trainer writes to
      config.json. The option is a string on the command line (``--conf-weight 0.5`` or
      ``auto``) because its default is not a number.
    - The compactness terms are on the raw features, as the seed writes them. Measured on the
      digits with these defaults (digits_cnn, its convolutional features, λ_conf = 0, batch 128,
      SGD momentum 0.9 at lr 0.05, 0.01 or 0.002, ε 0.2 or 0.05): the local compactness drives
      the ReLU features to 0 within ~15 steps, before the cross-entropy has learned anything,
      and training stays at chance (docs/results.md); the penultimate
      layer does the same. digits_resnet (BatchNorm before its features) trains.
    """

    name = "adr"
    batch_coupled = "its compactness terms compare each sample's features with the other samples' of the batch"
    option_help = {
        "compactness_a": "a of the global compactness weights, in (0, 1]: w_ij = 1 for the same label, "
                         "(a-1)/a otherwise",
        "norm_p": "p of the feature distances ||f - f'||_p of both compactness terms, 1 or 2",
        "local_weight": "weight λ_lc of the local compactness mean_i ||f(x_i) - f(x'_i)||_p",
        "global_weight": "weight λ_gb of the global compactness mean_ij w_ij ||f(x_i) - f(x_j)||_p",
        "conf_weight": "weight λ_conf of the entropies H(h(x')) + H(h(x)); auto: 0 on one-channel (MNIST-like) "
                       "images or a residual network, 1 otherwise",
        "smooth_weight": "weight λ_smt of KL(h(x) || h(x'))",
    }

    def __init__(self, *, compactness_a: float = DEFAULT_A, norm_p: int = DEFAULT_P, local_weight: float = 1.0,
                 global_weight: float = 1.0, conf_weight: float | str = AUTO, smooth_weight: float = 1.0, **options):
        super().__init__(**options)
        self.compactness_a = check.number(self.name, "compactness_a", compactness_a, low=0, low_open=True, high=1)
        self.norm_p = check.integer(self.name, "norm_p", norm_p, low=min(NORMS), high=max(NORMS))
        self.local_weight = check.number(self.name, "local_weight", local_weight, low=0)
        self.global_weight = check.number(self.name, "global_weight", global_weight, low=0)
        if isinstance(conf_weight, str) and conf_weight != AUTO:
            try:
                conf_weight = float(conf_weight)
            except ValueError:
                raise ValueError(f"{self.name}: conf_weight must be a number >= 0 or {AUTO!r}, "
                                 f"got {conf_weight!r}") from None
        self.conf_weight = AUTO if isinstance(conf_weight, str) else check.number(self.name, "conf_weight",
                                                                                  conf_weight, low=0)
        self.smooth_weight = check.number(self.name, "smooth_weight", smooth_weight, low=0)
        self.conf_weight_resolved = None

    def confidence_weight(self, model: nn.Module) -> float:
        """λ_conf for ``model``: the option, or with ``auto`` 0.0 on one-channel (MNIST-like)
        images or a residual network, 1.0 otherwise."""
        if self.conf_weight != AUTO:
            return self.conf_weight
        return 0.0 if is_residual(model) or input_channels(model) == 1 else 1.0

    def feature_layer(self, model: nn.Module) -> str:
        """The layer the model names for ADR (``adr_layer``; "penultimate" where it names none)."""
        return getattr(unwrapped(model), "adr_layer", "penultimate")

    def prepare(self, model, batches):
        if isinstance(model, Ensemble):
            self.conf_weight_resolved = [self.confidence_weight(member) for member in model.members]
        else:
            self.conf_weight_resolved = self.confidence_weight(model)

    def loss_terms(self, model, natural, adversarial, y):
        return adr_loss(natural.features, natural.logits, adversarial.features, adversarial.logits, y,
                        a=self.compactness_a, p=self.norm_p, local_weight=self.local_weight,
                        global_weight=self.global_weight, conf_weight=self.confidence_weight(model),
                        smooth_weight=self.smooth_weight)
