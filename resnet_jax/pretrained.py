"""Pretrained weights in and out: torchvision, timm and Keras files <-> resnet_jax variables.

    model = create_model("resnet50", num_classes=10)
    backbone = load_pretrained("resnet50-11ad3fa6.pth", "torchvision", model)  # {'params', 'batch_stats'}, no 'head'
    variables = model.init(key, x, train=False)  # then put `backbone` into it: the head stays the fresh 10-class one

Files: torchvision state dicts (.pth/.pt, or the same tensors as .safetensors) of resnet18/34/50/101/152 and
wide_resnet50_2/101_2; timm's plain ResNets of those depths (resnet50.a1_in1k, .tv_in1k, .gluon_in1k, ...), which
share torchvision's layout; Keras applications .h5 files of ResNet50/101/152 and ResNet50V2/101V2/152V2 (zoo names
keras_resnet50, keras_resnet50v2, ...); and Keras models saved with default layer names (conv2d, conv2d_1, ...)
whose layers were built in our module order, such as the Keras seed's (keras_cifar_resnet20_v1, ...).
Loading never runs code from a file: torch.load(weights_only=True), safetensors, h5py.

Layouts: torch conv kernels are OIHW (ours HWIO), dense kernels (out, in) (ours (in, out)); BatchNorm
weight/bias/running_mean/running_var (Keras gamma/beta/moving_mean/moving_variance) become scale/bias/mean/var.
torch's running_var averages the unbiased batch variance; eval mode uses it as stored, as Flax uses `var`, so it is
copied unchanged (only further training updates it differently, by a factor n/(n-1) per batch).
"""

import dataclasses
import os
import pickle
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax import models
from resnet_jax.models import ResNet, is_head

FORMATS = ("torchvision", "timm", "keras", "auto")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
KERAS_SUFFIXES = (".h5", ".hdf5")
VarPath = tuple[str, ...]  # ('params' | 'batch_stats', *modules, leaf)

TORCHVISION_URL = "https://download.pytorch.org/models/"
KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


def _hub(tag: str) -> tuple[str, str]:
    return f"https://huggingface.co/timm/{tag}/resolve/main/model.safetensors", f"{tag}.safetensors"


def _keras(name: str) -> tuple[str, str]:
    filename = f"{name}_weights_tf_dim_ordering_tf_kernels.h5"
    return KERAS_URL + filename, filename


# (format, zoo name) -> (URL, file name): torchvision's DEFAULT weights (IMAGENET1K_V2 where there is one),
# timm's default tag, Keras applications' include_top files (their *_notop.h5 load too, with keep_head=False).
PUBLISHED = {
    **{
        ("torchvision", name): (TORCHVISION_URL + filename, filename)
        for name, filename in [
            ("resnet18", "resnet18-f37072fd.pth"),
            ("resnet34", "resnet34-b627a593.pth"),
            ("resnet50", "resnet50-11ad3fa6.pth"),
            ("resnet101", "resnet101-cd907fc2.pth"),
            ("resnet152", "resnet152-f82ba261.pth"),
            ("wide_resnet50_2", "wide_resnet50_2-9ba9bcbe.pth"),
            ("wide_resnet101_2", "wide_resnet101_2-d733dc28.pth"),
        ]
    },
    **{
        ("timm", tag.split(".")[0]): _hub(tag)
        for tag in [
            "resnet18.a1_in1k",
            "resnet34.a1_in1k",
            "resnet50.a1_in1k",
            "resnet101.a1h_in1k",
            "resnet152.a1h_in1k",
            "wide_resnet50_2.racm_in1k",
            "wide_resnet101_2.tv_in1k",
        ]
    },
    **{("keras", f"keras_{name}"): _keras(name) for name in ("resnet50", "resnet101", "resnet152")},
    **{("keras", f"keras_{name}"): _keras(name) for name in ("resnet50v2", "resnet101v2", "resnet152v2")},
}
TORCH_ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200", "wide_resnet50_2",
                       "wide_resnet101_2")
KERAS_ARCHITECTURES = tuple(name for fmt, name in PUBLISHED if fmt == "keras")


class PretrainedWeightsError(ValueError):
    """A weights file that does not fit the model, is not in the format named, or holds an unsupported variant."""


def default_cache_dir() -> Path:
    """Where `download` puts files: $RESNET_JAX_WEIGHTS, else ~/.cache/resnet_jax/weights."""
    return Path(os.environ.get("RESNET_JAX_WEIGHTS", "~/.cache/resnet_jax/weights")).expanduser()


def download(name: str, fmt: str = "torchvision", cache_dir: str | Path | None = None) -> Path:
    """The published weights file of zoo model `name` in `fmt`, fetched into `cache_dir` unless already there.

    Without a network connection it fails with the URL and the path to put the file at by hand.
    """
    if (fmt, name) not in PUBLISHED:
        known = ", ".join(f"{n} ({f})" for f, n in PUBLISHED)
        raise PretrainedWeightsError(f"no published {fmt} weights for {name!r}; known files: {known}")
    url, filename = PUBLISHED[fmt, name]
    path = Path(cache_dir or default_cache_dir()) / filename
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")  # renamed when complete: no half file under the real name
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as e:
        partial.unlink(missing_ok=True)
        raise FileNotFoundError(f"could not download {url} ({e}); download it by hand and put it at {path}") from e
    partial.replace(path)
    return path


# ---- Model layouts ---------------------------------------------------------------------------------

# Fields a file's tensors say nothing of: training behaviour, initialisers, the conv module (compute only), and the
# head a transfer run puts on the backbone (its shapes are checked where the head is loaded, keep_head=True).
FREE_FIELDS = {"num_classes", "dtype", "param_dtype", "bn_momentum", "zero_init_residual", "kernel_init", "head_init",
               "head_pooling", "head_hidden", "head_dropout", "frozen_bn_stages", "conv"}


def layout(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ResNet fields (defaults filled in, `Layout`'s flattened in) that decide a network's weights and eval-mode
    function, normalised so that equal networks compare equal (inner_widths () = widths, bottleneck_stride '' =
    the version's)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ResNet) if f.default is not dataclasses.MISSING}
    full = {**defaults, **fields}
    out = {k: v for k, v in full.items() if k not in FREE_FIELDS | {"parent", "name", "layout"}}
    out.update(dataclasses.asdict(full["layout"]), stage_sizes=tuple(full["stage_sizes"]), widths=tuple(full["widths"]))
    bottleneck = full["block"] == "bottleneck"
    out["inner_widths"] = out["inner_widths"] or (out["widths"] if bottleneck else ())
    version_stride = "1x1" if full["version"] == "v1" else "3x3"
    out["bottleneck_stride"] = (out["bottleneck_stride"] or version_stride) if bottleneck else ""
    return out


def model_layout(model: ResNet) -> dict[str, Any]:
    return layout({f.name: getattr(model, f.name) for f in dataclasses.fields(ResNet)})


def zoo_name(target: Mapping[str, Any], candidates: tuple[str, ...]) -> str | None:
    """The first candidate zoo name whose layout is `target` (a `layout(...)` dict)."""
    return next((name for name in candidates if layout(models.model_spec(name)) == target), None)


def abstract_variables(model: ResNet) -> dict[VarPath, jax.ShapeDtypeStruct]:
    """Every variable of the model, flattened, as shape and dtype (no compute, no memory)."""
    init = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), model.dtype), train=False))
    return traverse_util.flatten_dict(init)


# ---- Names: our variables <-> theirs ------------------------------------------------------------------

LEAF_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
LEAF_KERAS_NORM = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}
INDEXED = re.compile(r"(Conv|BatchNorm)_(\d+)")


def is_norm(module: str) -> bool:
    return "norm" in module.lower()


def torch_key(path: VarPath) -> str:
    """('params', 'stage2_block1', 'Conv_0', 'kernel') -> 'layer2.0.conv1.weight' (torchvision's ResNet names)."""
    _, *modules, leaf = path
    block = models.block_index(modules[0])
    if block:
        inner = modules[1]
        indexed = INDEXED.fullmatch(inner)
        if indexed:
            inner = f"{'conv' if indexed[1] == 'Conv' else 'bn'}{int(indexed[2]) + 1}"
        inner = {"shortcut_conv": "downsample.0", "shortcut_norm": "downsample.1"}.get(inner, inner)
        module = f"layer{block[0]}.{block[1] - 1}.{inner}"
    else:
        module = {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc"}.get(modules[0], ".".join(modules))
    return f"{module}.{LEAF_TORCH[leaf]}"


def keras_key(path: VarPath, version: str) -> str:
    """('params', 'stage2_block1', 'Conv_0', 'kernel') -> 'conv3_block1_1_conv/kernel' (Keras applications' names)."""
    _, *modules, leaf = path
    block = models.block_index(modules[0])
    if block:
        inner = modules[1]
        indexed = INDEXED.fullmatch(inner)
        if inner in ("shortcut_conv", "shortcut_norm"):
            suffix = "0_conv" if inner == "shortcut_conv" else "0_bn"
        elif indexed[1] == "Conv":
            suffix = f"{int(indexed[2]) + 1}_conv"
        elif version == "v2":  # pre-activation: BatchNorm_0 is the block's preact, BatchNorm_k precedes conv k+1
            suffix = "preact_bn" if indexed[2] == "0" else f"{indexed[2]}_bn"
        else:
            suffix = f"{int(indexed[2]) + 1}_bn"
        layer = f"conv{block[0] + 1}_block{block[1]}_{suffix}"
    else:
        names = {"stem_conv": "conv1_conv", "stem_norm": "conv1_bn", "final_norm": "post_bn", "head": "predictions"}
        layer = names.get(modules[0], modules[0])
    return f"{layer}/{LEAF_KERAS_NORM[leaf] if is_norm(modules[-1]) else leaf}"


KERAS_DEFAULT_NAME = re.compile(r"(conv2d|batch_normalization|dense)(?:_(\d+))?")


def keras_kind(module: str) -> str:
    return "dense" if module == "head" else "batch_normalization" if is_norm(module) else "conv2d"


def creation_order(modules: tuple[str, ...]) -> tuple:
    """Sort key putting our modules in the order the model creates them (stem, blocks' layers, shortcut, head)."""
    indexed = INDEXED.fullmatch(modules[1]) if len(modules) > 1 else None
    return *models.forward_order(modules[0]), int(indexed[2]) if indexed else 99


def keras_default_names(paths: list[VarPath], tensors: Mapping[str, np.ndarray]) -> dict[VarPath, str]:
    """Our variables -> the file's, for Keras models with default layer names: the k-th conv2d / batch_normalization /
    dense layer (by name number) is our k-th conv / BatchNorm / dense in creation order."""
    theirs: dict[str, list[str]] = {}
    layers = {key.split("/")[0] for key in tensors}
    for layer in sorted(layers, key=lambda n: int(KERAS_DEFAULT_NAME.fullmatch(n)[2] or 0)):
        theirs.setdefault(KERAS_DEFAULT_NAME.fullmatch(layer)[1], []).append(layer)
    ours: dict[str, list[tuple[str, ...]]] = {}
    for modules in sorted({tuple(p[1:-1]) for p in paths}, key=creation_order):
        ours.setdefault(keras_kind(modules[-1]), []).append(modules)
    layer_of = {}
    for kind, modules_list in ours.items():
        named = theirs.get(kind, [])
        for k, modules in enumerate(modules_list):
            layer_of[modules] = named[k] if k < len(named) else f"{kind}_{k} (absent: the file has {len(named)})"
    return {
        p: f"{layer_of[tuple(p[1:-1])]}/{LEAF_KERAS_NORM[p[-1]] if is_norm(p[-2]) else p[-1]}" for p in paths
    }


def to_torch_layout(value: np.ndarray) -> np.ndarray:
    """Conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in); vectors unchanged."""
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 else value


def from_torch_layout(value: np.ndarray) -> np.ndarray:
    """Conv kernels OIHW -> HWIO, dense kernels (out, in) -> (in, out); vectors unchanged."""
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value


# ---- What a file holds ---------------------------------------------------------------------------

def torch_variant(tensors: Mapping[str, np.ndarray]) -> str | None:
    """Why a torch-layout file is not one of torchvision's plain ResNets, or None."""
    conv2 = tensors.get("layer1.0.conv2.weight")
    if "conv1.0.weight" in tensors:
        return "its stem is three 3x3 convs (a deep stem: timm's resnet*c / resnet*d / resnet*s / resnet*t)"
    if any(re.fullmatch(r"layer\d+\.0\.downsample\.2\.weight", k) for k in tensors):
        return "its shortcuts average-pool before the projection (ResNet-D: timm's resnet*d)"
    if any(".se." in k or ".attn." in k for k in tensors):
        return "its blocks have attention / squeeze-and-excitation modules (timm's seresnet*, ecaresnet*, ...)"
    if "bn1.weight" in tensors and "bn1.running_mean" not in tensors:
        return "its norms have no running statistics (GroupNorm/LayerNorm, e.g. timm's resnet50_gn)"
    if conv2 is not None and conv2.ndim == 4 and conv2.shape[1] != conv2.shape[0]:
        return f"its 3x3 convs are grouped ({conv2.shape[0] // conv2.shape[1]} groups: ResNeXt)"
    return None


def torch_architecture(tensors: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The torchvision-layout network a state dict holds, as a `layout`, or None if it is no torchvision ResNet."""
    stages = []
    while f"layer{len(stages) + 1}.0.conv1.weight" in tensors:
        i = len(stages) + 1
        stages.append(sum(1 for k in tensors if re.fullmatch(rf"layer{i}\.\d+\.conv1\.weight", k)))
    if not stages or "conv1.weight" not in tensors:
        return None
    bottleneck = "layer1.0.conv3.weight" in tensors
    first = [tensors[f"layer{i}.0.conv1.weight"].shape[0] for i in range(1, len(stages) + 1)]
    widths = first
    if bottleneck:  # the 1x1/3x3 width is `first`, the block's output 4x its width
        widths = [tensors[f"layer{i}.0.conv3.weight"].shape[0] // 4 for i in range(1, len(stages) + 1)]
    return layout(
        dict(
            models.ImageNetResNet.keywords,
            block="bottleneck" if bottleneck else "basic",
            stage_sizes=stages,
            widths=widths,
            layout=models.Layout(inner_widths=first if bottleneck else ()),
        )
    )


def keras_architecture(tensors: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The Keras applications ResNet(V2) an .h5 file holds, as a `layout`, or None."""
    layers = {key.split("/")[0] for key in tensors}
    stages = []
    while f"conv{len(stages) + 2}_block1_1_conv" in layers:
        s = len(stages) + 2
        stages.append(sum(1 for layer in layers if re.fullmatch(rf"conv{s}_block\d+_1_conv", layer)))
    if not stages:
        return None
    widths = [tensors[f"conv{s}_block1_1_conv/kernel"].shape[-1] for s in range(2, len(stages) + 2)]
    base = models.KerasResNetV2 if "conv2_block1_preact_bn" in layers else models.KerasResNet
    return layout(dict(base.keywords, stage_sizes=stages, widths=widths))


def keras_seed_name(tensors: Mapping[str, np.ndarray]) -> str | None:
    """The Keras seed network (keras_cifar_resnet<depth>_v1/_v2) with the layer counts of a default-named file, or
    None."""
    kinds = [KERAS_DEFAULT_NAME.fullmatch(layer)[1] for layer in {key.split("/")[0] for key in tensors}]
    convs, norms = kinds.count("conv2d"), kinds.count("batch_normalization")
    if convs > 3 and (convs - 3) % 6 == 0 and norms == convs - 2:  # stem + 2 a block + 2 projections
        return f"keras_cifar_resnet{convs - 1}_v1"
    if convs > 4 and (convs - 4) % 9 == 0 and norms == convs - 3:  # stem + 3 a block + 3 projections
        return f"keras_cifar_resnet{convs - 2}_v2"
    return None


# ---- Reading files ------------------------------------------------------------------------------

def resolve_format(path: Path, fmt: str) -> str:
    """'torch' or 'keras' from `fmt` and the file's suffix; a format that contradicts the suffix is an error."""
    if fmt not in FORMATS:
        raise PretrainedWeightsError(f"unknown weights format {fmt!r}; choose one of {', '.join(FORMATS)}")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        raise PretrainedWeightsError(
            f"{path.name} is a Keras 3 archive, whose weights name layers by class, not by name: load it with "
            "keras.saving.load_model and save it with model.save('model.h5'), which keeps the names"
        )
    kind = "keras" if suffix in KERAS_SUFFIXES else "torch" if suffix in TORCH_SUFFIXES else None
    if kind is None:
        raise PretrainedWeightsError(
            f"{path.name}: unknown weights file type {suffix!r}; torchvision/timm files end in "
            f"{', '.join(TORCH_SUFFIXES)}, Keras files in {', '.join(KERAS_SUFFIXES)}"
        )
    wanted = {"torchvision": "torch", "timm": "torch", "keras": "keras"}.get(fmt, kind)
    if wanted != kind:
        right = "'keras'" if kind == "keras" else "'torchvision' or 'timm'"
        framework = "Keras" if kind == "keras" else "PyTorch"
        raise PretrainedWeightsError(f"{path.name} is a {framework} file, not {fmt}: use fmt={right}")
    return kind


def read_torch(path: Path) -> dict[str, np.ndarray]:
    """A state dict from .safetensors, or from a torch pickle with weights_only=True (tensors only, no code)."""
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(path)
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise PretrainedWeightsError(
            f"{path.name} is not a plain state dict: loading it would run code, which is refused ({e})") from e
    for key in ("state_dict", "model", "state_dict_ema"):  # training checkpoints wrap the state dict
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()}


def read_keras(path: Path) -> dict[str, np.ndarray]:
    """{'layer/weight': array} from a Keras HDF5 weights file (layers at the top) or model file (under
    model_weights/)."""
    import h5py

    with h5py.File(path, "r") as f:
        root = f.get("model_weights", f)
        if "layer_names" not in root.attrs:
            raise PretrainedWeightsError(
                f"{path.name} has no layer names (a Keras 3 .weights.h5 file names layers by class, not by name); "
                "load it into its Keras model and save that with model.save('model.h5'), which keeps the names"
            )
        tensors = {}
        for layer in root.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            group = root[layer]
            for weight in group.attrs.get("weight_names", []):
                weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                leaf = re.sub(r":\d+$", "", weight.split("/")[-1])  # 'conv1_conv/kernel:0' -> 'kernel'
                tensors[f"{layer}/{leaf}"] = np.asarray(group[weight])
    return tensors


# ---- Loading --------------------------------------------------------------------------------------

def load_pretrained(path: str | Path, fmt: str, model: ResNet, *, keep_head: bool = False) -> dict[str, Any]:
    """The {'params', 'batch_stats'} in a torchvision / timm / Keras weights file, fitted to `model`'s variables.

    keep_head=False leaves out the classifier ('head'), for a new one of the model's class count; keep_head=True
    needs the file's class count. fmt 'auto' goes by the suffix (.h5 Keras, else torchvision/timm). A file that
    does not fit raises PretrainedWeightsError naming what is missing, unexpected and mis-shaped, and the model the
    file holds; a missing file raises FileNotFoundError saying where to download it.
    """
    path = Path(path).expanduser()
    kind = resolve_format(path, fmt)
    if not path.is_file():
        raise FileNotFoundError(missing_file_message(path, fmt, model))
    tensors = read_torch(path) if kind == "torch" else read_keras(path)
    fmt = fmt if fmt != "auto" else ("keras" if kind == "keras" else "torchvision")
    return from_tensors(tensors, fmt, model, keep_head=keep_head, source=path.name)


def missing_file_message(path: Path, fmt: str, model: ResNet) -> str:
    """Which file to download for `model` in `fmt`, from where, and where it was looked for."""
    formats = [fmt] if fmt != "auto" else ["torchvision", "timm", "keras"]
    name = zoo_name(model_layout(model), tuple(n for f, n in PUBLISHED if f in formats))
    published = [(f, PUBLISHED[f, name]) for f in formats if (f, name) in PUBLISHED]
    if not published:
        return f"no weights file at {path}, and no published {'/'.join(formats)} file fits this model"
    f, (url, filename) = published[0]
    return (
        f"no weights file at {path}. For {name} ({f}) download {url} and put it there "
        f"(or resnet_jax.pretrained.download({name!r}, {f!r}) saves it as {default_cache_dir() / filename})"
    )


class FileMatch(NamedTuple):
    """How a file's tensors line up with a model's variables."""

    names: dict[VarPath, str]  # our variable -> the file's key
    to_ours: Callable[[np.ndarray], np.ndarray]  # the file's array -> our layout
    target: dict[str, Any] | None  # the layout of the network the file holds (None: not recognised)
    candidates: tuple[str, ...]  # zoo names it may be
    classes: int | None  # its head's class count (None: no head)


def describe(match: FileMatch, fmt: str) -> str:
    """'resnet50 (torchvision layout) with a 1000-class head: create_model('resnet50', num_classes)', for messages."""
    head = f" with a {match.classes}-class head" if match.classes else " without a head"
    if match.target is None:
        return f"no {fmt} ResNet the zoo knows"
    name = zoo_name(match.target, match.candidates)
    if name:
        return f"{name} ({fmt} layout){head}: create_model({name!r}, num_classes)"
    shown = {k: match.target[k] for k in ("block", "version", "stage_sizes", "widths", "inner_widths")}
    return f"a {fmt}-layout ResNet{head}: " + ", ".join(f"{k}={v!r}" for k, v in shown.items())


def match_file(
    tensors: Mapping[str, np.ndarray], fmt: str, model: ResNet, paths: list[VarPath], source: str
) -> FileMatch:
    """Our variables' names in the file, and what network the file holds."""
    if fmt in ("torchvision", "timm"):
        variant = torch_variant(tensors)
        if variant:
            raise PretrainedWeightsError(
                f"{source} is not a plain torchvision/timm ResNet: {variant}. Supported: torchvision's and timm's "
                f"resnet18/34/50/101/152 and wide_resnet50_2/101_2 (any weights tag, e.g. resnet50.a1_in1k)"
            )
        classes = tensors["fc.weight"].shape[0] if "fc.weight" in tensors else None
        names = {p: torch_key(p) for p in paths}
        return FileMatch(names, from_torch_layout, torch_architecture(tensors), TORCH_ARCHITECTURES, classes)
    if fmt != "keras":
        raise PretrainedWeightsError(f"unknown weights format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if any(KERAS_DEFAULT_NAME.fullmatch(k.split("/")[0]) is None for k in tensors):
        names = {p: keras_key(p, model.version) for p in paths}
        target, candidates = keras_architecture(tensors), KERAS_ARCHITECTURES
    else:  # default layer names only (conv2d, conv2d_1, ...): matched by creation order
        names = keras_default_names(paths, tensors)
        seed = keras_seed_name(tensors)
        target, candidates = (layout(models.model_spec(seed)), (seed,)) if seed else (None, ())
    head = names[("params", "head", "kernel")]
    return FileMatch(names, np.asarray, target, candidates, tensors[head].shape[-1] if head in tensors else None)


def from_tensors(
    tensors: Mapping[str, np.ndarray], fmt: str, model: ResNet, *, keep_head: bool = False, source: str = "the tensors"
) -> dict[str, Any]:
    """`load_pretrained` for tensors already in memory: a torch state dict as numpy arrays (fmt 'torchvision' or
    'timm') or Keras {'layer/weight': array} (fmt 'keras')."""
    tensors = {k: np.asarray(v) for k, v in tensors.items()}
    # The hidden layers of a transfer head (head_hidden<i>) are in no published file: they always start afresh.
    expected = {p: v for p, v in abstract_variables(model).items() if p[1] == "head" or not is_head(p[1])}
    # In the order the model creates them (conv before its BN, params before statistics), for readable messages.
    paths = sorted(
        expected, key=lambda p: (creation_order(p[1:-1]), keras_kind(p[-2]) != "conv2d", p[0] != "params", p[-1]))
    match = match_file(tensors, fmt, model, paths, source)
    head_keys = {match.names[p] for p in paths if p[1] == "head"}
    if not keep_head:
        paths = [p for p in paths if p[1] != "head"]
    ignored = {k for k in tensors if k.endswith("num_batches_tracked")} | (set() if keep_head else head_keys)
    unexpected = sorted(set(tensors) - {match.names[p] for p in paths} - ignored)
    missing, misshaped, flat = [], [], {}
    for p in paths:
        key = match.names[p]
        if key not in tensors:
            missing.append(key)
            continue
        value = match.to_ours(tensors[key])
        if value.shape != expected[p].shape:
            misshaped.append(f"{key} {tensors[key].shape} (as ours {value.shape}; "
                             f"the model's {'/'.join(p[1:])} is {expected[p].shape})")
            continue
        dtype = expected[p].dtype if p[0] == "params" else jnp.promote_types(expected[p].dtype, model.param_dtype)
        flat[p] = value.astype(dtype)

    ours = model_layout(model)
    differ = [f"{k}={ours[k]!r} (the file's network: {v!r})" for k, v in (match.target or {}).items() if ours[k] != v]
    if missing or unexpected or misshaped or differ:
        lines = [f"{source} ({fmt}) cannot load into this model: the file holds {describe(match, fmt)}"]
        if differ:
            lines.append(f"model options that differ from the file's network: {'; '.join(differ)}")
        for what, keys in (("missing from the file", missing), ("unexpected in the file", unexpected),
                           ("mis-shaped", misshaped)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
                lines.append(f"{what} ({len(keys)}): {shown}")
        if keep_head and any(key.split(" ")[0] in head_keys for key in missing + misshaped):
            lines.append(f"the file's head has {match.classes or 'no'} classes, the model {model.num_classes}: "
                         "pass keep_head=False for a new head")
        raise PretrainedWeightsError("\n  ".join(lines))
    return traverse_util.unflatten_dict(flat)


# ---- Weights out --------------------------------------------------------------------------------

def torchvision_state_dict(variables: Mapping[str, Any], model: ResNet) -> dict[str, np.ndarray]:
    """Our {'params', 'batch_stats'} as a torchvision ResNet state dict (numpy arrays; num_batches_tracked, which
    we do not keep, is left out: torch's BatchNorm fills it in on load_state_dict, strict or not)."""
    ours = model_layout(model)
    torchvision = layout(dict(models.ImageNetResNet.keywords, block=model.block, stage_sizes=model.stage_sizes))
    inner = ours["inner_widths"]
    differ = [f"{k}={ours[k]!r} (torchvision: {torchvision[k]!r})" for k in ours
              if k != "inner_widths" and ours[k] != torchvision[k]]
    if differ or (inner and len({i / w for i, w in zip(inner, ours["widths"], strict=True)}) != 1):
        raise PretrainedWeightsError(
            "torchvision's ResNet cannot run this model: "
            + ("; ".join(differ) or f"inner_widths={inner} (one width_per_group)"))
    flat = traverse_util.flatten_dict({c: variables[c] for c in ("params", "batch_stats")})
    return {torch_key(p): np.ascontiguousarray(to_torch_layout(np.asarray(v))) for p, v in flat.items()}


def export_torchvision(variables: Mapping[str, Any], model: ResNet, path: str | Path) -> Path:
    """Write `variables` as a torchvision state dict in safetensors, for
    `torchvision.models.resnet50().load_state_dict(safetensors.torch.load_file(path))`."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(torchvision_state_dict(variables, model), path)
    return path
