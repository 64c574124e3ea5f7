"""python -m resnet_jax.lab <instrument> [options]: run one instrument of the residual lab (see resnet_jax.lab)."""

import importlib
import sys

INSTRUMENTS = ("signal", "lesion", "landscape", "shattered")


def main(argv: list[str] | None = None) -> None:
    """Dispatch to resnet_jax.lab.<instrument>.main(rest of argv), importing only that instrument's module."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in INSTRUMENTS:
        usage = f"usage: python -m resnet_jax.lab {{{','.join(INSTRUMENTS)}}} [options]  (<instrument> --help)"
        if argv and argv[0] not in ("-h", "--help"):
            sys.exit(f"{usage}\nunknown instrument {argv[0]!r}")
        print(usage)
        return
    importlib.import_module(f"resnet_jax.lab.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main()
