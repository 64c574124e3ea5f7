"""The default run config: every key a run understands, in one place.

Experiment files (experiments/*.py) start from `default_config()` and change what their recipe says;
the command line changes any key with --config.<key>=<value>.
"""

import ml_collections

from resnet_jax import data as data_lib
from resnet_jax import optim


def default_config() -> ml_collections.ConfigDict:
    """Every key a run understands; experiment files start from this and change what their recipe says."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(
            name="resnet20",
            num_classes=0,  # 0 = the dataset's number of classes; otherwise it must match it
            # Empty/zero values keep the family's default (see resnet_jax.models.model_spec).
            shortcut="",  # 'A' | 'B' | 'C'
            version="",  # 'v1' | 'v1.5' | 'v2'
            widths=(),
            zero_init_residual=False,
            bn_momentum=0.9,  # running-average decay; PyTorch's momentum 0.1 == 0.9 here, Keras' default is 0.99
            bn_epsilon=1e-5,  # PyTorch 1e-5, Keras 1e-3
            dtype="float32",  # compute: 'float32' | 'bfloat16' | 'float16' (dynamic loss scaling); params, BN statistics stay float32
        )
    )
    c.data = data_lib.default_config()
    c.optimizer = optim.optimizer_config()
    c.schedule = optim.schedule_config()
    c.plateau = optim.plateau_config()
    c.seed = 0
    c.batch_size = 128  # global batch, split over all devices
    c.num_epochs = 10
    c.num_steps = 0  # > 0: stop after this many steps instead (the paper counts iterations: 64k)
    c.label_smoothing = 0.0
    c.log_every_steps = 50
    c.checkpoint_keep = 3
    c.best_metric = ""  # the best checkpoint's metric; '' = val/accuracy if there is a val split, else test/accuracy
    c.diagnostics_every_steps = 0  # > 0: log gradient/activation/update diagnostics every K steps
    return c
