"""The `clipforge` command: a fixed set of generic verbs (train, eval, models, convert, data, study, segment,
detect) plus the verbs each registered system declares in its own package. Every verb is a thin wrapper
over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .cliargs import Parser, add_dataclass_options, given

# Commands that train beside data-loading workers (see `_passive_waits_for_training`).
_TRAINING_COMMANDS = ("train", "study", "quickstart")


def _passive_waits_for_training(argv: Sequence[str]) -> None:
    """Training commands run data workers beside PyTorch's OpenMP threads. Those threads busy-wait
    between parallel regions by default, and on a machine with few cores they then fight the workers
    for the cores: on 2 cores the quickstart's training went from 524 to 647 samples/s with passive
    waiting (benchmarks/omp_wait.py). OpenMP reads the policy once, when torch loads, so this runs
    before anything imports torch; only for those commands with data workers, and never over a value
    the user set. Library use and other commands keep OpenMP's default, which is faster when nothing
    else competes for the cores."""
    if "torch" in sys.modules or not argv or argv[0] not in _TRAINING_COMMANDS or "OMP_WAIT_POLICY" in os.environ:
        return
    workers = [v for k, v in zip(argv, argv[1:]) if k == "--workers"]
    workers += [a.split("=", 1)[1] for a in argv if a.startswith("--workers=")]
    if workers and workers[-1] == "0":
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


# ------------------------------------------------------------------------------------------ train
def _train_parser(system) -> Parser:  # noqa: ANN001 - a registry.System
    from .settings import field_names
    from .train import TrainConfig

    recipes = "\n".join(f"  {r.name}: {r.doc.splitlines()[0]}" for r in system.recipes.values()) or "  (none)"
    epilog = (
        f"settings (--set KEY=VALUE), model config: {', '.join(field_names(system.config))}\n"
        f"settings, {system.name} options: {', '.join(field_names(system.options)) or '(none)'}\n"
        f"recipes (--recipe NAME):\n{recipes}\n"
        f"data (--data): {(system.task.dataset.__doc__ or '').strip()}"
    )
    p = Parser(
        prog=f"clipforge train {system.name}",
        description=f"Train a {system.name} model: {system.description}. Runs under torchrun too.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--recipe", default=None, help="a named run whose settings the other options override")
    p.add_argument(
        "--model", default=None, help=f"preset to start from (default: the recipe's, else {system.default_preset})"
    )
    p.add_argument("--data", default=None, help=f"training data (e.g. {system.sample_data or 'synthetic'})")
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="NAME|PATH",
        help="start from these weights (a checkpoint, hf-hub:ORG/REPO, or a name: clipforge models --pretrained)",
    )
    if system.from_clip is not None:
        p.add_argument(
            "--clip",
            default=None,
            metavar="NAME|PATH",
            help=f"the CLIP to build on: a checkpoint, hf-hub:ORG/REPO, a pretrained name, or none for random "
            f"weights (default: the recipe's, else {system.default_clip}; with --model and no --clip: random)",
        )
    p.add_argument("--val-data", default=None, help="evaluate on this data every --eval-every steps and at the end")
    p.add_argument(
        "--val-task", default=None, help=f"evaluator for --val-data: {', '.join(system.evaluators) or 'none'}"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a model config field or option, e.g. --set text.layers=6 (listed below)",
    )
    add_dataclass_options(p, TrainConfig, "train.", "training")
    add_dataclass_options(p, system.options, "option.", f"{system.name} options")
    return p


def _train(argv: Sequence[str]) -> int:
    from .checkpoints import save
    from .distributed import rank, world_size
    from .errors import ConfigError
    from .registry import DEFAULT_SYSTEM, get_system
    from .settings import parse_assignments
    from .train import train
    from .train.prepare import prepare_run, recipe_of

    named = bool(argv) and not argv[0].startswith("-")
    system = get_system(argv[0] if named else DEFAULT_SYSTEM)
    ns = _train_parser(system).parse_args(argv[1:] if named else argv)
    if "out" not in given(ns, "train.") and "out" not in recipe_of(system, ns.recipe).train:
        raise ConfigError("give an output folder (--out)")  # before any weights are fetched or data read
    settings = {**given(ns, "option."), **parse_assignments(ns.set)}
    run = prepare_run(
        system,
        recipe=ns.recipe,
        model=ns.model,
        data=ns.data,
        settings=settings,
        train=given(ns, "train."),
        pretrained=ns.pretrained,
        val_data=ns.val_data,
        val_task=ns.val_task,
        clip=getattr(ns, "clip", None),
    )
    if run.config is None:
        raise ConfigError("give an output folder (--out)")
    result = train(run.task, run.dataset, run.config, evaluate=run.evaluate)
    if rank() == 0:
        out = run.config.out
        path = save(run.model, f"{out}/model.safetensors")
        losses = [r["loss"] for r in result.history if r.get("loss") is not None]
        summary = {
            "system": system.name,
            "steps": result.step,
            "world_size": world_size(),
            "seconds": round(result.seconds, 1),
            "samples_per_s": round(result.samples_per_s, 1),
            "first_logged_loss": losses[0] if losses else None,
            "final_loss": result.final_loss,
            "skipped_samples": result.skipped_samples,
            "skipped_steps": result.skipped_steps,
            "data_wait_frac": round(result.data_wait_frac, 4),
            "model": str(path),
            "metrics": f"{out}/metrics.jsonl",
            "plot": f"{out}/curves.png",
        }
        print(json.dumps(summary))
    return 0


# ------------------------------------------------------------------------------- generic verbs
def _load_options(args: argparse.Namespace) -> dict[str, str]:
    return {"act": args.act} if getattr(args, "act", None) else {}


def _eval(args: argparse.Namespace) -> int:
    from .checkpoints import load
    from .errors import ConfigError
    from .eval.run import FILE_TASKS, evaluator_options, format_table, pick_device, run_eval, score_files, write_json
    from .registry import system_of

    if args.pred or args.gt:  # score a user's prediction files: no model
        if args.model or args.data:
            raise ConfigError("give --pred/--gt (score files) or --model/--data (run a model), not both")
        result = score_files(args.task, args.pred, args.gt, getattr(args, "classes", None))
    else:
        if not args.model or not args.data:
            hint = f"; or score files with --pred/--gt ({', '.join(FILE_TASKS)})" if args.task in FILE_TASKS else ""
            raise ConfigError(f"give --model and --data{hint}")
        model = load(args.model, **_load_options(args)).to(pick_device(args.device))
        evaluator = system_of(model).evaluators.get(args.task)
        options = evaluator_options(evaluator, lambda key, _: getattr(args, key, None)) if evaluator else {}
        result = run_eval(model, args.task, args.data, model_name=args.model, **options)
    print(format_table(result))
    if args.out:
        write_json(result, args.out)
        print(f"\nwrote {args.out}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .registry import get_system, list_systems

    if args.pretrained:
        print(f"{'name':<16} {'tag':<8} {'system':<7} {'cached':<7} also called / what")
        for name in [args.system] if args.system else list_systems():
            for e in get_system(name).pretrained:
                also = f"{', '.join(e.aliases)}; " if e.aliases else ""
                print(f"{e.name:<16} {e.tag:<8} {name:<7} {'yes' if e.cached() else 'no':<7} {also}{e.description}")
        print("and any hf-hub:ORG/REPO holding an OpenCLIP or transformers CLIP model")
        return 0
    for name in [args.system] if args.system else list_systems():
        system = get_system(name)
        print(f"# {system.name}: {system.description}")
        for preset, config in system.presets.items():
            print(f"{preset:<20} {system.describe(config) if system.describe else ''}".rstrip())
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .checkpoints import load, save
    from .settings import to_dict

    model = load(args.src, model=args.model, **_load_options(args))
    path = save(model, args.dst, format=args.format)
    print(json.dumps({"from": args.src, "to": str(path), "format": args.format, "config": to_dict(model.config)}))
    return 0


def _data(args: argparse.Namespace) -> int:
    from .data.export import write_csv_folder, write_webdataset
    from .data.sources import parse_data_spec
    from .data.synthetic import SyntheticWorld
    from .errors import ConfigError

    if args.shard_size <= 0:
        raise ConfigError(f"--shard-size {args.shard_size} must be positive (samples per .tar shard)")
    parse_data_spec(f"synthetic:n={args.n},size={args.size},split={args.split}")  # checks the world's limits
    world = SyntheticWorld(args.n, args.size, args.split, args.seed)
    if args.format == "csv":
        where = write_csv_folder(world, args.out, progress=True)
    elif args.format == "coco":
        from .data.detection import write_coco_folder

        where = write_coco_folder(world, args.out, progress=True)
    else:
        where = write_webdataset(world, args.out, args.shard_size, progress=True)
    print(json.dumps({"samples": args.n, "split": args.split, "format": args.format, "data": str(where)}))
    return 0


def _add(sub: argparse._SubParsersAction, name: str, help: str, **kwargs) -> argparse.ArgumentParser:  # noqa: ANN003
    p = sub.add_parser(name, help=help, description=help, **kwargs)
    p.set_defaults(_parser=p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The `clipforge` parser: generic verbs, then every registered system's verbs and studies."""
    from .eval.run import evaluator_names
    from .registry import get_system, list_systems

    systems = [get_system(n) for n in list_systems()]
    parser = Parser(prog="clipforge", description="CLIP and the systems built on it: train, evaluate, convert.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)
    _add(sub, "train", "train any system: clipforge train [SYSTEM] [--recipe NAME] ... (--help for its options)")
    p = _add(sub, "eval", "run a benchmark of the model's system (zero-shot, retrieval, probes, ...)")
    p.add_argument("--model", default=None, help="weights: a checkpoint, hf-hub:ORG/REPO or a pretrained name")
    p.add_argument("--task", required=True, choices=evaluator_names())
    p.add_argument("--data", default=None, help="digits, synthetic[:label=shape,...], a class-folder root, ...")
    p.add_argument(
        "--pred",
        default=None,
        help="score files, no --model: a folder of PNG masks (segmentation), COCO results JSON (detection)",
    )
    p.add_argument(
        "--gt", default=None, help="the ground truth of --pred: a folder of PNG masks, a COCO instances JSON"
    )
    p.add_argument("--act", default=None, choices=["gelu", "quick_gelu"], help="activation of ambiguous weights")
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: a GPU if there is one)")
    seen: set[str] = set()
    for evaluator in (e for s in systems for e in s.evaluators.values()):
        for flag, kwargs in evaluator.options.items():
            if flag not in seen:
                seen.add(flag)
                p.add_argument(flag, **kwargs)
    p.set_defaults(func=_eval)
    p = _add(sub, "models", "list the presets of every system (or one), or with --pretrained the weights by name")
    p.add_argument("system", nargs="?", choices=[s.name for s in systems])
    p.add_argument("--pretrained", action="store_true", help="list the names that resolve to weights")
    p.set_defaults(func=_models)
    p = _add(sub, "convert", "convert a checkpoint between formats")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--format", default="clipforge", choices=["clipforge", *{f for s in systems for f in s.exporters}])
    p.add_argument("--model", default=None, help="preset naming the architecture where weights cannot tell it")
    p.add_argument("--act", default=None, choices=["gelu", "quick_gelu"])
    p.set_defaults(func=_convert)
    p = _add(sub, "data", "write the synthetic world as a CSV folder, WebDataset shards or a COCO detection folder")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--format", choices=["csv", "wds", "coco"], default="wds", help="coco: images/ + instances.json (boxes)"
    )
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--split", choices=["train", "val", "heldout"], default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1000)
    p.set_defaults(func=_data)
    from .dense import run_segment, segment_arguments

    segmenters = [s.name for s in systems if s.segmenter is not None]
    p = _add(sub, "segment", f"label every pixel of images with any label texts ({', '.join(segmenters)} models)")
    segment_arguments(p, segmenters)
    p.set_defaults(func=run_segment)
    from .detection.result import detect_arguments, run_detect

    detectors = [s.name for s in systems if s.detector is not None]
    p = _add(sub, "detect", f"box the objects of images named by any label texts ({', '.join(detectors)} models)")
    detect_arguments(p, detectors)
    p.set_defaults(func=run_detect)
    p = _add(sub, "study", "reproduce a paper's central claim at small scale: clipforge study SYSTEM|STUDY")
    studies = p.add_subparsers(dest="study", required=True, parser_class=argparse.ArgumentParser)
    for system in systems:
        for i, (name, verb) in enumerate(system.studies.items()):
            aliases = [system.name] if i == 0 and system.name != name else []
            sp = _add(studies, name, f"{system.name}: {verb.help}", aliases=aliases)
            verb.add_arguments(sp)
            sp.set_defaults(func=verb.run)
    for system in systems:
        for verb in system.verbs:
            sp = _add(sub, verb.name, f"{verb.help} ({system.name})")
            verb.add_arguments(sp)
            sp.set_defaults(func=verb.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `clipforge` console command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _passive_waits_for_training(argv)
    from .errors import ClipforgeError

    try:
        if argv and argv[0] == "train":  # its options depend on the system it names
            return _train(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ClipforgeError as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
