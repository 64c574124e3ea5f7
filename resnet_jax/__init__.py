"""resnet-jax: residual networks and their plain twins in JAX/Flax."""

from resnet_jax.models import ResNet, create_model, list_models

__all__ = ["ResNet", "create_model", "list_models"]
