"""`comp transfer compare|finetune`: the pretrained-backbone study track (results in studies/)."""

from __future__ import annotations

import argparse

from comp.stages.transfer import (
    BACKBONES,
    DEFAULT_SEED,
    FINETUNE_LR,
    HEAD_LR,
    OPTIMIZERS,
    FinetuneSettings,
    compare,
    finetune,
)
from comp.cli.common import add_data_options, global_parent, workspace_from


def add_common_options(parser: argparse.ArgumentParser) -> None:
    add_data_options(parser)
    parser.add_argument("--weights", default="imagenet",
                        help="imagenet (downloaded once to ~/.keras/models), none (random init), "
                             "or PATH of a no-top .h5/.weights.h5 file (default: imagenet)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")


def register(subparsers) -> None:
    parents = [global_parent("workdir", "seed", "backend", "quiet")]
    transfer = subparsers.add_parser(
        "transfer", parents=parents,
        help="study pretrained Keras backbones (results go to studies/, never to submissions)")
    verbs = transfer.add_subparsers(dest="transfer_command", metavar="VERB", required=True)

    compare_parser = verbs.add_parser("compare", parents=parents,
                                      help="frozen backbones + new head on one holdout split: table and plot")
    add_common_options(compare_parser)
    compare_parser.add_argument("--backbones", default="all",
                                help=f"comma-separated, or all (default): {', '.join(BACKBONES)}")
    compare_parser.add_argument("--epochs", type=int, default=3, help="epochs per backbone (default: 3)")
    compare_parser.add_argument("--name", default="compare", help="study folder under studies/ (default: compare)")
    compare_parser.set_defaults(func=run_compare)

    tune_parser = verbs.add_parser("finetune", parents=parents,
                                   help="train a new head, then unfreeze the top of the backbone at a low rate")
    add_common_options(tune_parser)
    tune_parser.add_argument("--backbone", default="ResNet50V2", help="one of the backbones (default: ResNet50V2)")
    tune_parser.add_argument("--unfreeze-from", help="first layer to unfreeze (default: the start of the "
                                                     "backbone's last stage, e.g. conv5_block1_preact_bn)")
    tune_parser.add_argument("--epochs-head", type=int, default=5, help="stage 1 epochs, base frozen (default: 5)")
    tune_parser.add_argument("--epochs", type=int, default=10, help="stage 2 epochs, top unfrozen (default: 10)")
    tune_parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adam",
                             help="stage 2 optimizer (default: adam)")
    tune_parser.add_argument("--lr", type=float, default=FINETUNE_LR,
                             help=f"stage 2 learning rate (default: {FINETUNE_LR:g}); stage 1 uses Adam at {HEAD_LR:g}")
    tune_parser.add_argument("--folds", type=int, default=0,
                             help="K folds of the workspace's split (folds/folds.csv), with out-of-fold "
                                  "probabilities like comp train's runs (default: one holdout split)")
    tune_parser.add_argument("--fold", default="all", help="with --folds: all, a fold number, or e.g. 0,2")
    tune_parser.add_argument("--name", help="study folder under studies/ (default: finetune-<backbone>)")
    tune_parser.set_defaults(func=run_finetune)


def run_compare(args) -> int:
    compare(workspace_from(args), args.backbones, args.weights, args.epochs, args.batch_size, args.name, args.seed)
    return 0


def run_finetune(args) -> int:
    settings = FinetuneSettings(backbone=args.backbone, weights=args.weights, unfreeze_from=args.unfreeze_from,
                                epochs_head=args.epochs_head, epochs=args.epochs, optimizer=args.optimizer,
                                lr=args.lr, batch_size=args.batch_size, seed=args.seed or DEFAULT_SEED)
    finetune(workspace_from(args), settings, args.folds, args.fold, args.name, args.limit)
    return 0
