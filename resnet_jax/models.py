"""Residual networks and their plain twins in Flax linen.

One `ResNet` module covers the papers' families:
  * v1   (He et al. 2015): post-activation, BN after every conv, ReLU after the addition;
  * v1.5 (torchvision):    v1 with the bottleneck's stride on the 3x3 conv instead of the first 1x1;
  * v2   (He et al. 2016): pre-activation, BN-ReLU before every conv, BN-ReLU once before pooling.
Shortcuts: 'A' strided identity with zero-padded channels (no parameters), 'B' projection only where
the shape changes, 'C' projection everywhere. `residual=False` drops the addition (and so every
shortcut parameter) and gives the plain network of the same layers, for ablations.
Blocks come from a registry (`register_block`): a new block is a `Block` subclass registered by name.

Padding is explicit and symmetric by default, as in torchvision and Keras applications; any input size works.
The layout options (`Layout`: inner widths, conv biases, TF 'same' padding, where a stage strides, ...) express the
other frameworks' ResNets exactly, so their weights (`resnet_jax.pretrained`) reproduce their outputs.

For the residual lab (docs/lab.md) every built-in block joins its branch and shortcut in `residual_join`, which sows
the branch, deletes lesioned blocks (`lesion`) and applies stochastic depth (`stochastic_depth`); `norm='none'` and
the SkipInit, ReZero and Fixup blocks give residual nets without BatchNorm.

For transfer learning the head is configurable (pooling, hidden layers, dropout: `Head`), the first K stages
(stem = stage 0) can run BatchNorm on their running statistics even in training (`frozen_bn_stages`, Keras'
trainable=False), and the backbone's output is sown as features/backbone for feature caching.
"""

import dataclasses
import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax import xla_cpu

ModuleDef = Any

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"), the He et al. initialisation.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Keras' he_normal (truncated normal, fan_in), which the Keras seed uses for convs and the classifier.
keras_he_normal = nn.initializers.he_normal()


def needs_projection(x: jnp.ndarray, filters: int, strides: int, shortcut: str) -> bool:
    """Whether the shortcut of a block mapping `x` to `filters` channels is a projection."""
    changes_channels = x.shape[-1] != filters
    changes_shape = strides != 1 or changes_channels
    return shortcut == "C" or (shortcut == "B" and changes_shape) or (shortcut == "B-channels" and changes_channels)


def zero_pad_shortcut(x: jnp.ndarray, filters: int, strides: int) -> jnp.ndarray:
    """Option A: subsample by `strides` and append zero channels up to `filters` (no parameters)."""
    x = x[:, ::strides, ::strides, :]
    extra = filters - x.shape[-1]
    if extra < 0:
        raise ValueError(f"option-A shortcut cannot reduce channels ({x.shape[-1]} -> {filters}); use shortcut='B'")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


def identity_shortcut(block: nn.Module, x: jnp.ndarray, out: int) -> jnp.ndarray:
    """A parameter-free shortcut: option A's zero padding, B-channels' strided identity, or the identity."""
    if block.shortcut in ("A", "B-channels"):
        return zero_pad_shortcut(x, out, block.strides)
    return x


class Block(nn.Module):
    """What every block is given: its width, conv/norm/activation factories, stride, shortcut option and residual
    switch, and whether it is lesioned (ResNet.lesion). A registered subclass also gets those of ResNet's per-block
    options it declares as fields. A block that computes its output with `residual_join` supports the lab's hooks."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    shortcut: str = "B"
    residual: bool = True
    lesioned: bool = False  # test-time deletion: the block returns its shortcut alone (residual_join)
    survival: float = 1.0  # stochastic depth: the branch's survival probability in training, its scale in evaluation
    stochastic_depth_mode: str = "batch"  # the branch is dropped for the whole batch ('batch') or per 'example'
    train: bool | None = None  # set by ResNet from its call's train; stochastic depth refuses to guess it

    norms = ("batch", "none")  # the ResNet.norm values the block works with; the first is its default
    branch_gain = False  # True: the branch is multiplied by a learnable scalar that starts at 0 (SkipInit, ReZero)
    zero_init_head = False  # True: the classifier's kernel starts at zero (Fixup)


def scalar(block: nn.Module, name: str, init: Callable, like: jnp.ndarray) -> jnp.ndarray:
    """A learnable scalar parameter of `block` (float32), in `like`'s dtype so that it keeps the compute dtype."""
    return block.param(name, init, (), jnp.float32).astype(like.dtype)


def residual_join(block: Block, x: jnp.ndarray, branch: jnp.ndarray,
                  shortcut: Callable[[], jnp.ndarray]) -> jnp.ndarray:
    """branch + shortcut() (the residual branch alone in a plain net), before any post-activation; the one place
    where every built-in block joins its two paths, so that the lab's hooks hold for all of them.

    The branch is multiplied by the block's gain (`branch_gain`: a learnable scalar `branch_gain`, initially 0), then
    by stochastic depth's keep mask in training (drawn from the 'dropout' rng: one draw for the batch or one per
    example) or by its survival probability in evaluation, and sown as intermediates/branch (taken with
    mutable=['intermediates']): output = shortcut + sown branch. A lesioned block returns its shortcut alone (the
    branch's parameters stay, unused); a lesioned plain block its parameter-free shortcut: the identity, or option
    A's zero padding where the shape changes. `shortcut` is called only in residual nets, so that a plain net has no
    shortcut parameters. A boolean variable lesion/alive of the block, passed to apply ({'lesion': {block name:
    {'alive': ...}}}, resnet_jax.lab.lesion.alive), deletes it as a traced value instead of the static field.
    """
    if block.branch_gain:
        branch = branch * scalar(block, "branch_gain", nn.initializers.zeros, branch)
    if block.survival < 1 and not block.lesioned:
        if block.train is None:
            raise ValueError(f"{type(block).__name__}: stochastic depth needs the block's train field set "
                             "(ResNet sets it from its call's train)")
        if block.train:
            rng = block.make_rng("dropout")
            if block.stochastic_depth_mode == "batch":
                keep = jax.random.bernoulli(rng, block.survival, (1,) * branch.ndim)
            else:  # drawn with the branch's sharding, as Head's dropout mask, so that it works on an Explicit mesh
                shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
                keep = jax.random.bernoulli(rng, block.survival, shape, out_sharding=jax.typeof(branch).sharding)
            branch = jnp.where(keep, branch, jnp.zeros_like(branch))
        else:
            branch = branch * jnp.asarray(block.survival, branch.dtype)
    if not block.is_initializing():  # init returns {'params', 'batch_stats'} only
        block.sow("intermediates", "branch", branch)
    if block.residual:
        path = shortcut()
        kept, deleted = branch + path, lambda: path
    else:
        out = branch.shape[-1]
        same = block.strides == 1 and x.shape[-1] == out
        kept, deleted = branch, lambda: x if same else zero_pad_shortcut(x, out, block.strides)
    if block.has_variable("lesion", "alive"):  # a traced lesion: one compiled net for every set of deleted blocks
        return jnp.where(block.get_variable("lesion", "alive"), kept, deleted())
    return deleted() if block.lesioned else kept


class PostActBlock(Block):
    """v1/v1.5 blocks: the last BN may start at zero; the projection shortcut may have a BN (projection_norm)."""

    zero_init_last: bool = False
    projection_norm: bool = True


class BasicBlock(PostActBlock):
    """Two 3x3 convs, post-activation (v1): conv-BN-ReLU, conv-BN, add, ReLU."""

    @nn.compact
    def __call__(self, x):
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last else nn.initializers.ones)(y)
        return self.act(residual_join(self, x, y, lambda: post_activation_shortcut(self, x, self.filters)))


class BottleneckBlock(PostActBlock):
    """1x1 (reduce to `inner`), 3x3, 1x1 (expand to filters x4), post-activation; v1.5 strides the 3x3, v1 the
    first 1x1."""

    stride_on_3x3: bool = True
    inner: int = 0  # 0 = filters; torchvision's wide ResNets double it
    expansion = 4

    @nn.compact
    def __call__(self, x):
        s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        inner = self.inner or self.filters
        y = self.act(self.norm()(self.conv(inner, (1, 1), s1)(x)))
        y = self.act(self.norm()(self.conv(inner, (3, 3), s3)(y)))
        y = self.conv(self.filters * self.expansion, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_last else nn.initializers.ones)(y)
        out = self.filters * self.expansion
        return self.act(residual_join(self, x, y, lambda: post_activation_shortcut(self, x, out)))


def post_activation_shortcut(block: PostActBlock, x: jnp.ndarray, out: int) -> jnp.ndarray:
    """The v1 shortcut: identity, option-A zero padding, or a 1x1 conv projection (+ BN unless
    projection_norm=False)."""
    if needs_projection(x, out, block.strides, block.shortcut):
        y = block.conv(out, (1, 1), block.strides, normalized=block.projection_norm, name="shortcut_conv")(x)
        return block.norm(name="shortcut_norm")(y) if block.projection_norm else y
    return identity_shortcut(block, x, out)


class PreActBlock(Block):
    """v2 blocks: the projection reads the pre-activation ('preact') or the raw block input ('input');
    `preactivated` skips the block's own BN-ReLU when the stem has just applied one."""

    projection_from: str = "preact"
    preactivated: bool = False


def pre_activation(block: PreActBlock, x: jnp.ndarray) -> jnp.ndarray:
    return x if block.preactivated else block.act(block.norm()(x))


class PreActBasicBlock(PreActBlock):
    """Two 3x3 convs, pre-activation (v2): BN-ReLU-conv, BN-ReLU-conv, add (no ReLU after)."""

    @nn.compact
    def __call__(self, x):
        pre = pre_activation(self, x)
        y = self.conv(self.filters, (3, 3), self.strides)(pre)
        y = self.conv(self.filters, (3, 3), normalized=False)(self.act(self.norm()(y)))
        return residual_join(self, x, y, lambda: pre_activation_shortcut(self, x, pre, self.filters))


class PreActBottleneckBlock(PreActBlock):
    """Pre-activation bottleneck (v2): BN-ReLU-1x1, BN-ReLU-3x3 (strided), BN-ReLU-1x1 (x4), add."""

    stride_on_3x3: bool = True
    inner: int = 0
    expansion = 4

    @nn.compact
    def __call__(self, x):
        s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        inner = self.inner or self.filters
        pre = pre_activation(self, x)
        y = self.conv(inner, (1, 1), s1)(pre)
        y = self.conv(inner, (3, 3), s3)(self.act(self.norm()(y)))
        y = self.conv(self.filters * self.expansion, (1, 1), normalized=False)(self.act(self.norm()(y)))
        out = self.filters * self.expansion
        return residual_join(self, x, y, lambda: pre_activation_shortcut(self, x, pre, out))


def pre_activation_shortcut(block: PreActBlock, x: jnp.ndarray, pre: jnp.ndarray, out: int) -> jnp.ndarray:
    """The v2 shortcut: a projection (1x1 conv, no BN) reads the pre-activated input as in He et al. 2016
    (projection_from='preact'), or the raw input as the Keras seed does ('input')."""
    if needs_projection(x, out, block.strides, block.shortcut):
        source = pre if block.projection_from == "preact" else x
        return block.conv(out, (1, 1), block.strides, normalized=False, name="shortcut_conv")(source)
    return identity_shortcut(block, x, out)


class SkipInitBasicBlock(BasicBlock):
    """SkipInit (De & Smith 2020): the basic block with a learnable scalar, initially 0, at the end of its branch;
    without normalisation by default (norm='none'), with BatchNorm as their ablation (norm='batch')."""

    norms = ("none", "batch")
    branch_gain = True


class SkipInitBottleneckBlock(BottleneckBlock):
    """SkipInit's bottleneck: the branch times a learnable scalar that starts at 0."""

    norms = ("none", "batch")
    branch_gain = True


class SkipInitPreActBasicBlock(PreActBasicBlock):
    """SkipInit's pre-activation basic block (their Wide-ResNets are pre-activation): x + alpha * branch."""

    norms = ("none", "batch")
    branch_gain = True


class SkipInitPreActBottleneckBlock(PreActBottleneckBlock):
    """SkipInit's pre-activation bottleneck: x + alpha * branch."""

    norms = ("none", "batch")
    branch_gain = True


def unnormalized_shortcut(block: Block, x: jnp.ndarray, out: int) -> jnp.ndarray:
    """The shortcut of a block without normalisation: a bare 1x1 conv projection, or a parameter-free shortcut."""
    if needs_projection(x, out, block.strides, block.shortcut):
        return block.conv(out, (1, 1), block.strides, normalized=False, name="shortcut_conv")(x)
    return identity_shortcut(block, x, out)


class ReZeroBlock(Block):
    """ReZero (Bachlechner et al. 2020): x + alpha * conv(act(conv(x))), alpha a learnable scalar starting at 0, no
    normalisation and no activation on the residual stream (x_{i+1} = x_i + alpha_i F(x_i)); the same in v1 and v2."""

    norms = ("none",)
    branch_gain = True

    @nn.compact
    def __call__(self, x):
        y = self.act(self.conv(self.filters, (3, 3), self.strides, normalized=False)(x))
        y = self.conv(self.filters, (3, 3), normalized=False)(y)
        return residual_join(self, x, y, lambda: unnormalized_shortcut(self, x, self.filters))


class FixupBlock(Block):
    """Fixup (Zhang, Dauphin & Ma 2019, section 3): no normalisation; a scalar bias (initially 0) before each conv and
    each activation, a scalar multiplier (initially 1) after the branch's last conv, which starts at zero; the branch's
    other convs start as He et al.'s (fan_out) scaled by L^(-1/(2m-2)), L residual branches of m layers; the classifier
    starts at zero (ResNet does it). The shortcut reads the biased input, as in the paper's code."""

    num_blocks: int = 1  # L, set by ResNet
    norms = ("none",)
    zero_init_head = True
    layers = 2  # m

    def scaled_init(self) -> Callable:
        return nn.initializers.variance_scaling(2.0 * self.num_blocks ** (-1.0 / (self.layers - 1)), "fan_out",
                                                "normal")

    def branch(self, x: jnp.ndarray, convs: Sequence[tuple[int, tuple[int, int], int]]) -> tuple[jnp.ndarray, ...]:
        """(branch output, x + its first bias): bias, conv, bias, act, ... for all but the last conv; then bias, the
        last conv (zero), multiplier, bias."""
        biased = x + scalar(self, "bias1a", nn.initializers.zeros, x)
        x = biased
        for i, (features, kernel, strides) in enumerate(convs):
            last = i == len(convs) - 1
            if i:
                x = x + scalar(self, f"bias{i + 1}a", nn.initializers.zeros, x)
            init = nn.initializers.zeros if last else self.scaled_init()
            x = self.conv(features, kernel, strides, bias="none", kernel_init=init)(x)
            if not last:
                x = self.act(x + scalar(self, f"bias{i + 1}b", nn.initializers.zeros, x))
        x = x * scalar(self, "scale", nn.initializers.ones, x)
        return x + scalar(self, f"bias{len(convs)}b", nn.initializers.zeros, x), biased

    @nn.compact
    def __call__(self, x):
        y, x_in = self.branch(x, [(self.filters, (3, 3), self.strides), (self.filters, (3, 3), 1)])
        return self.act(residual_join(self, x, y, lambda: unnormalized_shortcut(self, x_in, self.filters)))


class FixupBottleneckBlock(FixupBlock):
    """Fixup's bottleneck (m = 3: 1x1, 3x3, 1x1 x4; the stride on the 3x3 unless stride_on_3x3=False)."""

    stride_on_3x3: bool = True
    inner: int = 0
    expansion = 4
    layers = 3

    @nn.compact
    def __call__(self, x):
        s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        inner, out = self.inner or self.filters, self.filters * self.expansion
        y, x_in = self.branch(x, [(inner, (1, 1), s1), (inner, (3, 3), s3), (out, (1, 1), 1)])
        return self.act(residual_join(self, x, y, lambda: unnormalized_shortcut(self, x_in, out)))


class BlockClasses(NamedTuple):
    """The classes a registered block name stands for: `post` in v1/v1.5 nets, `pre` in v2 nets (None: not there)."""

    post: type[Block] | None
    pre: type[Block] | None


BLOCKS: dict[str, BlockClasses] = {}


def register_block(name: str, *, post: type[Block] | None = None, pre: type[Block] | None = None) -> None:
    """Make `name` a value of `ResNet.block`: `post` for versions v1/v1.5, `pre` for v2. A block class gets the
    fields of `Block` and, of the options ResNet computes per block (see `ResNet.block_options`), those it declares."""
    if post is None and pre is None:
        raise ValueError(f"register_block({name!r}) needs a post-activation or a pre-activation class (or both)")
    BLOCKS[name] = BlockClasses(post, pre)


def block_class(name: str, version: str) -> type[Block]:
    """The registered class of block `name` for `version`; unknown names fail listing the registered ones."""
    if name not in BLOCKS:
        near = difflib.get_close_matches(name, BLOCKS, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(f"unknown block {name!r}; {hint}registered blocks: {', '.join(map(repr, BLOCKS))} "
                         "(resnet_jax.models.register_block adds one)")
    pre = version == "v2"
    cls = BLOCKS[name].pre if pre else BLOCKS[name].post
    if cls is None:
        kind = "pre-activation (v2)" if pre else "post-activation (v1/v1.5)"
        raise ValueError(f"block {name!r} has no {kind} class, so version {version!r} cannot use it")
    return cls


register_block("basic", post=BasicBlock, pre=PreActBasicBlock)
register_block("bottleneck", post=BottleneckBlock, pre=PreActBottleneckBlock)
register_block("skipinit_basic", post=SkipInitBasicBlock, pre=SkipInitPreActBasicBlock)
register_block("skipinit_bottleneck", post=SkipInitBottleneckBlock, pre=SkipInitPreActBottleneckBlock)
register_block("rezero_basic", post=ReZeroBlock, pre=ReZeroBlock)
register_block("fixup_basic", post=FixupBlock)
register_block("fixup_bottleneck", post=FixupBottleneckBlock)


def conv2d(
    features: int,
    kernel_size: tuple[int, int],
    strides: int = 1,
    *,
    padding: str = "symmetric",
    bias: str = "none",
    normalized: bool = True,
    kernel_init: Callable = conv_init,
    module: ModuleDef = nn.Conv,
    **kwargs,
) -> nn.Conv:
    """A `module` conv with torchvision's symmetric padding of k // 2 a side, or TF/Keras 'same' padding (a stride-2
    conv on an even size pads one more at the bottom/right). `normalized`: a BatchNorm of its own follows, so
    bias='unnormalized' gives it no bias; bias='all' gives every conv one, 'none' none."""
    pad = "SAME" if padding == "same" else [(k // 2, k // 2) for k in kernel_size]
    use_bias = bias == "all" or (bias == "unnormalized" and not normalized)
    return module(features, kernel_size, strides, padding=pad, use_bias=use_bias, kernel_init=kernel_init, **kwargs)


def stem_max_pool(x: jnp.ndarray, padding: str, pool_padding: str) -> jnp.ndarray:
    """The ImageNet stem's 3x3/2 max-pool. Its border is ignored (-inf, torchvision and TF 'same') or zeros
    (Keras applications' ZeroPadding2D): they differ only where the pooled values can be negative (v2 stems)."""
    pads = ((1, 1), (1, 1)) if padding == "symmetric" else lax.padtype_to_pads(x.shape[1:3], (3, 3), (2, 2), "SAME")
    if pool_padding == "zeros":
        return nn.max_pool(jnp.pad(x, ((0, 0), *pads, (0, 0))), (3, 3), strides=(2, 2))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=pads)


class Head(nn.Module):
    """The classifier on the pooled backbone features: [dropout, Dense(width), act] per hidden width, dropout, Dense.

    Its layers are named `head_hidden<i>` and `head`; inside a ResNet they sit at the top level of its params
    (the default head, no hidden layer and no dropout, is the single Dense `head` of torchvision and the papers).
    """

    num_classes: int
    hidden: Sequence[int] = ()
    dropout: float = 0.0
    act: Callable = nn.relu
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()  # the last Dense's (Keras seed: he_normal)

    @nn.compact
    def __call__(self, x, *, train: bool):
        dense = partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
        for i, width in enumerate(self.hidden):
            x = self.act(dense(width, name=f"head_hidden{i + 1}")(self._dropout(x, train)))
        return dense(self.num_classes, kernel_init=self.kernel_init, name="head")(self._dropout(x, train))

    def _dropout(self, x, train: bool):
        """Inverted dropout (nn.Dropout's), its mask drawn with x's sharding so that it works on an Explicit mesh."""
        if not (train and self.dropout):
            return x
        keep = 1.0 - self.dropout
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape, out_sharding=jax.typeof(x).sharding)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


def is_head(layer: str) -> bool:
    """Whether a top-level layer of a ResNet's params belongs to its head (`head`, `head_hidden<i>`)."""
    return layer == "head" or layer.startswith("head_")


def head_of(model: "ResNet") -> Head:
    """The Head module of `model`: applied to the sown features with the model's params, it gives its logits."""
    zero = block_class(model.block, model.version).zero_init_head
    return Head(model.num_classes, tuple(model.head_hidden), model.head_dropout, model.act, model.dtype,
                model.param_dtype, nn.initializers.zeros if zero else model.head_init)


BLOCK_LAYER = re.compile(r"stage(\d+)_block(\d+)")


def block_index(layer: str) -> tuple[int, int] | None:
    """(stage, block), both from 1, of a top-level layer named stage<i>_block<j>; None for any other layer."""
    match = BLOCK_LAYER.fullmatch(layer)
    return (int(match[1]), int(match[2])) if match else None


def stage_of(layer: str, stages: int) -> int | None:
    """The stage of a top-level layer of a ResNet's params with `stages` stages counting the stem: stem* 0,
    stage<i>_block<j> i, final_norm the last one; None for the head's layers."""
    if is_head(layer):
        return None
    if layer.startswith("stem"):
        return 0
    if layer == "final_norm":
        return stages - 1
    index = block_index(layer)
    if index is None:
        raise ValueError(f"cannot tell which stage layer {layer!r} belongs to "
                         "(stem*, stage<i>_block<j>, final_norm, head*)")
    return index[0]


def forward_order(layer: str) -> tuple[int, list[int | str]]:
    """A sort key putting top-level layers in the order the forward pass runs them: stem, the blocks by stage and
    index (other layers among them, by name with its numbers read as numbers), final_norm, head_hidden<i>, head."""
    rank = 0 if layer.startswith("stem") else {"final_norm": 2, "head": 4}.get(layer, 3 if is_head(layer) else 1)
    return rank, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", layer)]


def check_choice(what: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where other frameworks' ResNets differ from torchvision's (the defaults) in weights or numbers, not in kind.

    The zoo's wide_resnet* and keras_* names set them, so that those frameworks' weights (resnet_jax.pretrained)
    reproduce their outputs. Options of the bottleneck, pre-activation or post-activation blocks only apply to them.
    """

    inner_widths: tuple[int, ...] = ()  # bottleneck 1x1/3x3 widths per stage; () = widths (wide ResNets double them)
    bottleneck_stride: str = ""  # '1x1' or '3x3'; '' = the version's: '1x1' for v1, '3x3' for v1.5 and v2
    downsample: str = "first"  # the block that strides: 'first' of stages 2.. (He et al.), 'last' of ..n-1 (Keras V2)
    conv_bias: str = "none"  # 'none', 'all' (Keras), 'unnormalized' (convs without a BN of their own: Keras V2)
    padding: str = "symmetric"  # 'symmetric' (k // 2 a side) or 'same' (TF/Keras Conv2D(padding='same'))
    pool_padding: str = "ignore"  # stem max-pool border: 'ignore' (-inf) or 'zeros' (Keras applications)
    projection_norm: bool = True  # v1/v1.5: BN after the projection conv (False: the Keras seed's bare conv)
    projection_from: str = "preact"  # v2: the projection reads the 'preact' (He et al.) or the raw 'input' (Keras seed)
    preact_stem_norm: bool = False  # v2: BN-ReLU after the stem conv, the first block's pre-activation (Keras seed)

    def __post_init__(self):
        object.__setattr__(self, "inner_widths", tuple(self.inner_widths))
        check_choice("bottleneck_stride", self.bottleneck_stride, ("", "1x1", "3x3"))
        check_choice("downsample", self.downsample, ("first", "last"))
        check_choice("conv_bias", self.conv_bias, ("none", "all", "unnormalized"))
        check_choice("padding", self.padding, ("symmetric", "same"))
        check_choice("pool_padding", self.pool_padding, ("ignore", "zeros"))
        check_choice("projection_from", self.projection_from, ("preact", "input"))


class ResNet(nn.Module):
    """A residual (or, with residual=False, plain) network.

    block: a registered block name (`register_block`; 'basic', 'bottleneck'); version picks its post-activation
    (v1, v1.5) or pre-activation (v2) class. stem: 'cifar' (3x3 conv, 16 filters) or 'imagenet' (7x7/2 conv + 3x3/2
    max-pool). bn_momentum is the running-average decay: PyTorch's momentum 0.1 is bn_momentum=0.9 here.
    layout: the framework-exact variants (`Layout`). conv: the conv module every conv is (compute only; the default
    gives lax's numbers, faster on XLA:CPU: resnet_jax.xla_cpu). Head: head_pooling 'avg' (global average) or
    'flatten' (the seeds' Flatten), then `Head`. frozen_bn_stages: the first K stages (stem = stage 0; -1 = all,
    final_norm included) run BatchNorm on their running statistics and leave them unchanged, also when train=True.
    norm: 'batch', or 'none' (every BatchNorm the identity, every conv biased; the BN-free blocks' default).
    stochastic_depth: 1 - p_L, block l of L surviving training with p_l = 1 - l/L (1 - p_L) (`survivals`), its branch
    dropped for the whole batch or per example (stochastic_depth_mode) and scaled by p_l in evaluation.
    lesion: block names (stage<i>_block<j>) deleted at test time, each returning its shortcut alone (`residual_join`):
    `model.clone(lesion=("stage2_block3",))`; not a config key (a test-time knob, resnet_jax.config.UNFORWARDED).
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int]
    num_classes: int
    block: str = "basic"
    version: str = "v1.5"  # 'v1', 'v1.5' or 'v2'
    stem: str = "imagenet"
    shortcut: str = "B"  # 'A', 'B', 'C', or 'B-channels' (projection only where the channel count changes)
    residual: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    act: Callable = nn.relu
    kernel_init: Callable = conv_init  # convs
    head_init: Callable = nn.initializers.lecun_normal()  # the classifier's kernel
    head_pooling: str = "avg"  # 'avg' | 'flatten'
    head_hidden: Sequence[int] = ()
    head_dropout: float = 0.0
    frozen_bn_stages: int = 0
    conv: ModuleDef = xla_cpu.Conv
    layout: Layout = Layout()
    norm: str = ""  # 'batch' | 'none'; '' = the block's own (its first of Block.norms)
    stochastic_depth: float = 0.0  # 1 - the last block's survival probability p_L (Huang et al. 2016)
    stochastic_depth_mode: str = "batch"  # 'batch' (the paper) | 'example'
    lesion: Sequence[str] = ()  # test-time: these blocks return their shortcut alone (residual_join)

    def __post_init__(self):
        object.__setattr__(self, "lesion", self.known_blocks(self.lesion, "lesion"))
        check_choice("version", self.version, ("v1", "v1.5", "v2"))
        block = block_class(self.block, self.version)
        check_choice("stem", self.stem, ("cifar", "imagenet"))
        check_choice("shortcut", self.shortcut, ("A", "B", "C", "B-channels"))
        check_choice("head_pooling", self.head_pooling, ("avg", "flatten"))
        if self.norm:
            check_choice(f"norm for block {self.block!r}", self.norm, block.norms)
        if not 0 <= self.stochastic_depth < 1:
            raise ValueError(f"stochastic_depth is 1 - the last block's survival probability, in [0, 1); "
                             f"got {self.stochastic_depth}")
        check_choice("stochastic_depth_mode", self.stochastic_depth_mode, ("batch", "example"))
        if len(self.widths) != len(self.stage_sizes):
            raise ValueError(f"widths {tuple(self.widths)} and stage_sizes {tuple(self.stage_sizes)} differ in length")
        options = block.__dataclass_fields__
        inner = self.layout.inner_widths
        if inner and ("inner" not in options or len(inner) != len(self.stage_sizes)):
            raise ValueError(
                f"inner_widths {inner} needs bottleneck blocks (a block with an `inner` field) and one width per stage "
                f"({len(self.stage_sizes)}); got block={self.block!r}"
            )
        if self.zero_init_residual and self.norm_kind() == "none":
            raise ValueError("zero_init_residual zeroes the last BN's scale of each block: with norm='none' there is "
                             "none (SkipInit and ReZero start their branches at zero anyway)")
        if self.zero_init_residual and "zero_init_last" not in options:
            raise ValueError(f"zero_init_residual needs a BN at the end of each block ({block.__name__} has none): "
                             "use version 'v1' or 'v1.5'")
        preact_options = self.layout.preact_stem_norm or self.layout.projection_from != "preact"
        if preact_options and not {"preactivated", "projection_from"} <= set(options):
            raise ValueError("preact_stem_norm and projection_from are options of pre-activation blocks: "
                             "use version 'v2'")
        if not 0 <= self.head_dropout < 1:
            raise ValueError(f"head_dropout is a drop probability in [0, 1); got {self.head_dropout}")
        stages = len(self.stage_sizes) + 1
        if not -1 <= self.frozen_bn_stages <= stages:
            raise ValueError(f"frozen_bn_stages={self.frozen_bn_stages}: this network has {stages} stages "
                             f"(stem = stage 0); use 0..{stages}, or -1 for all")
        super().__post_init__()

    def norm_kind(self) -> str:
        """'batch' or 'none': the norm field, or the block's own when it is ''."""
        return self.norm or block_class(self.block, self.version).norms[0]

    def survivals(self) -> list[float]:
        """Stochastic depth's survival probability of each block in forward order: p_l = 1 - l/L (1 - p_L)."""
        blocks = sum(self.stage_sizes)
        return [1.0 - k / blocks * self.stochastic_depth for k in range(1, blocks + 1)]

    @nn.nowrap  # plain helpers, callable in __post_init__ whatever Flax's context (tabulate, eval_shape)
    def block_names(self) -> list[str]:
        """The blocks' layer names in forward order: stage<i>_block<j>, both from 1."""
        return [f"stage{i + 1}_block{j + 1}" for i, n in enumerate(self.stage_sizes) for j in range(n)]

    @nn.nowrap
    def known_blocks(self, names: Iterable[str], what: str) -> tuple[str, ...]:
        """`names` as a tuple, after checking that each names a block of this network (a ValueError about `what`
        lists its blocks otherwise)."""
        names, blocks = tuple(names), self.block_names()
        unknown = [name for name in names if name not in blocks]
        if unknown:
            raise ValueError(f"{what} {unknown} names no block of this network; its blocks: {', '.join(blocks)}")
        return names

    def block_strides(self, stage: int, index: int) -> int:
        """2 for the one block of a stage that downsamples, else 1."""
        if self.layout.downsample == "first":
            return 2 if stage > 0 and index == 0 else 1
        return 2 if stage < len(self.stage_sizes) - 1 and index == self.stage_sizes[stage] - 1 else 1

    def block_options(self, stage: int, index: int) -> dict[str, Any]:
        """Of the per-block options below, those that are fields of the block's class (a block declares its own)."""
        layout = self.layout
        options = dict(
            inner=layout.inner_widths[stage] if layout.inner_widths else 0,
            stride_on_3x3=layout.bottleneck_stride == "3x3" or (not layout.bottleneck_stride and self.version != "v1"),
            zero_init_last=self.zero_init_residual,
            projection_norm=layout.projection_norm,
            projection_from=layout.projection_from,
            preactivated=layout.preact_stem_norm and stage == index == 0,
            num_blocks=sum(self.stage_sizes),
        )
        fields = block_class(self.block, self.version).__dataclass_fields__
        return {k: v for k, v in options.items() if k in fields}

    @nn.compact
    def __call__(self, x, *, train: bool):
        layout = self.layout
        normalized = self.norm_kind() == "batch"  # 'none': every norm is the identity, every conv gets a bias
        conv = partial(conv2d, padding=layout.padding, bias=layout.conv_bias if normalized else "all",
                       kernel_init=self.kernel_init,
                       module=self.conv, dtype=self.dtype, param_dtype=self.param_dtype)
        last_stage = len(self.stage_sizes)
        frozen = last_stage + 1 if self.frozen_bn_stages == -1 else self.frozen_bn_stages

        def norm_of(stage: int):
            if not normalized:
                return lambda **_: lambda y: y
            # Statistics are reduced in float32 whatever the compute dtype (Flax's default).
            return partial(nn.BatchNorm, use_running_average=not train or stage < frozen, momentum=self.bn_momentum,
                           epsilon=self.bn_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)

        preact = self.version == "v2"
        stem_norm = not preact or layout.preact_stem_norm
        x = jnp.asarray(x, self.dtype)
        kernel, strides = ((7, 7), 2) if self.stem == "imagenet" else ((3, 3), 1)
        x = conv(self.widths[0], kernel, strides, normalized=stem_norm, name="stem_conv")(x)
        if stem_norm:
            x = self.act(norm_of(0)(name="stem_norm")(x))
        if self.stem == "imagenet":
            x = stem_max_pool(x, layout.padding, layout.pool_padding)

        block = block_class(self.block, self.version)
        survivals = iter(self.survivals())
        for i, (n_blocks, filters) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(n_blocks):
                name = f"stage{i + 1}_block{j + 1}"
                x = block(filters, conv=conv, norm=norm_of(i + 1), act=self.act, strides=self.block_strides(i, j),
                          shortcut=self.shortcut, residual=self.residual, lesioned=name in self.lesion,
                          survival=next(survivals), stochastic_depth_mode=self.stochastic_depth_mode, train=train,
                          name=name, **self.block_options(i, j))(x)
        if preact:
            x = self.act(norm_of(last_stage)(name="final_norm")(x))
        x = jnp.mean(x, axis=(1, 2)) if self.head_pooling == "avg" else x.reshape(x.shape[0], -1)
        if not self.is_initializing():  # init returns {'params', 'batch_stats'} only
            self.sow("features", "backbone", x)  # the backbone's output, for feature caching (mutable=['features'])
        head = head_of(self)
        nn.share_scope(self, head)  # the head's layers are top-level layers of this model
        # Logits in at least float32 (bfloat16 compute) and float64 when the model computes in float64.
        return jnp.asarray(head(x, train=train), jnp.promote_types(self.dtype, jnp.float32))


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

# Other frameworks' ResNets, layer for layer, so that their weights load (resnet_jax.pretrained).
KERAS_LAYOUT = Layout(conv_bias="all", pool_padding="zeros")  # keras.applications.ResNet50/101/152
KERAS_V2_LAYOUT = dataclasses.replace(KERAS_LAYOUT, conv_bias="unnormalized", downsample="last")  # ResNet50V2/...
KerasResNet = partial(ImageNetResNet, block="bottleneck", version="v1", bn_epsilon=1.001e-5, layout=KERAS_LAYOUT)
KerasResNetV2 = partial(KerasResNet, version="v2", shortcut="B-channels", layout=KERAS_V2_LAYOUT)
# The Keras seed (keras.io's CIFAR-10 ResNet example): biased 'same' convs, he_normal, Keras' BN defaults.
KERAS_CIFAR = dict(
    widths=(16, 32, 64),
    stem="cifar",
    shortcut="B",
    bn_momentum=0.99,
    bn_epsilon=1e-3,
    kernel_init=keras_he_normal,
    head_init=keras_he_normal,
)
KERAS_CIFAR_LAYOUT = Layout(conv_bias="all", padding="same")
KERAS_CIFAR_VERSIONS = {
    # resnet_v1: basic blocks; the projection is a bare strided 1x1 conv.
    "v1": dict(KERAS_CIFAR, block="basic", version="v1",
               layout=dataclasses.replace(KERAS_CIFAR_LAYOUT, projection_norm=False)),
    # resnet_v2: bottlenecks 16/64/128 wide with outputs 64/128/256, strided first 1x1, the projection fed the raw
    # block input, and the stem's BN-ReLU serving as the first block's pre-activation.
    "v2": dict(KERAS_CIFAR, block="bottleneck", version="v2", layout=dataclasses.replace(
        KERAS_CIFAR_LAYOUT, inner_widths=(16, 64, 128), bottleneck_stride="1x1", projection_from="input",
        preact_stem_norm=True)),
}
NAMED_MODELS = {
    **{
        f"wide_resnet{d}_2": dict(ImageNetResNet.keywords, block="bottleneck", stage_sizes=IMAGENET_STAGES[d][1],
                                  layout=Layout(inner_widths=(128, 256, 512, 1024)))
        for d in (50, 101)
    },
    **{f"keras_resnet{d}": dict(KerasResNet.keywords, stage_sizes=IMAGENET_STAGES[d][1]) for d in (50, 101, 152)},
    **{f"keras_resnet{d}v2": dict(KerasResNetV2.keywords, stage_sizes=IMAGENET_STAGES[d][1]) for d in (50, 101, 152)},
}


def keras_cifar_spec(name: str) -> dict[str, Any] | None:
    """keras_cifar_resnet<6n+2>_v1 / keras_cifar_resnet<9n+2>_v2: the Keras seed's networks (None for other names)."""
    match = re.fullmatch(r"keras_cifar_resnet(\d+)_v([12])", name)
    if not match:
        return None
    depth, version = int(match[1]), f"v{match[2]}"
    per_block = 6 if version == "v1" else 9
    if depth < per_block + 2 or (depth - 2) % per_block:
        raise ValueError(f"the Keras seed's ResNet {version} depth must be {per_block}n+2; got {depth}")
    n = (depth - 2) // per_block
    return dict(KERAS_CIFAR_VERSIONS[version], stage_sizes=(n, n, n))


def _family(name: str) -> tuple[str, int]:
    """Split 'resnet56' / 'plain56' / 'cifar_resnet50' / 'preact_resnet164' / 'preact_plain164' into (family, depth)."""
    prefixes = (("preact_resnet", "preact"), ("preact_plain", "preact"), ("cifar_resnet", "cifar"),
                ("cifar_plain", "cifar"), ("resnet", "resnet"), ("plain", "resnet"))
    for prefix, family in prefixes:
        digits = name[len(prefix):]
        if name.startswith(prefix) and digits.isdigit():
            return family, int(digits)
    raise ValueError(
        f"unknown model {name!r}; names are resnet<depth> (CIFAR 6n+2: 20, 32, 44, 56, 110, 1202, …; "
        f"ImageNet: 18, 34, 50, 101, 152, 200), cifar_resnet<depth> (CIFAR 6n+2 only, e.g. cifar_resnet50), "
        f"preact_resnet<depth> (9n+2: 56, 110, 164, 1001, …), their plain twins plain<depth>, cifar_plain<depth>, "
        f"preact_plain<depth>, and other frameworks' layouts: {', '.join(NAMED_MODELS)}, "
        f"keras_cifar_resnet<6n+2>_v1, keras_cifar_resnet<9n+2>_v2. See resnet_jax.list_models()."
    )


def model_spec(name: str) -> dict[str, Any]:
    """The ResNet fields a zoo name stands for (the model is `ResNet(**model_spec(name), num_classes=…)`).

    resnet<d> is the ImageNet network for d in 18, 34, 50, 101, 152, 200 and the CIFAR one for any other 6n+2
    depth; 50, 152 and 200 are 6n+2 too, so their CIFAR networks are named cifar_resnet50/152/200.
    """
    if name in NAMED_MODELS:
        return dict(NAMED_MODELS[name])
    keras_cifar = keras_cifar_spec(name)
    if keras_cifar:
        return keras_cifar
    family, depth = _family(name)
    residual = "plain" not in name
    if family == "preact":
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"pre-activation CIFAR ResNet depth must be 9n+2 (56, 110, 164, 1001, …); got {depth}")
        n = (depth - 2) // 9
        return dict(PreActCifarResNet.keywords, stage_sizes=(n, n, n), residual=residual)
    if family == "resnet" and depth in IMAGENET_STAGES:
        block, stages = IMAGENET_STAGES[depth]
        return dict(ImageNetResNet.keywords, block=block, stage_sizes=stages, residual=residual)
    if depth < 8 or (depth - 2) % 6:
        imagenet = "" if family == "cifar" else f" and ImageNet depths are {', '.join(map(str, IMAGENET_STAGES))}"
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202, …){imagenet}; got {depth}")
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
    resnets += [f"cifar_resnet{d}" for d in IMAGENET_STAGES if (d - 2) % 6 == 0]  # the CIFAR twins of 50, 152, 200
    preacts = [f"preact_resnet{d}" for d in PREACT_CIFAR_DEPTHS]
    others = [*NAMED_MODELS, "keras_cifar_resnet20_v1", "keras_cifar_resnet29_v2"]
    return resnets + preacts + [n.replace("resnet", "plain") for n in resnets + preacts] + others
