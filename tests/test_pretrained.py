"""Weights in and out (resnet_jax.pretrained), proved offline against the reference frameworks on random weights.

Parity: each reference network gets random weights and random BatchNorm statistics (scale, bias, running mean and
variance), is converted, and both sides' eval-mode logits on the same images (2; 1 at 224x224) are compared. In
float64 on both sides they agree to 1e-9 relative (max |difference| / max |logit|; measured: below 3e-15), which
proves the architecture and the conversion, down to Keras' BatchNorm epsilon of 1.001e-5 (1e-5 moves ResNet-50's
logits by about 1e-8). In float32 our error against the float64 reference is at most 4x the reference's own float32
error: deep random nets amplify rounding (a fixed tolerance would fail ResNet-152 on rounding alone), and XLA's CPU
convs round in another order than oneDNN's and TF's (measured: ours 0.5x to 2.9x theirs, all below 1.4e-6).

Coverage (sizes: 224 the ImageNet size, 97 odd, 32 the seeds' size):
  torchvision resnet18, resnet50                                    224, 97, 32
  torchvision resnet34, wide_resnet50_2                             97, 32
  torchvision resnet101, resnet152, wide_resnet101_2                32 (the layers of resnet50 / wide_resnet50_2,
                                                                    repeated)
  timm (the same 7, loaded with the torchvision tensors)             32
  Keras applications ResNet50                                       224, 97, 32
  Keras applications ResNet50V2                                     97, 32
  Keras applications ResNet101/152, ResNet101V2/152V2               32 (the layers of ResNet50 / ResNet50V2, repeated)
  the Keras seed's v1 (depth 20) and v2 (depth 29), from .h5 files  32 (its AveragePooling2D(8) fixes the size)
Our forwards run eagerly: each op compiles once per shape and dtype and is reused across architectures
(ResNet-50/101/152 share every block shape), where jitting ResNet-152 alone takes about a minute on 2 cores.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from resnet_jax import create_model
from resnet_jax import pretrained
from resnet_jax.models import Layout
from resnet_jax.pretrained import (
    PretrainedWeightsError,
    export_torchvision,
    from_tensors,
    load_pretrained,
    torchvision_state_dict,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

TORCHVISION_SIZES = {
    "resnet18": (224, 97, 32),
    "resnet34": (97, 32),
    "resnet50": (224, 97, 32),
    "resnet101": (32,),
    "resnet152": (32,),
    "wide_resnet50_2": (97, 32),
    "wide_resnet101_2": (32,),
}
KERAS = {  # zoo name -> (keras.applications constructor name, sizes)
    "keras_resnet50": ("ResNet50", (224, 97, 32)),
    "keras_resnet50v2": ("ResNet50V2", (97, 32)),
    "keras_resnet101": ("ResNet101", (32,)),
    "keras_resnet152": ("ResNet152", (32,)),
    "keras_resnet101v2": ("ResNet101V2", (32,)),
    "keras_resnet152v2": ("ResNet152V2", (32,)),
}


def rel(a, b) -> float:
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def images(size: int, seed: int = 0) -> np.ndarray:
    """A float64 NHWC batch: 2 images, 1 at 224x224 (where the compute, not the dispatch, is the cost)."""
    return np.random.default_rng(seed).normal(size=(1 if size >= 224 else 2, size, size, 3))


def our_logits(name: str, tensors, fmt: str, sizes, num_classes: int = 1000, load=from_tensors) -> tuple[dict, dict]:
    """{(size, 'float64' | 'float32'): logits} of zoo model `name` with the converted weights, and the float64
    variables. `load(source, fmt, model, keep_head=True)`: from_tensors for tensors in memory, load_pretrained for a
    file."""
    out = {}
    with jax.enable_x64(True):
        model = create_model(name, num_classes, dtype=jnp.float64, param_dtype=jnp.float64)
        variables64 = load(tensors, fmt, model, keep_head=True)
        assert {v.dtype for v in jax.tree.leaves(variables64)} == {np.dtype("float64")}
        for size in sizes:
            out[size, "float64"] = np.asarray(model.apply(variables64, images(size), train=False))
    model = create_model(name, num_classes)
    variables = load(tensors, fmt, model, keep_head=True)
    for size in sizes:
        out[size, "float32"] = np.asarray(model.apply(variables, images(size).astype(np.float32), train=False))
    return out, variables64


def assert_parity(label: str, ours: dict, reference: dict) -> None:
    """float64: 1e-9 relative (the layout is exact). float32: within 1e-5 of the largest logit (84 float32
    epsilons; a bfloat16 or TF32 path errs by 1e-3), or 4x the reference's own float32 error if that is larger.
    Our float32 error is 0.5-2e-6 and moves with XLA:CPU's conv backend and thread split, as torch's own does."""
    for size in sorted({s for s, _ in reference}, reverse=True):
        r64 = reference[size, "float64"]
        e64, e32 = rel(ours[size, "float64"], r64), rel(ours[size, "float32"], r64)
        ref32 = rel(reference[size, "float32"], r64)
        print(f"parity {label} {size}x{size}: float64 {e64:.1e}; float32 ours {e32:.1e}, reference {ref32:.1e}")
        assert e64 < 1e-9, (label, size, e64)
        assert e32 <= max(4 * ref32, 1e-5), (label, size, e32, ref32)


# ---- torchvision and timm ---------------------------------------------------------------------------

def randomise_torch(model, seed: int = 0):
    """Random BN scale/bias/statistics (and the float64 copy) of a randomly initialised torch model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.5 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.5 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
    return model.double().eval()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Batches of 2 are too small for torch's threads: on a shared 2-core machine their spin-waits cost 7x the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def on_meta(build, state):
    """build() with `state` for weights, without initialising any (the `meta` device allocates nothing)."""
    with torch.device("meta"):
        model = build()
    model.load_state_dict(state, assign=True)
    return model.eval()


def torch_logits(model64, build, sizes) -> dict:
    """{(size, dtype): logits} of `model64` and of its float32 copy (`build()` makes the architecture)."""
    model32 = on_meta(build, {k: v.float() for k, v in model64.state_dict().items()})
    out = {}
    with torch.no_grad():
        for size in sizes:
            x = torch.from_numpy(images(size).transpose(0, 3, 1, 2).copy())
            out[size, "float64"] = model64(x).numpy()
            out[size, "float32"] = model32(x.float()).numpy()
    return out


@pytest.mark.parametrize("name", list(TORCHVISION_SIZES))
def test_torchvision_and_timm_parity_and_round_trip(name):
    import timm
    build = getattr(torchvision.models, name)
    reference = randomise_torch(build())
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    sizes = TORCHVISION_SIZES[name]
    ours, variables64 = our_logits(name, state, "torchvision", sizes)
    assert_parity(f"torchvision {name}", ours, torch_logits(reference, build, sizes))

    # timm's ResNets share torchvision's layout: the same tensors load into timm's own implementation.
    build_timm = lambda: timm.create_model(name)  # noqa: E731
    assert_parity(f"timm {name}", ours, torch_logits(on_meta(build_timm, reference.state_dict()), build_timm, (32,)))

    # Weights out: torchvision -> ours -> torchvision is bit-identical (num_batches_tracked we do not keep).
    back = torchvision_state_dict(variables64, create_model(name, 1000, param_dtype=jnp.float64))
    assert back.keys() == {k for k in state if not k.endswith("num_batches_tracked")}
    for key, value in back.items():
        assert value.dtype == state[key].dtype and np.array_equal(value, state[key]), key


@pytest.fixture(scope="module")
def resnet18_state():
    """A float32 torchvision resnet18 with random BN statistics, and its state dict as numpy arrays."""
    model = randomise_torch(torchvision.models.resnet18()).float()
    return model, {k: v.numpy() for k, v in model.state_dict().items()}


def test_torch_files_pth_safetensors_and_checkpoints_load_alike(resnet18_state, tmp_path):
    from safetensors.torch import save_file

    model, state = resnet18_state
    ours = create_model("resnet18", 10)
    expected = from_tensors(state, "torchvision", ours)
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")
    save_file(model.state_dict(), tmp_path / "resnet18.safetensors")
    # a DataParallel checkpoint
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "checkpoint.pt")
    for file, fmt in (("resnet18.pth", "torchvision"), ("resnet18.safetensors", "timm"), ("checkpoint.pt", "auto")):
        loaded = load_pretrained(tmp_path / file, fmt, ours)
        assert "head" not in loaded["params"]  # keep_head=False: the caller's new 10-class head
        jax.tree.map(np.testing.assert_array_equal, loaded, expected)


def test_export_torchvision_file_runs_in_torchvision(resnet18_state, tmp_path):
    from safetensors.torch import load_file

    reference, state = resnet18_state
    model = create_model("resnet18", 1000)
    variables = from_tensors(state, "torchvision", model, keep_head=True)
    path = export_torchvision(variables, model, tmp_path / "out" / "resnet18.safetensors")
    twin = torchvision.models.resnet18().eval()
    twin.load_state_dict(load_file(path))  # strict
    x = torch.from_numpy(images(64).astype(np.float32).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        np.testing.assert_array_equal(twin(x).numpy(), reference(x).numpy())


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("resnet50", dict(version="v1"), "torchvision's ResNet cannot run this model: version='v1'"),
        ("resnet20", {}, "stem='cifar'"),
        ("resnet50", dict(widths=(8, 16, 32, 64)), "widths=(8, 16, 32, 64)"),
    ],
)
def test_export_refuses_what_torchvision_cannot_run(name, overrides, message):
    model = create_model(name, 10, **overrides)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    with pytest.raises(PretrainedWeightsError, match=re.escape(message)):
        torchvision_state_dict(variables, model)


# ---- Errors ----------------------------------------------------------------------------------------

def test_wrong_architecture_lists_missing_unexpected_misshaped_and_names_the_file_model(resnet18_state):
    _, state = resnet18_state
    with pytest.raises(PretrainedWeightsError) as e:
        from_tensors(state, "torchvision", create_model("resnet34", 1000), source="resnet18.pth")
    message = str(e.value)
    assert ("the file holds resnet18 (torchvision layout) with a 1000-class head: "
            "create_model('resnet18', num_classes)") in message
    assert "stage_sizes=(3, 4, 6, 3) (the file's network: (2, 2, 2, 2))" in message
    assert "missing from the file (" in message and "layer1.2.conv1.weight" in message
    assert "unexpected" not in message

    state = dict(state, **{"layer1.0.conv1.weight": state["layer1.0.conv1.weight"][:32]})  # one tensor too small
    with pytest.raises(PretrainedWeightsError, match=r"mis-shaped \(1\): layer1\.0\.conv1\.weight \(32, 64, 3, 3\)"):
        from_tensors(state, "torchvision", create_model("resnet18", 10))


def test_file_options_the_keys_cannot_show_are_checked(resnet18_state):
    _, state = resnet18_state
    with pytest.raises(PretrainedWeightsError, match=re.escape("bn_epsilon=0.001 (the file's network: 1e-05)")):
        from_tensors(state, "torchvision", create_model("resnet18", 10, bn_epsilon=1e-3))
    with pytest.raises(PretrainedWeightsError, match=re.escape("padding='same' (the file's network: 'symmetric')")):
        from_tensors(state, "torchvision", create_model("resnet18", 10, layout=Layout(padding="same")))


def test_head_class_count_mismatch_says_keep_head_false(resnet18_state):
    _, state = resnet18_state
    with pytest.raises(PretrainedWeightsError,
                       match="the file's head has 1000 classes, the model 10: pass keep_head=False"):
        from_tensors(state, "torchvision", create_model("resnet18", 10), keep_head=True)


def test_a_transfer_head_starts_afresh_on_a_loaded_backbone(resnet18_state):
    """The seeds' head (hidden Dense layers, dropout, flatten) is in no file: the backbone loads, no head layer does."""
    _, state = resnet18_state
    model = create_model("resnet18", 10, head_pooling="flatten", head_hidden=(64,), head_dropout=0.5)
    loaded = from_tensors(state, "torchvision", model)
    plain = from_tensors(state, "torchvision", create_model("resnet18", 10))
    assert not [layer for layer in loaded["params"] if layer.startswith("head")]
    chex.assert_trees_all_equal(loaded, plain)


@pytest.mark.parametrize(
    "variant, message",
    [("resnet18d", "deep stem"), ("seresnet18", "squeeze-and-excitation"), ("resnet50_gn", "no running statistics")],
)
def test_unsupported_timm_variants_are_refused(variant, message):
    import timm
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in timm.create_model(variant).state_dict().items()}
    with pytest.raises(PretrainedWeightsError, match=message):
        from_tensors({k: np.zeros(s, np.float32) for k, s in shapes.items()}, "timm", create_model("resnet18", 10))


def test_grouped_convs_are_refused(resnet18_state):
    _, state = resnet18_state
    grouped = dict(state, **{"layer1.0.conv2.weight": state["layer1.0.conv2.weight"][:, :2]})  # 32 groups of 2
    with pytest.raises(PretrainedWeightsError, match="grouped"):
        from_tensors(grouped, "torchvision", create_model("resnet18", 10))


def test_wrong_or_unknown_format(tmp_path):
    (tmp_path / "w.pth").write_bytes(b"")
    model = create_model("resnet18", 10)
    with pytest.raises(PretrainedWeightsError,
                       match=re.escape("w.pth is a PyTorch file, not keras: use fmt='torchvision' or 'timm'")):
        load_pretrained(tmp_path / "w.pth", "keras", model)
    with pytest.raises(PretrainedWeightsError, match="unknown weights format 'onnx'"):
        load_pretrained(tmp_path / "w.pth", "onnx", model)
    with pytest.raises(PretrainedWeightsError, match="unknown weights file type '.npz'"):
        load_pretrained(tmp_path / "w.npz", "auto", model)
    with pytest.raises(PretrainedWeightsError, match=re.escape("Keras 3 archive")):
        load_pretrained(tmp_path / "w.keras", "keras", model)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    torch.save(torchvision.models.resnet18(), tmp_path / "whole_model.pth")  # a pickled module, not a state dict
    with pytest.raises(PretrainedWeightsError, match="would run code, which is refused"):
        load_pretrained(tmp_path / "whole_model.pth", "torchvision", create_model("resnet18", 10))


def test_missing_file_says_what_to_download_and_where(tmp_path):
    path = tmp_path / "resnet50.pth"
    with pytest.raises(FileNotFoundError) as e:
        load_pretrained(path, "torchvision", create_model("resnet50", 10))
    assert f"no weights file at {path}" in str(e.value)
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in str(e.value)
    with pytest.raises(FileNotFoundError, match=re.escape("resnet50_weights_tf_dim_ordering_tf_kernels.h5")):
        load_pretrained(tmp_path / "r.h5", "keras", create_model("keras_resnet50", 10))


def test_download_uses_the_cache_and_fails_offline_with_the_url_and_the_path(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise pretrained.urllib.error.URLError("no network")

    monkeypatch.setattr(pretrained.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as e:
        pretrained.download("resnet18", "torchvision", tmp_path)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(e.value)
    assert f"put it at {tmp_path / 'resnet18-f37072fd.pth'}" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no half file left behind
    (tmp_path / "resnet50.a1_in1k.safetensors").write_bytes(b"cached")
    assert pretrained.download("resnet50", "timm", tmp_path) == tmp_path / "resnet50.a1_in1k.safetensors"
    with pytest.raises(PretrainedWeightsError, match="no published keras weights for 'resnet18'"):
        pretrained.download("resnet18", "keras", tmp_path)


# ---- Keras ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras():
    import keras
    yield keras
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def keras_tensors(model) -> dict[str, np.ndarray]:
    """{'layer/weight': array}, as resnet_jax.pretrained.read_keras reads them from the model's .h5 file."""
    return {f"{layer.name}/{w.path.split('/')[-1]}": w.numpy() for layer in model.layers for w in layer.weights}


def randomise_keras(model, seed: int = 0) -> None:
    """Random BN scale/bias/statistics and conv/dense biases (Keras initialises them to 0 and 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.__class__.__name__ == "BatchNormalization":
            n = weights[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.5, 2.0, n)])
        elif len(weights) == 2:  # conv or dense with a bias
            layer.set_weights([weights[0], rng.normal(0, 0.1, weights[1].shape)])


def keras_pair(keras, build) -> tuple:
    """The network `build()` makes, in float64 with random weights, and its float32 copy."""
    pair = []
    for dtype in ("float64", "float32"):
        keras.config.set_floatx(dtype)  # the Input's dtype
        keras.config.set_dtype_policy(dtype)  # the layers'
        pair.append(build())
    randomise_keras(pair[0])
    pair[1].set_weights([w.astype(np.float32) for w in pair[0].get_weights()])
    return tuple(pair)


def keras_logits(pair, sizes) -> dict:
    return {(s, d): np.asarray(m(images(s).astype(d), training=False))
            for s in sizes for m, d in zip(pair, ("float64", "float32"), strict=True)}


@pytest.mark.parametrize("name", list(KERAS))
def test_keras_applications_parity(keras, name):
    constructor, sizes = KERAS[name]

    def build():
        # keras.applications' own top (GlobalAveragePooling2D 'avg_pool' + Dense 'predictions') on the headless
        # network, whose input size is free (the include_top model fixes it at 224).
        base = getattr(keras.applications, constructor)(weights=None, include_top=False, input_shape=(None, None, 3))
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
        return keras.Model(base.input, keras.layers.Dense(1000, name="predictions")(pooled))

    pair = keras_pair(keras, build)
    ours, _ = our_logits(name, keras_tensors(pair[0]), "keras", sizes)
    assert_parity(f"keras {constructor}", ours, keras_logits(pair, sizes))


@pytest.mark.parametrize("version, depth", [("v1", 20), ("v2", 29)])
def test_keras_seed_networks_parity_from_h5(keras, tmp_path, version, depth):
    import keras_seed

    def build():
        model = getattr(keras_seed, f"resnet_{version}")((32, 32, 3), depth)
        model.layers[-1].activation = keras.activations.linear  # logits, not the seed's softmax
        return model

    pair = keras_pair(keras, build)
    name = f"keras_cifar_resnet{depth}_{version}"
    assert sum(int(np.prod(w.shape)) for w in pair[0].trainable_weights) == {"v1": 273_066, "v2": 843_786}[version]
    pair[0].save(tmp_path / "seed.h5")  # the legacy HDF5 model file the seed's ModelCheckpoint writes
    ours, _ = our_logits(name, tmp_path / "seed.h5", "keras", (32,), num_classes=10, load=load_pretrained)
    assert_parity(f"keras seed {name}", ours, keras_logits(pair, (32,)))


def test_keras_h5_layouts_model_file_and_weights_file_read_alike(keras, tmp_path):
    import h5py
    import keras_seed

    model = keras_seed.resnet_v1((32, 32, 3), 8)
    expected = keras_tensors(model)
    model.save(tmp_path / "model.h5")  # model_weights/<layer>/<layer>/<weight>
    with h5py.File(tmp_path / "weights.h5", "w") as f:  # Keras 2's save_weights: <layer>/<layer>/<weight>:0 at the top
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        for layer in model.layers:
            names = [f"{layer.name}/{w.path.split('/')[-1]}:0" for w in layer.weights]
            group = f.create_group(layer.name)
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.weights, strict=True):
                group[n] = w.numpy()
    for file in ("model.h5", "weights.h5"):
        tensors = pretrained.read_keras(tmp_path / file)
        assert tensors.keys() == expected.keys()
        jax.tree.map(np.testing.assert_array_equal, tensors, expected)

    model.save_weights(tmp_path / "model.weights.h5")  # Keras 3: layers named by class, not by name
    with pytest.raises(PretrainedWeightsError, match=re.escape("model.save('model.h5')")):
        load_pretrained(tmp_path / "model.weights.h5", "keras", create_model("keras_cifar_resnet8_v1", 10))
