"""A PyTorch twin of resnet_jax's CIFAR ResNets (resnet20, resnet56, any 6n+2), for benchmarks.

Same layers as `resnet_jax.create_model('resnet<6n+2>', num_classes)`: 3x3 stem conv (16 filters)-BN-ReLU,
three stages of post-activation basic blocks (16/32/64 filters, the first block of stages 2 and 3
strided), option-A shortcuts (strided identity, new channels zero-padded at the end), global average
pooling and a Linear head; convs are bias-free with padding 1, BN has eps 1e-5 and momentum 0.1
(our running-average decay 0.9). One convention differs, as it does between the frameworks: torch
updates running_var with the unbiased batch variance, Flax with the biased one (a factor n/(n-1)).

`load_flax_variables` copies a Flax model's variables in, so the two can be checked output for output.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (16, 32, 64)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 3x3 conv with symmetric padding 1, as resnet_jax.models.conv2d."""
    return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, add the option-A shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        if cout < cin:
            raise ValueError(f"option-A shortcut cannot reduce channels ({cin} -> {cout})")
        self.stride, self.extra = stride, cout - cin
        self.conv1, self.bn1 = conv3x3(cin, cout, stride), batch_norm(cout)
        self.conv2, self.bn2 = conv3x3(cout, cout), batch_norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))  # (W, H, C) pairs: zero channels at the end
        return F.relu(y + shortcut)


class CifarResNet(nn.Module):
    """He et al. 2015's CIFAR ResNet of depth 6n+2; takes NCHW images."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...); got {depth}")
        n = (depth - 2) // 6
        self.stem_conv, self.stem_norm = conv3x3(3, WIDTHS[0]), batch_norm(WIDTHS[0])
        blocks, cin = [], WIDTHS[0]
        for i, width in enumerate(WIDTHS):
            for j in range(n):
                blocks.append(BasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # our conv_init: He normal, fan_out
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_norm(self.stem_conv(x)))
        x = self.blocks(x)
        return self.head(x.mean(dim=(2, 3)))


def create_model(name: str, num_classes: int = 10) -> CifarResNet:
    """'resnet20' -> CifarResNet(20, num_classes), mirroring resnet_jax.create_model for CIFAR depths."""
    if not (name.startswith("resnet") and name[6:].isdigit()):
        raise ValueError(f"only CIFAR resnet<6n+2> models have a torch twin; got {name!r}")
    return CifarResNet(int(name[6:]), num_classes)


def flax_to_torch_names(model: CifarResNet) -> dict[str, tuple[str, ...]]:
    """torch state_dict key -> (collection, *path) of the matching Flax variable."""
    names = {}

    def conv(torch_prefix: str, flax_path: tuple[str, ...]) -> None:
        names[f"{torch_prefix}.weight"] = ("params", *flax_path, "kernel")

    def norm(torch_prefix: str, flax_path: tuple[str, ...]) -> None:
        names[f"{torch_prefix}.weight"] = ("params", *flax_path, "scale")
        names[f"{torch_prefix}.bias"] = ("params", *flax_path, "bias")
        names[f"{torch_prefix}.running_mean"] = ("batch_stats", *flax_path, "mean")
        names[f"{torch_prefix}.running_var"] = ("batch_stats", *flax_path, "var")

    conv("stem_conv", ("stem_conv",))
    norm("stem_norm", ("stem_norm",))
    n = len(model.blocks) // len(WIDTHS)
    for k in range(len(model.blocks)):
        block = f"stage{k // n + 1}_block{k % n + 1}"
        conv(f"blocks.{k}.conv1", (block, "Conv_0"))
        norm(f"blocks.{k}.bn1", (block, "BatchNorm_0"))
        conv(f"blocks.{k}.conv2", (block, "Conv_1"))
        norm(f"blocks.{k}.bn2", (block, "BatchNorm_1"))
    names["head.weight"] = ("params", "head", "kernel")
    names["head.bias"] = ("params", "head", "bias")
    return names


def flax_to_torch_layout(value: np.ndarray) -> np.ndarray:
    """Conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in); vectors unchanged."""
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value


def load_flax_variables(model: CifarResNet, variables: Mapping[str, Any]) -> None:
    """Copy a Flax CIFAR ResNet's {'params', 'batch_stats'} into `model`; every tensor on both sides must be used."""
    names = flax_to_torch_names(model)
    n_flax = sum(len(leaves) for leaves in map(_leaves, (variables["params"], variables["batch_stats"])))
    if n_flax != len(names):
        raise ValueError(
            f"the Flax model has {n_flax} variables, the torch model {len(names)}: not the same architecture")
    state = {}
    for key, path in names.items():
        value = variables
        for part in path:
            value = value[part]
        state[key] = torch.from_numpy(np.array(flax_to_torch_layout(np.asarray(value))))  # a writable copy
    missing = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")} - state.keys()
    if missing:
        raise KeyError(f"no Flax variable for {sorted(missing)}")
    model.load_state_dict(state, strict=False)


def _leaves(tree: Mapping[str, Any]) -> list[Any]:
    return [leaf for v in tree.values() for leaf in (_leaves(v) if isinstance(v, Mapping) else [v])]
