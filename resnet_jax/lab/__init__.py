"""The residual lab: instruments that show why skip connections work, on any zoo network, plain or residual.

    python -m resnet_jax.lab <instrument> --help

Instruments (one module each; each runs at initialisation on a zoo name or on a trained run's best checkpoint):
  signal     signal propagation plots (Brock, De & Smith 2021) and the residual branch's share of the variance
             versus depth (De & Smith 2020);
  lesion     delete single blocks and k random blocks of a trained net at test time (Veit, Wilber & Belongie 2016);
  landscape  filter-normalised loss-landscape slices (Li et al. 2018);
  shattered  gradient correlation across nearby inputs (Balduzzi et al. 2017).
Shared helpers (a net from a zoo name or a workdir, a real batch): resnet_jax.lab.common.
This package imports nothing itself, so `import resnet_jax.lab` loads neither JAX nor matplotlib.
"""
