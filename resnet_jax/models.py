"""Residual networks and their plain twins in Flax linen.

One `ResNet` module covers the papers' families:
  * v1   (He et al. 2015): post-activation, BN after every conv, ReLU after the addition;
  * v1.5 (torchvision):    v1 with the bottleneck's stride on the 3x3 conv instead of the first 1x1;
  * v2   (He et al. 2016): pre-activation, BN-ReLU before every conv, BN-ReLU once before pooling.
Shortcuts: 'A' strided identity with zero-padded channels (no parameters), 'B' projection only where
the shape changes, 'C' projection everywhere. `residual=False` drops the addition (and so every
shortcut parameter) and gives the plain network of the same layers, for ablations.

Padding is explicit and symmetric, as in torchvision and Keras, so imported weights reproduce their
outputs; any input size works.
"""

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax import xla_cpu

ModuleDef = Any

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"), the He et al. initialisation.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def needs_projection(x: jnp.ndarray, filters: int, strides: int, shortcut: str) -> bool:
    """Whether the shortcut of a block mapping `x` to `filters` channels is a projection."""
    changes_shape = strides != 1 or x.shape[-1] != filters
    return shortcut == "C" or (shortcut == "B" and changes_shape)


def zero_pad_shortcut(x: jnp.ndarray, filters: int, strides: int) -> jnp.ndarray:
    """Option A: subsample by `strides` and append zero channels up to `filters` (no parameters)."""
    x = x[:, ::strides, ::strides, :]
    extra = filters - x.shape[-1]
    if extra < 0:
        raise ValueError(f"option-A shortcut cannot reduce channels ({x.shape[-1]} -> {filters}); use shortcut='B'")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


class Block(nn.Module):
    """What every block is given: its width, conv/norm/activation factories, stride, shortcut option, residual switch."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    shortcut: str = "B"
    residual: bool = True


class BasicBlock(Block):
    """Two 3x3 convs, post-activation (v1): conv-BN-ReLU, conv-BN, add, ReLU."""

    zero_init_last: bool = False

    @nn.compact
    def __call__(self, x):
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last else nn.initializers.ones)(y)
        if self.residual:
            y = y + post_activation_shortcut(self, x, self.filters)
        return self.act(y)


class BottleneckBlock(Block):
    """1x1 (reduce), 3x3, 1x1 (expand x4), post-activation. v1.5 strides the 3x3, v1 the first 1x1."""

    zero_init_last: bool = False
    stride_on_3x3: bool = True
    expansion = 4

    @nn.compact
    def __call__(self, x):
        s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        y = self.act(self.norm()(self.conv(self.filters, (1, 1), s1)(x)))
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), s3)(y)))
        y = self.conv(self.filters * self.expansion, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last else nn.initializers.ones)(y)
        if self.residual:
            y = y + post_activation_shortcut(self, x, self.filters * self.expansion)
        return self.act(y)


def post_activation_shortcut(block: nn.Module, x: jnp.ndarray, out: int) -> jnp.ndarray:
    """The v1 shortcut: identity, option-A zero padding, or 1x1 conv + BN projection."""
    if needs_projection(x, out, block.strides, block.shortcut):
        return block.norm(name="shortcut_norm")(block.conv(out, (1, 1), block.strides, name="shortcut_conv")(x))
    if block.shortcut == "A":
        return zero_pad_shortcut(x, out, block.strides)
    return x


class PreActBasicBlock(Block):
    """Two 3x3 convs, pre-activation (v2): BN-ReLU-conv, BN-ReLU-conv, add (no ReLU after)."""

    @nn.compact
    def __call__(self, x):
        pre = self.act(self.norm()(x))
        y = self.conv(self.filters, (3, 3), self.strides)(pre)
        y = self.conv(self.filters, (3, 3))(self.act(self.norm()(y)))
        return y + pre_activation_shortcut(self, x, pre, self.filters) if self.residual else y


class PreActBottleneckBlock(Block):
    """Pre-activation bottleneck (v2): BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 (x4), add."""

    expansion = 4

    @nn.compact
    def __call__(self, x):
        pre = self.act(self.norm()(x))
        y = self.conv(self.filters, (1, 1))(pre)
        y = self.conv(self.filters, (3, 3), self.strides)(self.act(self.norm()(y)))
        y = self.conv(self.filters * self.expansion, (1, 1))(self.act(self.norm()(y)))
        return y + pre_activation_shortcut(self, x, pre, self.filters * self.expansion) if self.residual else y


def pre_activation_shortcut(block: nn.Module, x: jnp.ndarray, pre: jnp.ndarray, out: int) -> jnp.ndarray:
    """The v2 shortcut: a projection (1x1 conv, no BN) reads the pre-activated input, as in He et al. 2016."""
    if needs_projection(x, out, block.strides, block.shortcut):
        return block.conv(out, (1, 1), block.strides, name="shortcut_conv")(pre)
    if block.shortcut == "A":
        return zero_pad_shortcut(x, out, block.strides)
    return x


BLOCKS = {
    ("basic", "v1"): BasicBlock,
    ("basic", "v1.5"): BasicBlock,
    ("basic", "v2"): PreActBasicBlock,
    ("bottleneck", "v1"): partial(BottleneckBlock, stride_on_3x3=False),
    ("bottleneck", "v1.5"): BottleneckBlock,
    ("bottleneck", "v2"): PreActBottleneckBlock,
}


def conv2d(features: int, kernel_size: tuple[int, int], strides: int = 1, **kwargs) -> nn.Conv:
    """A bias-free conv (BN follows) with torchvision's symmetric padding of k // 2 on each side."""
    pad = [(k // 2, k // 2) for k in kernel_size]
    return nn.Conv(features, kernel_size, strides, padding=pad, use_bias=False, kernel_init=conv_init, **kwargs)


class ResNet(nn.Module):
    """A residual (or, with residual=False, plain) network.

    stem: 'cifar' (3x3 conv, 16 filters) or 'imagenet' (7x7/2 conv + 3x3/2 max-pool).
    bn_momentum is the running-average decay: Flax/Keras 0.9 (Keras' default 0.99) correspond to
    PyTorch's momentum 1 - decay, i.e. PyTorch's default 0.1 is bn_momentum=0.9.
    conv_general_dilated: what every conv calls; the default gives lax's numbers, faster on CPU (resnet_jax.xla_cpu).
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int]
    num_classes: int
    block: str = "basic"  # 'basic' or 'bottleneck'
    version: str = "v1.5"  # 'v1', 'v1.5' or 'v2'
    stem: str = "imagenet"
    shortcut: str = "B"  # 'A', 'B' or 'C'
    residual: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    act: Callable = nn.relu
    conv_general_dilated: Callable = xla_cpu.conv_general_dilated

    def __post_init__(self):
        check_choice("block", self.block, ("basic", "bottleneck"))
        check_choice("version", self.version, ("v1", "v1.5", "v2"))
        check_choice("stem", self.stem, ("cifar", "imagenet"))
        check_choice("shortcut", self.shortcut, ("A", "B", "C"))
        if len(self.widths) != len(self.stage_sizes):
            raise ValueError(f"widths {tuple(self.widths)} and stage_sizes {tuple(self.stage_sizes)} differ in length")
        if self.zero_init_residual and self.version == "v2":
            raise ValueError("zero_init_residual needs a BN at the end of each block: use version 'v1' or 'v1.5'")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = partial(conv2d, dtype=self.dtype, param_dtype=self.param_dtype, conv_general_dilated=self.conv_general_dilated)
        # Statistics are reduced in float32 whatever the compute dtype (Flax's default).
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        preact = self.version == "v2"
        x = jnp.asarray(x, self.dtype)
        if self.stem == "imagenet":
            x = conv(self.widths[0], (7, 7), 2, name="stem_conv")(x)
            if not preact:
                x = self.act(norm(name="stem_norm")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = conv(self.widths[0], (3, 3), name="stem_conv")(x)
            if not preact:
                x = self.act(norm(name="stem_norm")(x))

        block_cls = BLOCKS[(self.block, self.version)]
        extra = {} if preact else {"zero_init_last": self.zero_init_residual}
        for i, (n_blocks, filters) in enumerate(zip(self.stage_sizes, self.widths)):
            for j in range(n_blocks):
                x = block_cls(
                    filters,
                    conv=conv,
                    norm=norm,
                    act=self.act,
                    strides=2 if i > 0 and j == 0 else 1,
                    shortcut=self.shortcut,
                    residual=self.residual,
                    name=f"stage{i + 1}_block{j + 1}",
                    **extra,
                )(x)
        if preact:
            x = self.act(norm(name="final_norm")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
        return jnp.asarray(x, jnp.float32)


def check_choice(what: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}")


# ---- The model zoo -------------------------------------------------------------------------------

IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)  # 6n+2, He et al. 2015, Table 6
PREACT_CIFAR_DEPTHS = (56, 110, 164, 1001)  # 9n+2, He et al. 2016

CifarResNet = partial(ResNet, widths=(16, 32, 64), stem="cifar", block="basic", version="v1", shortcut="A")
PreActCifarResNet = partial(ResNet, widths=(16, 32, 64), stem="cifar", block="bottleneck", version="v2", shortcut="B")
ImageNetResNet = partial(ResNet, widths=(64, 128, 256, 512), stem="imagenet", version="v1.5", shortcut="B")


def _family(name: str) -> tuple[str, int]:
    """Split 'resnet56' / 'plain56' / 'preact_resnet164' / 'preact_plain164' into (family, depth)."""
    for prefix, family in (("preact_resnet", "preact"), ("preact_plain", "preact"), ("resnet", "resnet"), ("plain", "resnet")):
        digits = name[len(prefix):]
        if name.startswith(prefix) and digits.isdigit():
            return family, int(digits)
    raise ValueError(
        f"unknown model {name!r}; names are resnet<depth> (CIFAR 6n+2: 20, 32, 44, 56, 110, 1202, …; "
        f"ImageNet: 18, 34, 50, 101, 152, 200), preact_resnet<depth> (9n+2: 56, 110, 164, 1001, …), "
        f"and their plain twins plain<depth>, preact_plain<depth>. See resnet_jax.list_models()."
    )


def model_spec(name: str) -> dict[str, Any]:
    """The ResNet fields a zoo name stands for (the model is `ResNet(**model_spec(name), num_classes=…)`)."""
    family, depth = _family(name)
    residual = "plain" not in name
    if family == "preact":
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"pre-activation CIFAR ResNet depth must be 9n+2 (56, 110, 164, 1001, …); got {depth}")
        n = (depth - 2) // 9
        return dict(PreActCifarResNet.keywords, stage_sizes=(n, n, n), residual=residual)
    if depth in IMAGENET_STAGES:
        block, stages = IMAGENET_STAGES[depth]
        return dict(ImageNetResNet.keywords, block=block, stage_sizes=stages, residual=residual)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202, …) and ImageNet depths are "
            f"{', '.join(map(str, IMAGENET_STAGES))}; got {depth}"
        )
    n = (depth - 2) // 6
    return dict(CifarResNet.keywords, stage_sizes=(n, n, n), residual=residual)


def create_model(name: str, num_classes: int, **overrides: Any) -> ResNet:
    """Build a zoo model by name, e.g. create_model('resnet56', 10) or create_model('resnet50', 1000, version='v1').

    Overrides replace any ResNet field (shortcut, version, widths, dtype, bn_momentum, ...).
    `model.init(key, x, train=False)` returns {'params', 'batch_stats'}.
    """
    fields = {f for f in ResNet.__dataclass_fields__ if f not in ("parent", "name")}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid options: {sorted(fields - {'num_classes'})}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes}")
    return ResNet(**{**model_spec(name), "num_classes": num_classes, **overrides})


def list_models() -> list[str]:
    """The named models of the zoo (any other valid 6n+2 / 9n+2 depth also works)."""
    resnets = [f"resnet{d}" for d in (*CIFAR_DEPTHS, *IMAGENET_STAGES)]
    preacts = [f"preact_resnet{d}" for d in PREACT_CIFAR_DEPTHS]
    return resnets + preacts + [n.replace("resnet", "plain") for n in resnets + preacts]
