"""`gato-ros dataset from-bags BAG... --out DIR`: rosbag2 (MCAP or SQLite3) recordings -> episode dataset."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 directories (or bare .mcap files)")
    parser.add_argument("--out", required=True, help="dataset directory to create or append to")
    parser.add_argument("--bundle", default="",
                        help="take joint names, joint limits, image size and control rate from this model bundle")
    parser.add_argument("--joint-names", nargs="+", default=None,
                        help="joints to keep, in order (default: the bundle's, else the first /joint_states)")
    parser.add_argument("--image-size", type=int, default=None, help="square image size (default: bundle's, or 64)")
    parser.add_argument("--rate", type=float, default=None, help="control rate to resample at, Hz (default 20)")
    parser.add_argument("--actions", choices=("commands", "next-state"), default="commands",
                        help="labels from the commands sent, or from the next joint positions (teleop/kinesthetic)")
    parser.add_argument("--gap", type=float, default=1.0,
                        help="without episode markers, split episodes at /joint_states gaps longer than this (s)")
    parser.add_argument("--task", default=None, help="task name for every episode (default: inferred from the text)")
    parser.add_argument("--json", action="store_true", help="print the conversion report as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    import numpy as np

    from gato_ros.bag_dataset import convert_bags

    names, limits, size, rate = args.joint_names, None, args.image_size, args.rate
    if args.bundle:
        from pathlib import Path

        meta = json.loads((Path(args.bundle) / "gato.json").read_text())
        names = names or meta.get("joint_names")
        if meta.get("joint_limits") is not None:
            limits = np.asarray(meta["joint_limits"], dtype=np.float64)
        bundle_size = meta.get("image_size")
        if isinstance(bundle_size, (list, tuple)):  # gato.json stores [height, width]
            if len(set(bundle_size)) != 1:
                raise SystemExit(f"gato-ros dataset from-bags: bundle {args.bundle} has non-square images "
                                 f"{bundle_size}; datasets hold square images")
            bundle_size = bundle_size[0]
        size = size or bundle_size
        rate = rate or meta.get("control_rate_hz")
    try:
        report = convert_bags(
            args.bags, args.out, joint_names=names, joint_limits=limits, image_size=int(size or 64),
            rate_hz=float(rate or 20.0), actions=args.actions.replace("-", "_"), gap_s=args.gap, task=args.task,
            progress=not args.json,
        )
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"gato-ros dataset from-bags: {err}")
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print(f"wrote {report.episodes_written} episodes ({report.steps_written} steps) to {args.out} from "
              f"{len(report.bags)} bag(s); {report.discarded} discarded, {report.skipped_ticks} ticks skipped")
        for note in report.notes:
            print(f"  note: {note}")
    return 0
