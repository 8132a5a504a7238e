"""`gato-ros export`: checkpoint -> model bundle (ONNX prefill/decode graphs + gato.json), checked against torch.

    gato-ros export --checkpoint runs/small --out models/gato_arm_small
    gato-ros export --upgrade models/gato_arm_small     # new graphs from its model.pt, records kept

Fails (exit 1, no bundle written) if ONNX Runtime and torch differ by more than 1e-4 in any logit.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

WRITTEN = ("gato.json", "prefill.onnx", "decode.onnx", "model.pt", "README.md")  # what an export writes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", metavar="RUN",
                        help="run directory (RUN/checkpoint.pt), a .pt file, or a bundle (its model.pt)")
    parser.add_argument("--out", metavar="BUNDLE", help="bundle directory to write, e.g. models/NAME; an existing "
                        "bundle there is replaced only if that loses nothing an export does not write again "
                        "(evaluation records, a model card written by hand, other files), else --force")
    parser.add_argument("--force", action="store_true", help="replace --out even if that loses such records")
    parser.add_argument("--upgrade", metavar="BUNDLE", help="instead of --checkpoint/--out: re-export BUNDLE's graphs "
                        "from its model.pt in this version's graph format, keeping its evaluation records, model card "
                        "and pictures (for bundles an older version wrote)")
    parser.add_argument("--name", help="model name recorded in gato.json (default: the directory name)")
    parser.add_argument("--rollout-steps", type=int, help="timesteps of the cached-decoding check "
                        "(default: 2 x window + 2, i.e. the ring buffer wraps twice)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8", "fp16"],
                        help="graph weights: fp32 (checked to 1e-4 against torch), int8 (faster on CPU) or fp16 "
                        "(for GPUs: weights, activations and KV cache in half precision; runs on the CPU too, "
                        "slowly); for int8 and fp16 the fp32 graphs are checked first and the variant's deviation "
                        "is recorded")
    parser.add_argument("--json", action="store_true", help="print the export check as JSON")


def would_lose(out: Path) -> list[str]:
    """What replacing the directory `out` with a fresh export would lose: files an export does not write, gato.json's
    evaluation records, a model card other than the one an export writes. Empty for a new path or a bundle that
    an export wrote and nothing changed since."""
    if not out.exists():
        return []
    if not out.is_dir():
        return [f"the file {out}"]
    lost = sorted(p.name for p in out.iterdir() if p.name not in WRITTEN)
    try:
        meta = json.loads((out / "gato.json").read_text())
    except (OSError, ValueError):
        meta = None
    if meta and meta.get("eval"):
        lost.append("gato.json's evaluation records")
    card = out / "README.md"
    if card.is_file():
        from gato_ros.model.export import model_card

        try:
            generated = meta is not None and card.read_text() == model_card(meta)
        except (KeyError, TypeError, IndexError):  # an older or hand-written gato.json
            generated = False
        if not generated:
            lost.append("its model card (README.md)")
    return lost


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gato_ros.model.export import ExportCheckError, export_checkpoint, upgrade_bundle
    from gato_ros.model.train import load_checkpoint

    if args.upgrade and (args.checkpoint or args.out or args.precision != "fp32" or args.name):
        print("export: --upgrade BUNDLE takes no --checkpoint, --out, --name or --precision (it keeps the bundle's)",
              file=sys.stderr)
        return 2
    if not args.upgrade and not (args.checkpoint and args.out):
        print("export: give --checkpoint RUN and --out BUNDLE (or --upgrade BUNDLE)", file=sys.stderr)
        return 2
    if args.upgrade:
        try:
            meta = upgrade_bundle(args.upgrade)
        except (ExportCheckError, FileNotFoundError) as e:
            print(f"export failed: {e}", file=sys.stderr)
            return 1
        args.out = args.upgrade
        check = meta["export_check"]
        if args.json:
            print(json.dumps({"bundle": args.out, "export_check": check}))
        else:
            print(f"re-exported the graphs of {args.out} ({meta['provenance']['graphs_reexported']['from_format']} -> "
                  f"{meta['format']}); ONNX vs torch max |logit diff| {check['rollout']['max_abs_logit_diff']:.2e}")
        return 0
    lost = would_lose(Path(args.out))
    if lost and not args.force:
        print(f"export: replacing {args.out} would lose {', '.join(lost)}; write elsewhere, re-export its graphs "
              f"in place with --upgrade {args.out}, or replace it anyway with --force", file=sys.stderr)
        return 1
    ckpt = load_checkpoint(args.checkpoint)
    stages = ["export prefill", "export decode", "check graphs", "check cached rollout"]
    if args.precision != "fp32":
        stages.append(f"convert {args.precision}")
    with tqdm(total=len(stages), desc="export", disable=args.json) as bar:
        def progress(msg: str) -> None:
            bar.set_postfix_str(msg)
            bar.update(1 if msg != stages[0] else 0)

        try:
            meta = export_checkpoint(ckpt, args.out, args.name, args.rollout_steps, progress, args.precision)
        except ExportCheckError as e:
            print(f"export failed: {e}", file=sys.stderr)
            return 1
        bar.update(bar.total - bar.n)
    check = meta["export_check"]
    if args.json:
        print(json.dumps({"bundle": args.out, "export_check": check}))
    else:
        r = check["rollout"]
        print(f"wrote {args.out}: ONNX vs torch max |logit diff| {r['max_abs_logit_diff']:.2e} over {r['steps']} "
              f"cached steps (tolerance {check['tolerance']} x max(1, max |logit| = {r['max_abs_logit']:.3g}))")
        q = check.get(args.precision)  # int8 / fp16: the variant's deviation (absent for fp32)
        if q:
            print(f"  {args.precision} graphs: max |logit diff| {q['max_abs_logit_diff']:.3g}, greedy-token "
                  f"agreement with torch {q['token_agreement']:.1%}; check closed-loop parity with `gato-ros eval`")
    return 0
