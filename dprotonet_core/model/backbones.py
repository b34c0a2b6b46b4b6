"""Backbones f_b: torchvision feature extractors by name, classifier removed.

Weights are random unless the caller names a local file (`weights_path`): nothing is ever
downloaded. The file is read with safetensors, or with `torch.load(weights_only=True)` for
torchvision's `.pth` files, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock


class BackboneError(ValueError):
    """An unknown backbone name, or a weights file that does not fit it."""


def _resnet(builder: Callable[..., models.ResNet]) -> Callable[[], tuple[nn.Module, int]]:
    def make() -> tuple[nn.Module, int]:
        net = builder(weights=None)
        channels = net.fc.in_features
        return nn.Sequential(*list(net.children())[:-2]), channels

    return make


def _vgg(builder: Callable[..., models.VGG]) -> Callable[[], tuple[nn.Module, int]]:
    def make() -> tuple[nn.Module, int]:
        net = builder(weights=None)
        return net.features, 512

    return make


def _densenet121() -> tuple[nn.Module, int]:
    net = models.densenet121(weights=None)
    return nn.Sequential(net.features, nn.ReLU(inplace=False)), net.classifier.in_features


def _mobilenet_v3_small() -> tuple[nn.Module, int]:
    net = models.mobilenet_v3_small(weights=None)
    return net.features, 576


class SmallResNet(nn.Module):
    """A narrow ResNet-18 (widths 32-64-128-256, ~2.8M parameters) for CPU training.

    Built from torchvision's BasicBlock; output stride 32 like ResNet-18, so a 224 px input
    gives a 7 x 7 feature map.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), blocks: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, inplanes = [], widths[0]
        for index, (planes, count) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2
            layers = []
            for b in range(count):
                s = stride if b == 0 else 1
                downsample = None
                if s != 1 or inplanes != planes:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes, 1, stride=s, bias=False), nn.BatchNorm2d(planes)
                    )
                layers.append(BasicBlock(inplanes, planes, stride=s, downsample=downsample))
                inplanes = planes
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.out_channels = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def _small_resnet() -> tuple[nn.Module, int]:
    net = SmallResNet()
    return net, net.out_channels


def _tiny_cnn() -> tuple[nn.Module, int]:
    """A 4-layer CNN for unit tests: fast enough to train in seconds."""
    layers, cin = [], 3
    for cout in (16, 32, 64, 64):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers), cin


BACKBONES: dict[str, Callable[[], tuple[nn.Module, int]]] = {
    "resnet18": _resnet(models.resnet18),
    "resnet34": _resnet(models.resnet34),
    "resnet50": _resnet(models.resnet50),
    "vgg16": _vgg(models.vgg16),
    "vgg19": _vgg(models.vgg19),
    "densenet121": _densenet121,
    "mobilenet_v3_small": _mobilenet_v3_small,
    "small_resnet": _small_resnet,
    "tiny_cnn": _tiny_cnn,
}


def backbone_parts(module: nn.Module) -> list[nn.Module]:
    """f_b as a list of modules whose composition, in order, is f_b itself: nn.Sequential is flattened (its forward
    is that composition), SmallResNet is its stem then its stages, any other module is one part."""
    if isinstance(module, SmallResNet):
        return [*backbone_parts(module.stem), *backbone_parts(module.stages)]
    if type(module) is nn.Sequential:
        return [part for child in module for part in backbone_parts(child)]
    return [module]


def stage_ends(shapes: list[torch.Size], keep: int = 4) -> list[int]:
    """Indices of the parts that end a stage of f_b: a part whose output the next part downsamples, and the last
    part; the last `keep` of them (the out-of-distribution score pools each stage's output, ood_features.py)."""
    ends = [i for i in range(len(shapes) - 1) if shapes[i + 1][-2:] != shapes[i][-2:]] + [len(shapes) - 1]
    return ends[-keep:]


def build_backbone(name: str, weights_path: str | Path | None = None) -> tuple[nn.Module, int]:
    """Return (f_b, number of output channels) for a backbone name.

    `weights_path` names a local file of weights for the *full* torchvision model (as
    torchvision publishes them) or for the feature extractor alone; the classifier's
    weights, if present, are ignored.
    """
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(sorted(BACKBONES))}")
    module, channels = BACKBONES[name]()
    if weights_path is not None:
        load_backbone_weights(module, name, Path(weights_path))
    return module, channels


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"backbone weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"{path} does not hold a state dict")
    return state


def load_backbone_weights(module: nn.Module, name: str, path: Path) -> None:
    """Copy matching tensors of a torchvision checkpoint into the feature extractor."""
    state = _read_state_dict(path)
    own = module.state_dict()
    if all(k in state and state[k].shape == t.shape for k, t in own.items()):
        # our own f_b files (pretrain-backbone) carry our names; safetensors lists keys sorted, not in module order,
        # so the order-based matching below could swap same-shaped tensors ("10.bias" before "4.bias")
        module.load_state_dict({k: state[k] for k in own})
        return
    # torchvision names differ from our Sequential wrappers by a prefix; match on suffixes
    # of the same shape, in order, which is unambiguous for these architectures.
    source = [(k, v) for k, v in state.items() if not k.startswith(("fc.", "classifier."))]
    mapped: dict[str, torch.Tensor] = {}
    remaining = list(source)
    for key, tensor in own.items():
        for i, (skey, svalue) in enumerate(remaining):
            if svalue.shape == tensor.shape and key.split(".")[-1] == skey.split(".")[-1]:
                mapped[key] = svalue
                del remaining[i]
                break
    missing = [k for k in own if k not in mapped]
    if missing:
        raise BackboneError(
            f"{path} does not fit backbone {name!r}: {len(missing)} of {len(own)} tensors have no match "
            f"(first: {missing[0]})"
        )
    module.load_state_dict(mapped)
