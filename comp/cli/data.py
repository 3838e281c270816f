"""`comp data ...`: check a download, write the demo or CIFAR-10 set, preview augmentation."""

from __future__ import annotations

from pathlib import Path

from comp.core.console import info
from comp.cli.common import add_data_options, add_size_options, global_parent, workspace_from


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect and prepare competition data",
                                 parents=[global_parent("workdir", "quiet")])
    verbs = data.add_subparsers(dest="data_command", metavar="VERB", required=True)

    check = verbs.add_parser("check", parents=[global_parent("workdir", "quiet")],
                             help="every problem of the data at once, class counts, sizes, modes, duplicates",
                             description="Read the whole competition folder and list every problem found; exit 2 "
                                         "if any is an error. Also class counts, image sizes and modes, duplicates, "
                                         "and the disk and memory the chosen image size needs.")
    add_data_options(check)
    add_size_options(check)
    check.add_argument("--grid", help="sample grid PNG (default: folds/data_samples.png)")
    check.set_defaults(func=run_check, needs_keras=False)  # stays fast: no TensorFlow import

    demo = verbs.add_parser("demo", parents=[global_parent("quiet")],
                            help="write the embedded demo dataset (8x8 digits -> 32x32)")
    demo.add_argument("out", help="folder to write (DACON layout)")
    demo.set_defaults(func=lambda args: _write(args, "demo"), needs_keras=False)

    cifar = verbs.add_parser("cifar10", parents=[global_parent("quiet")], help="download CIFAR-10 into DACON layout")
    cifar.add_argument("out", help="folder to write (DACON layout)")
    cifar.set_defaults(func=lambda args: _write(args, "cifar10"))

    preview = verbs.add_parser("augment-preview", parents=[global_parent("workdir", "seed", "backend", "quiet")],
                               help="PNG grid of augmented training samples, labelled with their classes",
                               description="Originals and augmented (and mixed) copies of a few training images, "
                                           "each labelled with its class, or under mixup/cutmix the classes and "
                                           "their weights. --run previews a run's own augmentation, mixup, cutmix "
                                           "and image size.")
    add_data_options(preview)
    add_size_options(preview)
    preview.add_argument("--run", help="preview this run's augmentation, mixup, cutmix and image size "
                                       "(the options below are then ignored)")
    preview.add_argument("--augment", default="simple", help="augmentation preset(s), comma-separated (default: simple)")
    preview.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (default: 0 = off)")
    preview.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (default: 0 = off)")
    preview.add_argument("--out", help="PNG path (default: folds/augment_preview.png)")
    preview.set_defaults(func=run_augment_preview)


def run_check(args) -> int:
    workspace_from(args).check(args.grid, args.limit, args.image_size, args.resize)
    return 0


def _write(args, which: str) -> int:
    from comp.data.demo import write_cifar10, write_demo

    out = Path(args.out).expanduser().resolve()
    (write_demo if which == "demo" else write_cifar10)(out)
    return 0


def run_augment_preview(args) -> int:
    from comp.stages.preview import preview_grid, preview_run

    workspace = workspace_from(args)
    out = Path(args.out) if args.out else workspace.folds / "augment_preview.png"
    if args.run:
        preview_run(workspace, args.run, out, seed=args.seed or 0, limit=args.limit)
    else:
        dataset = workspace.dataset(args.limit, args.image_size, args.resize)
        preview_grid(dataset, args.augment, args.mixup, args.cutmix, out, seed=args.seed or 0)
    info(f"augmentation preview: {out}")
    return 0
