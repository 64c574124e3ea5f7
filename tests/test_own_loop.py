"""The own-loop example (examples/own_loop.py) trains with nothing but create_model and resnet_jax.steps, and
importing the steps leaves the product (orbax, TensorFlow, matplotlib, tqdm, absl's app) out."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_own_loop_example_learns_on_a_small_subset(learnable_idx_dir, capsys):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import own_loop
    finally:
        sys.path.pop(0)
    accuracy = own_loop.main(["--data", str(learnable_idx_dir), "--model", "resnet8", "--steps", "30",
                              "--batch", "32"])
    out = capsys.readouterr().out
    assert "step 30" not in out and "test accuracy" in out  # losses print every 100 steps; the result always
    assert accuracy > 0.9  # two classes a tiny net separates in a few steps (chance: 0.5)


def test_importing_the_steps_loads_none_of_the_product():
    code = """
import sys
import flax.linen, optax  # what the steps are written with: their own imports are not ours
before = {m.split('.')[0] + ('.' + m.split('.')[1] if m.startswith('absl.') else '') for m in sys.modules}
import resnet_jax.steps
from resnet_jax import create_model
after = {m.split('.')[0] + ('.' + m.split('.')[1] if m.startswith('absl.') else '') for m in sys.modules}
print(sorted(after - before))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    added = eval(out)  # noqa: S307 - our own subprocess's printed list
    assert added, "the probe saw no import at all"
    for product in ("orbax", "tensorflow", "matplotlib", "tqdm", "absl.app", "absl.flags", "ml_collections",
                    "tensorflow_datasets"):
        assert product not in added, f"importing resnet_jax.steps loaded {product}"
    assert "resnet_jax" in added
