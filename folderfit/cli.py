"""Command lines: the `folderfit` console script, and the entry of every DVC stage.

All argument parsing lives here and imports nothing heavy, so `--help` answers at once and
runs nothing; the chosen command's module (and torch) is imported only to run it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from folderfit import __version__
from folderfit.errors import PipelineError
from folderfit.paths import MODEL_FILE

# stage name (as in dvc.yaml) -> the module under folderfit.pipeline whose `run(params)` does its
# work. The stage scripts in stages/ name only the stage, so modules can move without breaking the
# scripts that `folderfit init` copied into users' repositories.
STAGES = {name: f"folderfit.pipeline.{name}" for name in
          ("preflight", "demo_data", "prepare", "review", "train", "evaluate")}

# command -> (module under folderfit.commands with `command(args)`, one-line help)
COMMANDS = {
    "predict": ("folderfit.commands.predict", "classify image files or folders with a trained model file"),
    "export": ("folderfit.commands.export", "export a model file to torch.export and ONNX, with a parity check"),
    "describe": ("folderfit.commands.describe", "list a backbone's stages (what freeze_layers counts)"),
    "repro-check": ("folderfit.commands.repro_check", "rerun the pipeline twice in a temporary copy and "
                                             "compare every output"),
    "ci-report": ("folderfit.commands.ci_report", "headline results and changed params against a base "
                                         "revision, as Markdown"),
    "compare": ("folderfit.commands.compare", "is the difference real? two experiments' predictions on the "
                                             "same images, paired: the flips, an interval, McNemar's test"),
    "review": ("folderfit.commands.review", "print the label review's ranked lists (likely label errors, "
                                   "near-duplicates, outliers)"),
    "serve": ("folderfit.commands.serve", "serve a model file as an HTTP JSON prediction service "
                                 "(127.0.0.1 by default; needs folderfit[serve])"),
    "release": ("folderfit.commands.release", "register the committed model as a version of the dvc.yaml "
                                             "artifact (GTO tags NAME@vX.Y.Z, NAME#STAGE#N)"),
    "init": ("folderfit.commands.init", "write the pipeline project (dvc.yaml, params.yaml, stages, CI "
                                   "workflow) into your git repository"),
}


def run_main(main, argv=None) -> None:
    """Run a stage's main(); a PipelineError becomes `error: ...` on stderr and exit code 2."""
    try:
        main(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # e.g. `folderfit predict dir | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:  # an output written without folderfit.support.fileio (e.g. by a library)
        from folderfit.support.fileio import (  # only on a failure
            is_write_error,
            output_error,
        )

        if not is_write_error(exc) or not exc.filename:
            raise
        print(f"error: {output_error(exc, exc.filename)}", file=sys.stderr)
        sys.exit(2)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders (searched recursively)")
    p.add_argument("--model", default=str(MODEL_FILE), help="model file written by train (default: %(default)s)")
    p.add_argument("--top-k", type=_positive, default=3, help="classes listed per image (default: %(default)s)")
    p.add_argument("--output", "-o", help="predictions file: .csv, .jsonl or .ndjson, a new file unless "
                                          "--force (default: CSV on stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing --output file")
    p.add_argument("--sets", type=float, metavar="LEVEL",
                   help="also each image's prediction set: the classes that hold the true one with "
                        "this probability, e.g. 0.95 (conformal; needs a model file with decision rules)")
    p.add_argument("--batch-size", type=_positive, default=64, help="images per batch (default: %(default)s)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto: the precision the model file's scores (evaluate's) were computed in; "
                        "fp32 where that one is not native here (default: %(default)s)")
    p.add_argument("--device", default="auto",
                   help="auto (the CUDA GPU if any, else CPU) | cpu | cuda | cuda:N | mps (default: %(default)s)")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(MODEL_FILE), help="model file written by train (default: %(default)s)")
    p.add_argument("--out-dir", default="models/export", help="output folder (default: %(default)s)")
    p.add_argument("--formats", default="torch_export,onnx",
                   help="comma-separated: torch_export, onnx (default: %(default)s)")
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="parity images (files/folders; default: the data/prepared test/val/train split)")
    p.add_argument("--n-images", type=_positive, default=32, help="parity images used at most (default: %(default)s)")
    p.add_argument("--tolerance", type=float, default=5e-3,
                   help="allowed |logit difference| = tolerance x max(1, largest |logit|) (default: %(default)s)")


def _describe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_name", help="torchvision or timm model name, e.g. resnet50, tf_efficientnet_lite0")


def _repro_check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params.yaml key in the copy, e.g. --set num_epochs=2 (repeatable)")
    p.add_argument("--runs", type=int, default=2, help="number of runs to compare (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the temporary copy and run logs")


def _ci_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default="main", help="revision to compare with (default: %(default)s)")


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("rev_a", nargs="?", metavar="REV_A",
                   help="A: a commit, branch, tag or `dvc exp` name (its metrics/eval from the DVC cache)")
    p.add_argument("rev_b", nargs="?", metavar="REV_B",
                   help="B: as REV_A, or `workspace` (the default); with --a, the one REV given is B")
    p.add_argument("--a", metavar="PATH", help="A from a folder (a copy of metrics/eval) or a predictions.csv")
    p.add_argument("--b", metavar="PATH", help="B from a folder or a predictions.csv")
    p.add_argument("--json", action="store_true", help="print the whole comparison as JSON")
    p.add_argument("--show", type=_positive, default=20,
                   help="flipped images listed per direction in the text (default: %(default)s)")
    p.add_argument("--min-shared", type=float, default=0.95,
                   help="refuse unless this share of the larger set was scored by both (default: %(default)s)")
    p.add_argument("--resamples", type=_positive, default=10_000,
                   help="paired bootstrap resamples for the 95%% interval (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default: %(default)s)")


def _review_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top", type=_positive, default=20, help="rows shown per list (default: %(default)s)")
    p.add_argument("--dir", default="metrics/review", help="the review stage's output folder (default: %(default)s)")
    p.add_argument("--template", metavar="FILE",
                   help="also write the top label issues as corrections rows (relabel:<suggested>) "
                        "to FILE, a new file, to check and copy into data/corrections.csv")
    p.add_argument("--serve", action="store_true",
                   help="serve the review page on 127.0.0.1 (a token is printed) and save each "
                        "Keep/Drop/Relabel click into data/corrections.csv")
    p.add_argument("--port", type=_port, default=8765, help="port for --serve (0: any free; default: %(default)s)")


def _init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=".", metavar="DIR",
                   help="a folder of your git repository (default: the current one)")
    p.add_argument("--force", action="store_true",
                   help="replace project files that exist already (data/corrections.csv is always kept)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=str(MODEL_FILE), metavar="MODEL",
                   help="model file written by train (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but loopback is reachable from other "
                        "machines, over plain HTTP (default: %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="port (0: any free; default: %(default)s)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every request "
                                   "(better: the FOLDERFIT_SERVE_TOKEN variable, hidden from ps)")
    p.add_argument("--top-k", type=_positive, default=3,
                   help="classes answered per image unless the request asks ?top_k= (default: %(default)s)")
    p.add_argument("--max-body-mb", type=_positive, default=64,
                   help="largest request body in MiB, larger get 413 (default: %(default)s)")
    p.add_argument("--max-images", type=_positive, default=32,
                   help="images per request at most (one batch; default: %(default)s)")
    p.add_argument("--max-queue", type=_positive, default=8,
                   help="requests waiting for or in inference at most, more get 503 (default: %(default)s)")
    p.add_argument("--max-pixels", type=_positive,
                   help="pixels per image at most, more get 422 (default: Pillow's decompression "
                        "bomb limit, about 89 million)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="as for predict (default: %(default)s)")
    p.add_argument("--device", default="auto", help="as for predict (default: %(default)s)")


def _release_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("version", metavar="VERSION", help="semantic version X.Y.Z (or vX.Y.Z), new for the artifact")
    p.add_argument("--stage", help="also assign this stage to the version, e.g. prod (tag NAME#STAGE#N)")
    p.add_argument("--message", "-m", help="the tags' annotation (default: GTO's wording)")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535, got {value}")
    return value


ARGUMENTS = {"predict": _predict_args, "export": _export_args, "describe": _describe_args,
             "repro-check": _repro_check_args, "ci-report": _ci_report_args, "review": _review_args,
             "serve": _serve_args, "release": _release_args, "init": _init_args, "compare": _compare_args}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="folderfit",
        description="Use a model trained by the folderfit DVC pipeline (dvc repro trains it).")
    parser.add_argument("--version", action="version", version=f"folderfit {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="only warnings, errors and the command's own output (no status lines or progress)")
    talk.add_argument("-v", "--verbose", action="store_true", help="also the details behind the status lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        ARGUMENTS[name](sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."))
    return parser


def main(argv=None) -> None:
    """The `folderfit` console script."""
    args = build_parser().parse_args(argv)
    if args.quiet or args.verbose:
        from folderfit.support.report import set_level

        set_level("quiet" if args.quiet else "verbose")
    # `review --serve` is served by the pages package (the review module only prints lists)
    serving = args.command == "review" and getattr(args, "serve", False)
    module = importlib.import_module("folderfit.commands.review_server" if serving else COMMANDS[args.command][0])
    from folderfit.support.memory import fix_mmap_threshold

    fix_mmap_threshold()  # predict over a large folder: see folderfit.support.memory
    run_main(lambda _argv: module.command(args))


# ------------------------------------------------------------------ DVC stages
def stage_main(name: str, description: str, target: str | None = None, argv=None) -> None:
    """Entry of the DVC stage `name`: `--help` describes it and runs nothing, other arguments
    are refused; otherwise params.yaml is read and validated, then the stage's module (STAGES,
    imported only now) does the work with the params.
    `target` is ignored: stage scripts written by earlier releases of `folderfit init` pass the
    module path of that release ("folderfit.pipeline.train:run"), which the stage's name replaces.
    A PipelineError becomes one `error: ...` line and exit code 2."""
    if name not in STAGES:
        raise SystemExit(f"error: unknown stage {name!r}; the stages are {', '.join(STAGES)}")
    parser = argparse.ArgumentParser(
        prog=f"python -m stages.{name}", description=description,
        epilog="Run by `dvc repro`; every setting comes from params.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(sys.argv[1:] if argv is None else argv)

    def body(_argv) -> None:
        from folderfit.params import load_params
        from folderfit.support.memory import fix_mmap_threshold

        from folderfit.support.report import detail

        fix_mmap_threshold()  # before the big buffers: a fragmented heap grows long feature runs
        params = load_params()
        detail(f"{name}: {STAGES[name]}.run with params.yaml (folderfit {__version__})")
        importlib.import_module(STAGES[name]).run(params)

    run_main(body)


__all__ = ["main", "stage_main", "PipelineError"]
