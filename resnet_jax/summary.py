"""Print a zoo model's layers, output shapes, parameter counts and forward multiply-adds.

    python -m resnet_jax.summary resnet56 [--input-shape 32,32,3] [--num-classes 10] [--depth 1]
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import create_model


def count_params(params) -> int:
    """Trainable parameters (BN scale and bias included; running statistics live in batch_stats, not here)."""
    return sum(x.size for x in jax.tree.leaves(params))


def forward_macs(model: nn.Module, variables, x: jnp.ndarray) -> int:
    """Multiply-adds of one inference forward pass (XLA's FLOP count / 2), for the batch in `x`; those that read a
    conv's zero padding are not counted. `variables` and `x` may be abstract (jax.ShapeDtypeStruct)."""
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return int(cost["flops"] // 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="model name, e.g. resnet20, plain56, preact_resnet164, resnet50")
    parser.add_argument("--input-shape", default=None,
                        help="H,W,C of one image (default 32,32,3 for CIFAR models, 224,224,3 for ImageNet)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="default 10 for CIFAR models, 1000 for ImageNet models")
    parser.add_argument("--depth", type=int, default=1, help="module nesting depth of the table (1 = blocks)")
    args = parser.parse_args(argv)

    try:
        probe = create_model(args.name, 1)  # validates the name before anything else
    except ValueError as e:
        parser.error(str(e))
    cifar = probe.stem == "cifar"
    num_classes = args.num_classes or (10 if cifar else 1000)
    default_shape = (32, 32, 3) if cifar else (224, 224, 3)
    shape = tuple(int(s) for s in args.input_shape.split(",")) if args.input_shape else default_shape
    if len(shape) != 3:
        parser.error(f"--input-shape must be H,W,C (e.g. 32,32,3); got {args.input_shape}")

    model = create_model(args.name, num_classes)
    x = jnp.zeros((1, *shape), jnp.float32)
    console = {"width": 140, "force_terminal": False}
    table = nn.tabulate(model, jax.random.key(0), depth=args.depth, console_kwargs=console)
    print(table(x, train=False))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    stats = sum(v.size for v in jax.tree.leaves(variables.get("batch_stats", {})))
    print(f"{args.name}: input {shape}, {num_classes} classes")
    print(f"  trainable parameters: {count_params(variables['params']):,}")
    print(f"  BN running statistics (not trained): {stats:,}")
    print(f"  forward multiply-adds per image: {forward_macs(model, variables, x):,}")


if __name__ == "__main__":
    main()
