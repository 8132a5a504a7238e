"""`gato-ros dataset`: inspect episode datasets (and, with `from-bags`, convert rosbags into them).

Sub-subcommands live in SUBCOMMANDS below: each is (add_arguments, run, help), so new ones (e.g. `from-bags`) plug in
without touching the others.

    gato-ros dataset info DIR [--json]
"""
from __future__ import annotations

import argparse
import importlib


def _info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="DIR", help="dataset directory (holds dataset.json and episodes/)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _info_run(args) -> int:
    import json

    from gato_ros.dataset import dataset_info

    try:
        info = dataset_info(args.path)
    except ValueError as e:
        raise SystemExit(f"gato-ros dataset info: {e}")
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"{info['path']}: {info['episodes']} episodes, {info['steps']} steps at {info['fps']:g} Hz, "
          f"{info['image_size']}x{info['image_size']} images, source {info['source']}")
    for task, t in info["tasks"].items():
        print(f"  {task:12s} {t['episodes']:6d} episodes {t['steps']:8d} steps  success {t['success_rate']:.1%}")
    return 0


# name -> (module providing add_arguments/run, or None for the functions here, help)
SUBCOMMANDS: dict[str, tuple[str | None, str]] = {
    "info": (None, "summarise a dataset: episodes, steps, tasks, fps"),
    "from-bags": ("gato_ros.cli.dataset_from_bags", "convert rosbag2 recordings into an episode dataset"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        if module is None:
            p = sub.add_parser(name, help=help_text, description=help_text)
            _info_arguments(p)
            p.set_defaults(_dataset_run=_info_run)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue  # not implemented in this checkout yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_dataset_run=mod.run)


def run(args) -> int:
    return int(args._dataset_run(args) or 0)
