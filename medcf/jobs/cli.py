"""The ``medcf`` command line.

    medcf phantom cxr   --n N --size S --seed K --out DIR [--set sex=F] [--population pop.json]
    medcf phantom mammo --n N --size S --seed K --out DIR
    medcf preview cxr   --out grid.png [--size 256 --rows 4 --seed 0]
    medcf demo          --out demo_output [--overwrite]

Bad input ends with one line on stderr, ``medcf: error: ...``, exit status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from medcf.core.attributes import SchemaError
from medcf.phantoms.dataset import CONFIG_FILE, KINDS, check_size, make_phantom, write_phantom_dataset
from medcf.phantoms.preview import preview_grid, preview_subjects
from medcf.phantoms.writer import OutputExistsError

DEMO_MARKER = "medcf-demo.json"


class UsageError(Exception):
    """A command-line mistake: reported as one line, exit status 2.

    Args:
        *args: the one-line message, as for :class:`Exception`.
    """


def _phantom_command(args: argparse.Namespace) -> None:
    spec = KINDS[args.kind]
    population = spec.population.from_json(args.population) if args.population else None
    do = dict(spec.phantom.schema.parse_assignment(text) for text in args.set)
    started = time.perf_counter()
    out = write_phantom_dataset(
        args.kind,
        args.out,
        args.n,
        args.size,
        args.seed,
        population=population,
        do=do,
        workers=args.workers,
        progress=not args.quiet,
    )
    files = json.loads((out / CONFIG_FILE).read_text())["files"]
    elapsed = time.perf_counter() - started
    print(f"wrote {files} DICOM files ({args.n} screening images) to {out} in {elapsed:.1f} s")


def _preview_command(args: argparse.Namespace) -> None:
    check_size(args.size)
    phantom = make_phantom(args.kind)
    path = preview_grid(phantom, preview_subjects(phantom, args.rows, args.seed), args.size, args.out)
    print(f"wrote {path}")


def _demo_command(args: argparse.Namespace) -> None:
    """The main job until counterfactual inference exists: both phantom data sets and their previews."""
    out = Path(args.out)
    if out.exists() and args.overwrite:
        if not (out / DEMO_MARKER).exists():
            raise UsageError(f"{out}: not a medcf demo folder (no {DEMO_MARKER}); refusing to overwrite it")
        shutil.rmtree(out)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out}: output folder exists and is not empty; pass --overwrite to replace a demo")
    out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        started = time.perf_counter()
        write_phantom_dataset(kind, out / kind, args.n, args.size, args.seed, progress=not args.quiet)
        phantom = make_phantom(kind)
        preview = preview_grid(phantom, preview_subjects(phantom, 4, args.seed), 128, out / f"{kind}_preview.png")
        elapsed = time.perf_counter() - started
        print(f"{kind}: {args.n} images in {out / kind} ({elapsed:.1f} s), preview {preview}")
    (out / DEMO_MARKER).write_text(json.dumps({"n": args.n, "size": args.size, "seed": args.seed}) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``medcf`` command and its subcommands (phantom, preview, demo).

    Returns:
        The parser; each subcommand sets ``run`` to the function that carries it out.
    """
    parser = argparse.ArgumentParser(prog="medcf", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    phantom = commands.add_parser("phantom", help="write a phantom data set shaped like MIMIC-CXR or EMBED")
    phantom.add_argument("kind", choices=sorted(KINDS), help="cxr (MIMIC-CXR layout) or mammo (EMBED layout)")
    phantom.add_argument("--n", type=int, required=True, help="number of screening images (extra views on top)")
    phantom.add_argument("--size", type=int, default=256, help="image size in pixels, a multiple of 16")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--out", required=True, help="new (or empty) output folder")
    phantom.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ATTR=VALUE",
        help="intervene on an attribute for the whole data set, e.g. --set sex=F",
    )
    phantom.add_argument("--population", help="JSON file overriding population settings")
    phantom.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per core)")
    phantom.add_argument("--quiet", action="store_true", help="no progress bar")
    phantom.set_defaults(run=_phantom_command)

    preview = commands.add_parser("preview", help="save a grid of factual and true counterfactual images")
    preview.add_argument("kind", choices=sorted(KINDS))
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--size", type=int, default=256)
    preview.add_argument("--rows", type=int, default=4)
    preview.add_argument("--seed", type=int, default=0)
    preview.set_defaults(run=_preview_command)

    demo = commands.add_parser("demo", help="run the main job on the embedded default")
    demo.add_argument("--out", default="demo_output")
    demo.add_argument("--n", type=int, default=64)
    demo.add_argument("--size", type=int, default=64)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo output folder")
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(run=_demo_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medcf`` command.

    Args:
        argv: the arguments after ``medcf`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 on bad input (a schema error, an existing output, a usage error or a ValueError),
        reported as one line on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (SchemaError, OutputExistsError, UsageError, ValueError) as error:
        print(f"medcf: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
