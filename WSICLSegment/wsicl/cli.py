"""The ``wsicl`` command line: segment, demo, train, evaluate."""
import argparse
import sys
from typing import List, Optional

from . import __version__


def channels_argument(text: str) -> List[int]:
    """``"4,8,16"`` -> ``[4, 8, 16]``."""
    try:
        channels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"channels must be integers separated by commas, "
                                         f"got {text!r}") from None
    if len(channels) < 2 or min(channels) < 1:
        raise argparse.ArgumentTypeError(f"need at least two positive channel counts, got {text!r}")
    return channels


def int_list(text: str) -> List[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (positive integers)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") \
            from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune with simulated prompts",
        description="Train a WS-ICL network on synthetic tasks and/or nnU-Net-layout datasets "
                    "with simulated box or point prompts. Resumes from OUTPUT/last.pt.")
    parser.add_argument("--output", required=True, help="folder for last.pt and the log")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--synthetic", action="store_true", help="train on synthetic tasks")
    parser.add_argument("--dataset", action="append", default=[], metavar="DIR",
                        help="nnU-Net-layout dataset; every label is a task (repeatable)")
    parser.add_argument("--val-dataset", action="append", default=[], metavar="DIR",
                        help="dataset kept out of training, for validation (repeatable)")
    parser.add_argument("--init", help="start from these weights (any file wsicl loads)")
    parser.add_argument("--prompt", choices=("box", "point"), default="box")
    parser.add_argument("--channels", type=channels_argument, default=[16, 32, 64, 128])
    parser.add_argument("--convs-per-stage", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="model grid edge in voxels")
    parser.add_argument("--lr", type=float, default=2e-4,
                        help="Adam learning rate (the paper fine-tunes at 1e-6)")
    parser.add_argument("--max-context", type=int, default=4)
    parser.add_argument("--max-slices", type=int, default=3)
    parser.add_argument("--interactive-fraction", type=float, default=0.3)
    parser.add_argument("--synthetic-fraction", type=float, default=0.5)
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="bf16 autocast on the CPU (CUDA always uses it)")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .device import keep_freed_memory
    from .train import TrainConfig, train
    keep_freed_memory()
    config = TrainConfig(
        output=args.output, steps=args.steps, channels=args.channels,
        convs_per_stage=args.convs_per_stage, size=args.size, prompt=args.prompt,
        datasets=args.dataset, val_datasets=args.val_dataset, synthetic=args.synthetic,
        synthetic_fraction=args.synthetic_fraction, init=args.init, lr=args.lr,
        max_context=args.max_context, max_slices=args.max_slices,
        interactive_fraction=args.interactive_fraction, seed=args.seed, device=args.device,
        val_every=args.val_every, checkpoint_every=args.checkpoint_every,
        precision=args.precision)
    result = train(config, show_progress=not args.quiet)
    print(f"trained to step {result['step']}: {result['checkpoint']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsicl", description="Weakly supervised in-context segmentation of 3D images.")
    parser.add_argument("--version", action="version", version=f"wsicl {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("wsicl: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"wsicl: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
