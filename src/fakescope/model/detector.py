"""The detector: a torchvision backbone's convolutional trunk and a one-logit head.

The paper's head (``flatten``) flattens the last feature map and feeds it to one linear unit, so
its size depends on the input: ResNet-50 at 299 px gives 2048x10x10 features and a head of
204,800 weights + 1 bias. ``gap`` averages the map first (the usual ImageNet head).

With ``heads`` named (one per source of fakes, e.g. ``("lfw-faceswap", "sg-ffhq", "sbi")``) the
head has one unit per source: training teaches each unit its own source's fakes against every
real image (training/loop.py), and scoring takes the highest unit, so the model still gives
one logit wherever it is used.

Every backbone is cut into five stages (``stem``, ``stage1``..``stage4``) so that the progressive
freezing of the three training steps means the same thing across families.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import FakescopeError, WeightsUnavailable

# For each supported family: how to get the convolutional trunk and how to cut it into stages.
# Stage boundaries follow the points where the feature map halves.
_MOBILENET_V2_STAGES = [range(0, 2), range(2, 4), range(4, 7), range(7, 14), range(14, 19)]
_EFFICIENTNET_STAGES = [range(0, 2), range(2, 3), range(3, 4), range(4, 6), range(6, 9)]


def _family(backbone: str) -> str:
    for fam in ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "efficientnet_b"):
        if backbone.startswith(fam):
            return "resnet" if fam in ("resnext", "wide_resnet") else fam
    raise FakescopeError(
        f"backbone {backbone!r} is not supported; use resnet*/resnext*/wide_resnet*, "
        "mobilenet_v2 or efficientnet_b*"
    )


def is_supported(backbone: str) -> bool:
    """Whether ``backbone`` names a torchvision model of a family fakescope can cut in stages."""
    try:
        _family(backbone)
        torchvision.models.get_model_builder(backbone)
    except (FakescopeError, ValueError):
        return False
    return True


def _trunk_and_stages(net: nn.Module, family: str) -> tuple[nn.Sequential, list[list[nn.Module]]]:
    if family == "resnet":
        trunk = nn.Sequential(
            net.conv1,
            net.bn1,
            net.relu,
            net.maxpool,
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        stages = [list(trunk[:4]), [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
        return trunk, stages
    feats = net.features
    bounds = _MOBILENET_V2_STAGES if family == "mobilenet_v2" else _EFFICIENTNET_STAGES
    return feats, [[feats[i] for i in r] for r in bounds]


class Detector(nn.Module):
    def __init__(self, backbone="resnet50", head="flatten", input_size=299, weights="none",
                 heads: tuple[str, ...] = ()):  # fmt: skip
        super().__init__()
        if head not in ("flatten", "gap"):
            raise FakescopeError(f"head {head!r} is not supported; use 'flatten' or 'gap'")
        family = _family(backbone)
        net = build_backbone(backbone, weights)
        self.backbone_name, self.head_name, self.input_size = backbone, head, input_size
        self.head_names = tuple(heads)
        units = max(1, len(self.head_names))
        self.freeze_bn = False  # True: BatchNorm keeps its running statistics while training
        self.features, self._stages = _trunk_and_stages(net, family)
        with torch.no_grad():
            was = self.features.training
            self.features.eval()
            c, h, w = self.features(torch.zeros(1, 3, input_size, input_size)).shape[1:]
            self.features.train(was)
        self.feature_shape = (int(c), int(h), int(w))
        if head == "flatten":
            self.pool = nn.Flatten()
            self.fc = nn.Linear(int(c * h * w), units)
        else:
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(int(c), units)

    def forward(self, x):
        """Returns the fake logit, shape (N, 1); sigmoid gives the probability of 'fake'.
        A model with per-source heads returns every unit's logit, (N, heads), while training
        (as torchvision's Inception returns its auxiliary logits) and the highest otherwise."""
        z = self.fc(self.pool(self.features(x)))
        if self.fc.out_features > 1 and not self.training:
            return z.amax(dim=1, keepdim=True)
        return z

    @property
    def target_layer(self) -> nn.Module:
        """The last convolutional stage: where Grad-CAM reads its activations."""
        return self._stages[-1][-1]

    @property
    def target_layers(self) -> list[nn.Module]:
        return [self.target_layer]

    def freeze(self, n_stages: int) -> None:
        """Freeze the first ``n_stages`` backbone stages (weights and BatchNorm statistics)."""
        for p in self.parameters():
            p.requires_grad = True
        for stage in self._stages[:n_stages]:
            for m in stage:
                for p in m.parameters():
                    p.requires_grad = False
        self._frozen = n_stages

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen stages keep their BatchNorm running statistics fixed as well
        for stage in self._stages[: getattr(self, "_frozen", 0)]:
            for m in stage:
                m.eval()
        if self.freeze_bn:
            for m in self.features.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def head_parameters(self) -> int:
        return sum(p.numel() for p in self.fc.parameters())

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def fake_logits(model: nn.Module, x: torch.Tensor, hflip_tta: bool = False) -> torch.Tensor:
    """The fake logit of each image, shape (N, 1). With ``hflip_tta`` the logits of the image
    and of its mirror image are averaged: the model was trained on both, and the average ranks
    images more reliably (measured in docs/results.md) at twice the cost."""
    out = model(x)
    if hflip_tta:
        out = (out + model(torch.flip(x, dims=[3]))) / 2
    return out


def inference_model(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the convolution before it.

    Scores match the original to float rounding. On a CPU, BatchNorm and the activations are
    bound by memory bandwidth, so folding made mobilenet_v2 inference ~1.8x faster
    (docs/benchmarks.md). The original is left as it was: Grad-CAM and training still need
    the separate BatchNorm layers. A model torch.fx cannot trace comes back as a plain eval copy.
    """
    from torch.fx.experimental.optimization import fuse

    plain = copy.deepcopy(model).eval()
    try:
        return fuse(plain).eval()
    except Exception:  # an untraceable custom model: correct, only slower
        return plain


def build_backbone(backbone: str, weights: str) -> nn.Module:
    """A torchvision classification model with ImageNet weights (``imagenet``), none, or a file."""
    try:
        builder = torchvision.models.get_model_builder(backbone)
    except ValueError:
        raise FakescopeError(f"unknown torchvision model {backbone!r}") from None
    if weights == "none":
        return builder(weights=None)
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(backbone)
        w = enum.IMAGENET1K_V1 if hasattr(enum, "IMAGENET1K_V1") else enum.DEFAULT
        try:
            return builder(weights=w)
        except Exception as e:  # no internet, no cached file, or a broken download
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
            raise WeightsUnavailable(
                f"ImageNet weights for {backbone} could not be loaded ({type(e).__name__}: {e}).\n"
                f"  torchvision downloads them from {w.url}\n"
                f"  into {cache} on first use. Where there is no internet:\n"
                f"  --weights PATH   use a local weights file (e.g. that file copied from another "
                "machine)\n"
                "  --weights none   start from random initialisation (much weaker detector)"
            ) from None
    return load_weights_file(builder(weights=None), weights, backbone)


def load_weights_file(net: nn.Module, path: str, backbone: str) -> nn.Module:
    p = Path(path)
    if not p.is_file():
        raise WeightsUnavailable(
            f"--weights {path!r}: no such file. Use 'imagenet', 'none' or a path to a "
            f"{backbone} ImageNet weights file (.pth or .safetensors)"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            # user-supplied torchvision checkpoint; weights_only refuses arbitrary pickled code
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(f"--weights {path}: cannot read weights ({e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = net.load_state_dict(state, strict=False)
    # The ImageNet classifier is replaced by our head anyway; anything else missing is an error.
    missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
    if missing or len(unexpected) > 0:
        raise WeightsUnavailable(
            f"--weights {path}: does not fit {backbone} ({len(missing)} missing keys such as "
            f"{missing[:2]}, {len(unexpected)} unexpected such as {list(unexpected)[:2]})"
        )
    return net
