"""A training loop of your own around resnet-jax's model and pure steps: ResNet-20 on real Fashion-MNIST, offline.

    python examples/own_loop.py [--data /usr/share/datasets/fashion-mnist] [--model resnet20] [--steps 1500]

Nothing of resnet_jax.loop is used (no checkpoints, logs or CLI): `create_model`, `train_step` and `eval_step`.
"""

import argparse
from functools import partial

import jax
import numpy as np
import optax

from resnet_jax import create_model
from resnet_jax.data import default_config, load_dataset
from resnet_jax.steps import create_train_state, eval_step, train_step


def main(argv: list[str] | None = None) -> float:
    """Train, print the loss every 100 steps and the test accuracy at the end; returns the test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="folder of the four IDX files")
    parser.add_argument("--model", default="resnet20", help="a zoo name (resnet_jax.list_models())")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-subset", type=int, default=0, help="first N training images (0: all 60,000)")
    args = parser.parse_args(argv)
    config = default_config()
    config.update(name="fashion_mnist", source="idx", path=args.data, train_subset=args.train_subset)
    data = load_dataset(config)
    (x, y), (x_test, y_test) = data.splits["train"], data.splits["test"]
    mean, std = x.mean(), x.std()
    prepare = lambda images: (images.astype(np.float32) - mean) / std  # noqa: E731

    model = create_model(args.model, data.num_classes)
    tx = optax.sgd(optax.cosine_decay_schedule(0.1, args.steps), momentum=0.9, nesterov=True)
    state = create_train_state(model.init(jax.random.key(0), prepare(x[:1]), train=False), tx)
    train = jax.jit(partial(train_step, model=model, tx=tx), donate_argnums=0)
    evaluate = jax.jit(partial(eval_step, model=model))
    rng = np.random.default_rng(0)
    for step in range(args.steps):
        idx = rng.choice(len(y), args.batch, replace=False)
        flip = rng.random(args.batch) < 0.5
        images = np.where(flip[:, None, None, None], x[idx, :, ::-1], x[idx])  # random horizontal flips
        state, metrics = train(state, {"image": prepare(images), "label": y[idx]})
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: loss {float(metrics['loss']):.4f}")
    correct = 0.0
    for start in range(0, len(y_test), 1000):
        batch = {"image": prepare(x_test[start:start + 1000]), "label": y_test[start:start + 1000]}
        correct += float(evaluate(state, batch | {"mask": np.ones(len(batch["label"]), np.float32)})["accuracy"])
    print(f"test accuracy {correct / len(y_test):.4f} after {args.steps} steps")
    return correct / len(y_test)


if __name__ == "__main__":
    main()
