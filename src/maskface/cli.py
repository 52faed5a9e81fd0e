"""The ``maskface`` command: use a trained model folder from the shell.

    maskface verify IMG_A IMG_B --model DIR
    maskface embed PATH... --model DIR --out FILE.npy|FILE.parquet
    maskface enroll GALLERY_DIR --model DIR --out GALLERY.npz
    maskface identify IMG... --gallery GALLERY.npz [--top K]
    maskface eval --model DIR --data ROOT --source rmfrd|smfrd|lfw|folder|manifest [--out DIR]
    maskface export --model DIR --out DIR
    maskface info --model DIR
    maskface weights get|list

Results go to stdout (``--json`` for one JSON document), logs and progress bars to
stderr. A user error (a :class:`maskface.errors.UserError`: bad image, bad model folder,
bad data, bad option; or a file-system error naming the file) prints one line
``maskface <command>: error: <file>: <reason>`` and exits 2; batch commands still
process the other inputs, list every failure, and then exit 2. Anything else is a bug
and keeps its traceback.

Files are written under a temporary name beside the output and renamed into place, so
an interrupted command never leaves half a file; an existing output is replaced only
with ``--overwrite`` (see docs/cli-and-api.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from maskface import __version__
from maskface.errors import EXIT_USER_ERROR, InputError, user_error_message
from maskface.hardware import DEVICES, PRECISIONS
from maskface.logs import logging_to_stderr
from maskface.text import printable

logger = logging.getLogger(__name__)

EXIT_OK = 0
# Every command, in the order of `maskface --help` (tests/test_cli.py checks it against the parser).
COMMANDS = ("verify", "embed", "enroll", "identify", "eval", "export", "info", "weights", "simulate-masks")
EVAL_HELP = "verification metrics of a model on another dataset"


def _emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        print(printable(text))


def _report_failures(args: argparse.Namespace, failures: Sequence[Any]) -> None:
    for failure in failures:
        print(f"maskface {args.command}: error: {printable(failure.source)}: {failure.reason}", file=sys.stderr)


def _progress(args: argparse.Namespace) -> Optional[bool]:
    return False if args.no_progress else None


def _load(args: argparse.Namespace, model_dir: Optional[Path] = None):
    from maskface.api import load_model

    # Lazy: the first embedding call starts decoding its images before torch and the
    # weights load, so start-up and decoding overlap (docs/performance.md).
    return load_model(model_dir or args.model, device=args.device, batch_size=args.batch_size, precision=args.precision, lazy=True)


# --------------------------------------------------------------------------- commands


def cmd_verify(args: argparse.Namespace) -> int:
    model = _load(args)
    result = model.embed_many([args.image_a, args.image_b], progress=False)
    if result.failures:
        _report_failures(args, result.failures)
        return EXIT_USER_ERROR
    threshold = model.decision_threshold(args.threshold)
    score = float(model.score(result.embeddings[:1], result.embeddings[1:])[0])
    cosine = float(result.embeddings[0] @ result.embeddings[1])
    same = score >= threshold
    payload = {
        "image_a": args.image_a,
        "image_b": args.image_b,
        "same": same,
        "score": score,
        "threshold": threshold,
        "cosine": cosine,
        "backbone": model.backbone,
        "classifier": model.folder.classifier,
    }
    verdict = "same person" if same else "different people"
    sign = ">=" if same else "<"
    text = f"{verdict}: score {score:.4f} {sign} threshold {threshold:.4f} ({model.backbone}, {model.folder.classifier})"
    _emit(args, payload, text)
    return EXIT_OK


def _check_outputs(outputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse, before any work, outputs that exist (without ``--overwrite``) or are folders."""
    for path in outputs:
        if path.is_dir():
            raise InputError(f"--out {path}: is a folder; give a file name")
        if os.path.lexists(path) and not overwrite:
            raise InputError(f"--out {path}: already exists; choose another name or pass --overwrite to replace it")


@contextmanager
def _replacing(outputs: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``outputs`` (same suffix); renamed over them when the block succeeds.

    A failure or an interrupt inside the block deletes the temporary files and leaves the
    outputs as they were; the rename itself is atomic on one file system.
    """
    temporary = []
    try:
        for path in outputs:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
            os.close(handle)
            temporary.append(Path(name))
        yield temporary
        for made, path in zip(temporary, outputs):
            os.replace(made, path)
    finally:
        for made in temporary:
            if os.path.lexists(made):
                made.unlink()


def _embedding_outputs(out: Path) -> list[Path]:
    suffix = out.suffix.lower()
    if suffix == ".npy":
        return [out, out.with_suffix(".csv")]
    if suffix == ".parquet":
        return [out]
    raise InputError(f"--out {out}: suffix {out.suffix or '(none)'!r} is invalid; valid: .npy (plus an index .csv), .parquet")


def _write_index(sources: list[str], path: Path) -> None:
    """The ``row,path`` index beside FILE.npy (written without pandas: see :func:`maskface.tables.write_rows`)."""
    from maskface.tables import write_rows

    write_rows(("row", "path"), enumerate(sources), path)


def _write_embeddings(out: Path, embeddings, sources: list[str]) -> list[Path]:
    import numpy as np

    outputs = _embedding_outputs(out)
    with _replacing(outputs) as temporary:
        if out.suffix.lower() == ".npy":
            with open(temporary[0], "wb") as handle:
                np.save(handle, embeddings)
            _write_index(sources, temporary[1])
        else:
            import pandas as pd

            pd.DataFrame({"path": sources, "embedding": [row for row in embeddings]}).to_parquet(temporary[0], index=False)
    return outputs


def _parquet_engine() -> Optional[str]:
    import importlib.util

    return next((name for name in ("pyarrow", "fastparquet") if importlib.util.find_spec(name) is not None), None)


def cmd_embed(args: argparse.Namespace) -> int:
    from maskface.api import expand_paths

    out = Path(args.out)
    _check_outputs(_embedding_outputs(out), args.overwrite)
    if out.suffix.lower() == ".parquet" and not _parquet_engine():
        raise InputError(f"--out {out}: writing Parquet needs pyarrow or fastparquet installed; or write FILE.npy (with an index CSV)")
    paths = expand_paths(args.paths)
    if not paths:
        raise InputError(f"no image files found in {', '.join(args.paths)}")
    model = _load(args)
    result = model.embed_many(paths, progress=_progress(args))
    _report_failures(args, result.failures)
    if not result.sources:
        raise InputError(f"none of the {len(paths)} images could be embedded; nothing written")
    written = _write_embeddings(out, result.embeddings, result.sources)
    payload = {
        "out": [str(p) for p in written],
        "embedded": len(result.sources),
        "embedding_size": int(result.embeddings.shape[1]),
        "backbone": model.backbone,
        "failed": [f.to_dict() for f in result.failures],
    }
    text = f"wrote {len(result.sources)} embeddings ({result.embeddings.shape[1]} dims, {model.backbone}) to {', '.join(map(str, written))}"
    if result.failures:
        text += f"; {len(result.failures)} failed (listed on stderr)"
    _emit(args, payload, text)
    return EXIT_USER_ERROR if result.failures else EXIT_OK


def _gallery_file(out: Path) -> Path:
    # As Gallery.save (and numpy) name it: .npz is appended when missing.
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")


def cmd_enroll(args: argparse.Namespace) -> int:
    out = _gallery_file(Path(args.out))
    _check_outputs([out], args.overwrite)
    model = _load(args)
    gallery, failures = model.enroll_many(args.gallery_dir, progress=_progress(args))
    _report_failures(args, failures)
    with _replacing([out]) as temporary:
        gallery.save(temporary[0])
    path = out
    counts = {name: int((gallery.identities == name).sum()) for name in gallery.identity_names}
    payload = {
        "gallery": str(path),
        "identities": len(counts),
        "images": len(gallery),
        "images_per_identity": counts,
        "backbone": model.backbone,
        "failed": [f.to_dict() for f in failures],
    }
    text = f"enrolled {len(gallery)} images of {len(counts)} identities ({model.backbone}) into {path}"
    if failures:
        text += f"; {len(failures)} failed (listed on stderr)"
    _emit(args, payload, text)
    return EXIT_USER_ERROR if failures else EXIT_OK


def _gallery_model(args: argparse.Namespace, gallery) -> Path:
    """The model folder a gallery names, opened only after the checks a --model folder gets.

    The gallery file is somebody else's input: the folder it names is read as metadata
    only (JSON, checksums), and used only when its embedder fingerprint (sha256 of the
    weights, model.json and preprocess.json) is the one the gallery recorded. Loading it
    then runs no code from it (weights_only weights, an arrays-only classifier).
    """
    from maskface.api import GalleryError
    from maskface.inference.model_folder import read_model_folder

    named = gallery.meta.get("model_dir")
    if not isinstance(named, str) or not named or not Path(named).is_dir():
        raise GalleryError(f"{args.gallery}: its model folder {named!r} is gone; pass --model")
    folder = read_model_folder(named, check_backbone=False)  # _load checks it, after decoding has started
    if folder.fingerprint() != gallery.meta.get("model_fingerprint"):
        raise GalleryError(
            f"{args.gallery}: the model folder it names ({named}) is not the model it was enrolled with "
            "(embedder checksums differ); pass --model"
        )
    return Path(named)


def cmd_identify(args: argparse.Namespace) -> int:
    from maskface.api import expand_paths, load_gallery

    gallery = load_gallery(args.gallery)
    model_dir = args.model if args.model is not None else _gallery_model(args, gallery)
    model = _load(args, model_dir)
    paths = expand_paths(args.images)
    found, failures = model.identify_many(paths, gallery, top=args.top, progress=_progress(args), threshold=args.threshold)
    _report_failures(args, failures)
    payload = {
        "gallery": str(args.gallery),
        "backbone": model.backbone,
        "threshold": model.decision_threshold(args.threshold),
        "results": [item.to_dict() for item in found],
        "failed": [f.to_dict() for f in failures],
    }
    lines = []
    for item in found:
        others = ", ".join(f"{c.identity} {c.score:.4f}" for c in item.candidates)
        if item.known:
            lines.append(f"{item.source}: {item.identity} (score {item.score:.4f} >= {item.threshold:.4f}); top: {others}")
        else:
            lines.append(f"{item.source}: unknown (best score {item.score:.4f} < {item.threshold:.4f}); top: {others}")
    _emit(args, payload, "\n".join(lines) if lines else "no probe could be identified")
    return EXIT_USER_ERROR if failures else EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from maskface.config import EvaluateConfig
    from maskface.evaluation.crosseval import evaluate_model_on, read_dataset, with_masked_copy

    defaults = EvaluateConfig()
    for name, value in (("--bootstrap", args.bootstrap), ("--worst-pairs", args.worst_pairs)):
        if value < 0:
            raise InputError(f"{name} {value} is invalid; valid: an integer >= 0")
    if not 0.0 < args.mask_share < 1.0:
        raise InputError(f"--mask-share {args.mask_share} is invalid; valid: a fraction in (0, 1)")
    if args.simulate_masks and args.masked_copy is not None:
        raise InputError("--simulate-masks and --masked-copy exclude each other; --simulate-masks writes OUT/masked-copy itself")
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise InputError(f"--out {args.out}: already holds files; choose another folder or pass --overwrite")
    model = _load(args)
    dataset = read_dataset(
        args.source,
        args.data,
        unmasked_root=args.unmasked_root,
        masked_pattern=args.masked_pattern,
        workers=args.workers,
        max_identities=args.max_identities,
        max_images_per_identity=args.max_images_per_identity,
        seed=args.seed,
    )
    masked_copy = args.masked_copy
    if args.simulate_masks:
        masked_copy = _simulated_copy(args, dataset.manifest)
    if masked_copy is not None:
        dataset = with_masked_copy(dataset, str(args.data), str(masked_copy), args.mask_share, args.seed)
    report = evaluate_model_on(
        model,
        dataset,
        args.out,
        pair_types=args.pair_types,
        max_genuine_per_identity=args.max_genuine_per_identity,
        seed=args.seed,
        roc_max_points=args.roc_points,
        fars=tuple(args.fars),
        bootstrap=args.bootstrap,
        histogram_bins=defaults.histogram_bins,
        worst_pairs=args.worst_pairs,
        progress=_progress(args),
        description={"source": args.source, "root": str(args.data)},
    )
    data = report["dataset"]
    lines = [
        f"{model.backbone} ({model.folder.classifier}) on {args.source} {args.data}: "
        f"{data['images']} images, {data['identities']} identities, {report['n_pairs']} pairs "
        f"({report['n_genuine']} genuine; {', '.join(data['pair_types'])})",
        f"accuracy {report['accuracy']:.4f} at the model threshold {report['threshold']:.4f} "
        f"(precision {report['precision']:.4f}, recall {report['recall']:.4f})",
    ]
    if report.get("roc_auc") is not None:
        lines.append(f"ROC AUC {report['roc_auc']:.4f}, EER {report['eer']:.4f}")
    if "kfold" in report:
        folds = len(report["kfold"]["fold_ids"])
        lines.append(f"{folds}-fold accuracy (threshold re-chosen on the target) {report['kfold']['mean']:.4f} +- {report['kfold']['std']:.4f}")
        transfer = report["threshold_transfer"]
        lines.append(
            f"own threshold vs {folds}-fold: {transfer['own_threshold_accuracy']:.4f} vs {transfer['kfold_accuracy']:.4f} "
            f"(gap {transfer['gap']:+.4f}: what the model's threshold loses on this collection)"
        )
    if "cosine_baseline" in report and model.folder.classifier != "cosine":  # the cosine model is its own baseline
        lines.append(f"cosine baseline ROC AUC {report['cosine_baseline']['roc_auc']:.4f}")
    if data["failed_images"]:
        failed = data["failed_images"]
        lines.append(f"{failed} image{'s' if failed != 1 else ''} could not be embedded (see {args.out / 'failed.csv'})")
    lines.append(f"written to {args.out}/: metrics.json, pairs.csv, confusion/roc/det/scores.csv, curves.png, worst_pairs.png")
    _emit(args, {**report, "out": str(args.out)}, "\n".join(lines))
    return EXIT_OK


def _simulated_copy(args: argparse.Namespace, manifest) -> Path:
    """OUT/masked-copy: ``maskface simulate-masks`` over the images this evaluation uses.

    For folder layouts only the photos chosen to be shown masked (--mask-share of each
    identity's) get a mask, through a tree of links to them in OUT/masked-source at the
    same relative paths, so face detection runs on those alone. Reused when
    OUT/masked-copy already holds a manifest.
    """
    from maskface.evaluation.crosseval import choose_masked
    from maskface.data.simulate import MANIFEST_FILE, simulate_masks

    copy_dir = args.out / "masked-copy"
    if (copy_dir / MANIFEST_FILE).is_file():
        logger.warning("reusing the simulated masks in %s (delete it to draw them again)", copy_dir)
        return copy_dir
    source_root = args.data
    if args.source != "manifest":
        source_root = args.out / "masked-source"
        base = os.path.abspath(args.data)
        for path in choose_masked(manifest, args.mask_share, args.seed):
            link = source_root / os.path.relpath(os.path.abspath(path), base)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(os.path.abspath(path))
    simulate_masks(source_root, copy_dir, args.source, seed=args.seed, device=args.device, workers=args.workers, overwrite=True)
    return copy_dir


def cmd_export(args: argparse.Namespace) -> int:
    from maskface.inference.model_folder import export_model_folder

    manifest = export_model_folder(args.model, args.out, overwrite=args.overwrite)
    payload = {"out": str(args.out), **manifest}
    text = (
        f"exported {args.model} -> {args.out} ({len(manifest['files'])} files, "
        f"format {manifest['format_version']}, maskface {manifest['maskface_version']}; checksums in manifest.json)"
    )
    _emit(args, payload, text)
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from maskface.inference.model_folder import read_model_folder

    folder = read_model_folder(args.model)
    summary = folder.summary()
    summary["checksums"] = "verified" if folder.manifest else "none (not an exported folder)"
    if folder.training:
        summary["training"] = {k: folder.training.get(k) for k in ("weights", "best_epoch", "best_val_auc", "train_identities", "train_images")}
    text = "\n".join(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}" for key, value in summary.items())
    _emit(args, summary, text)
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid; valid: an integer >= 1")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")
    common.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr on a terminal)")
    common.add_argument("-v", "--verbose", action="count", default=0, help="log more to stderr (-v info, -vv debug)")
    return common


def _model_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--model", type=Path, required=required, metavar="DIR", help="model folder (models/<backbone> or an exported copy)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the network runs (default: auto)")
    parser.add_argument("--batch-size", type=_positive_int, default=64, metavar="N", help="images per forward pass (default: 64, as the embed stage)")
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS,
        help="network arithmetic; auto = as the embed stage: bf16 on GPUs and CPUs with native bf16, else fp32",
    )


def _threshold_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold", type=float, default=None, metavar="T",
        help="decide at this score instead of the model's own threshold (e.g. a tar_at_far threshold from maskface eval)",
    )


def _add_eval_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    from maskface.config import PAIR_TYPES, EvaluateConfig
    # The datasets module's list, not crosseval's: crosseval pulls in scikit-learn and
    # matplotlib, a second of start-up for every command.
    from maskface.data.datasets import EXTRA_SOURCES as EVAL_SOURCES

    evaluate = commands.add_parser(
        "eval", parents=[common], help=EVAL_HELP,
        description="Build pairs over every identity of a dataset with the split stage's rules, score them with the "
        "model, and write the evaluate stage's metrics and plot data to --out. The threshold is the model's own.",
    )
    _model_options(evaluate)
    evaluate.add_argument("--data", type=Path, required=True, metavar="ROOT", help="dataset folder (or manifest CSV for --source manifest)")
    evaluate.add_argument("--source", required=True, choices=EVAL_SOURCES, help="dataset layout, as data.source in params.yaml")
    evaluate.add_argument("--out", type=Path, default=Path("maskface-eval"), metavar="DIR", help="output folder (default: maskface-eval)")
    evaluate.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    evaluate.add_argument(
        "--pair-types", nargs="+", choices=PAIR_TYPES, default=None, metavar="TYPE",
        help=f"pair types ({', '.join(PAIR_TYPES)}); default masked-unmasked when the dataset has both sides",
    )
    masks = evaluate.add_argument_group("simulated masks (an unmasked dataset such as LFW)")
    masks.add_argument(
        "--simulate-masks", action="store_true",
        help="draw masks on the dataset's faces first (maskface simulate-masks into OUT/masked-copy, MTCNN landmarks)",
    )
    masks.add_argument("--masked-copy", type=Path, default=None, metavar="DIR", help="use masks drawn before: the output folder of maskface simulate-masks over --data")
    masks.add_argument("--mask-share", type=float, default=0.5, metavar="F", help="share of each identity's photos shown masked (default: 0.5)")
    evaluate.add_argument("--max-genuine-per-identity", type=_positive_int, default=20, metavar="N", help="as split.max_genuine_per_identity (default: 20)")
    evaluate.add_argument("--seed", type=int, default=0, help="pair sampling seed (default: 0)")
    evaluate.add_argument("--unmasked-root", default=None, metavar="DIR", help="smfrd only: the unmasked counterpart folder")
    evaluate.add_argument("--masked-pattern", default="mask", help="folder source: names containing this are masked (default: mask)")
    evaluate.add_argument("--workers", type=_positive_int, default=2, metavar="N", help="processes validating images (default: 2)")
    evaluate.add_argument("--max-identities", type=int, default=None, metavar="N", help="seeded subsample of identities (quick runs)")
    evaluate.add_argument("--max-images-per-identity", type=int, default=None, metavar="N", help="seeded subsample of each identity's images")
    defaults = EvaluateConfig()
    evaluate.add_argument("--roc-points", type=_positive_int, default=defaults.roc_points, metavar="N", help=f"points in roc.csv and det.csv (default: {defaults.roc_points})")
    evaluate.add_argument(
        "--fars", type=float, nargs="+", default=list(defaults.fars), metavar="FAR",
        help=f"FAR levels for TAR@FAR (default: {' '.join(map(str, defaults.fars))})",
    )
    evaluate.add_argument(
        "--bootstrap", type=int, default=defaults.bootstrap, metavar="N",
        help=f"identity-bootstrap resamples for 95%% intervals, 0 = none (default: {defaults.bootstrap})",
    )
    evaluate.add_argument("--worst-pairs", type=int, default=defaults.worst_pairs, metavar="N", help=f"pairs per row of worst_pairs.png, 0 = no sheet (default: {defaults.worst_pairs})")
    evaluate.set_defaults(func=cmd_eval)


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``maskface`` parser; ``command``: only that command's options are built.

    The other commands are listed by name only: eval's options need maskface.config and
    maskface.data.datasets, and weights and simulate-masks come from their own modules, in all
    ~0.3 s of imports (pydantic, pandas) that every other command would pay at start-up.
    """
    # Long on purpose: the command-line reference as one declaration per option, in the order
    # `maskface <command> --help` prints them; each command's block stands alone.
    common = _common()
    parser = argparse.ArgumentParser(
        prog="maskface",
        description="Masked face recognition with a trained maskface model folder.",
        epilog="Exit status: 0 success, 2 user error (bad input, bad data, bad model folder, bad option), "
        "1 a bug (with its traceback).",
    )
    parser.add_argument("--version", action="version", version=f"maskface {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    verify = commands.add_parser(
        "verify", parents=[common], help="are two face images the same person?",
        description="Score two face images with the model's pair classifier; same person when score >= threshold.",
    )
    verify.add_argument("image_a", metavar="IMG_A")
    verify.add_argument("image_b", metavar="IMG_B")
    _model_options(verify)
    _threshold_option(verify)
    verify.set_defaults(func=cmd_verify)

    embed = commands.add_parser(
        "embed", parents=[common], help="embeddings of images or folders",
        description="Embed images (folders: every image below them, recursively) in batches. "
        "FILE.npy gets an index FILE.csv (row, path); FILE.parquet holds path and embedding columns.",
    )
    embed.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    _model_options(embed)
    embed.add_argument("--out", type=Path, required=True, metavar="FILE", help="FILE.npy (with FILE.csv) or FILE.parquet")
    embed.add_argument("--overwrite", action="store_true", help="replace an existing FILE (and its index CSV)")
    embed.set_defaults(func=cmd_embed)

    enroll = commands.add_parser(
        "enroll", parents=[common], help="build a gallery for identification",
        description="Embed a gallery folder laid out as GALLERY_DIR/<identity>/<images> "
        "(an image directly in GALLERY_DIR is its own identity, named by its file stem).",
    )
    enroll.add_argument("gallery_dir", type=Path, metavar="GALLERY_DIR")
    _model_options(enroll)
    enroll.add_argument("--out", type=Path, required=True, metavar="GALLERY_FILE", help="gallery file (.npz)")
    enroll.add_argument("--overwrite", action="store_true", help="replace an existing gallery file")
    enroll.set_defaults(func=cmd_enroll)

    identify = commands.add_parser(
        "identify", parents=[common], help="open-set identification against a gallery",
        description="Rank gallery identities for each probe (an identity scores its best pair score); "
        "the best is reported when its score >= the model threshold, else 'unknown'.",
    )
    identify.add_argument("images", nargs="+", metavar="IMG", help="probe images or folders")
    identify.add_argument("--gallery", type=Path, required=True, metavar="GALLERY_FILE")
    identify.add_argument("--top", type=_positive_int, default=5, metavar="K", help="candidates listed per probe (default: 5)")
    _model_options(identify, required=False)
    _threshold_option(identify)
    identify.set_defaults(func=cmd_identify)

    if command in (None, "eval"):
        _add_eval_parser(commands, common)
    else:
        commands.add_parser("eval", help=EVAL_HELP)

    export = commands.add_parser(
        "export", parents=[common], help="copy a model folder with a checksummed manifest",
        description="Copy a model folder to DIR and write DIR/manifest.json (format version, maskface version, "
        "sha256 of every file); loading DIR verifies them.",
    )
    export.add_argument("--model", type=Path, required=True, metavar="DIR")
    export.add_argument("--out", type=Path, required=True, metavar="DIR")
    export.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing --out made by an earlier maskface export (never the source, a folder holding it, home or .)",
    )
    export.set_defaults(func=cmd_export)

    info = commands.add_parser(
        "info", parents=[common], help="describe (and check) a model folder",
        description="Print a model folder's backbone, preprocessing, classifier and threshold; verifies its checksums when it has a manifest.",
    )
    info.add_argument("--model", type=Path, required=True, metavar="DIR")
    info.set_defaults(func=cmd_info)

    # The modules that own these commands add them; each leaf sets ``func(args) -> int``.
    if command in (None, "weights"):
        from maskface.models.weights import add_weights_parser

        add_weights_parser(commands)
    else:
        commands.add_parser("weights")
    if command in (None, "simulate-masks"):
        from maskface.data.simulate import add_simulate_parser

        add_simulate_parser(commands)
    else:
        commands.add_parser("simulate-masks")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``maskface`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    # Before torch loads OpenMP (it reads this once): waiting threads sleep instead of
    # spinning. On a machine whose cores other jobs share, a spinning thread burns the time
    # slice its partner needs: the network ran 3-6x slower with 2 threads on 2 busy cores.
    # Idle, a wake-up costs microseconds per layer. A value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    # The first word that is not an option names the command (the top-level options take
    # no value); anything else (no command, a typo) gets the whole parser and its message.
    first = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(first if first in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2), already printed by argparse
        return exit_.code if isinstance(exit_.code, int) else EXIT_USER_ERROR
    for name, value in (("json", False), ("no_progress", False), ("verbose", 0)):
        if not hasattr(args, name):
            setattr(args, name, value)
    level = logging.WARNING if args.verbose <= 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    with logging_to_stderr(level, "%(levelname)s %(name)s: %(message)s"):
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            print(f"maskface {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as error:
            message = user_error_message(error)
            if message is None:
                raise
            print(f"maskface {args.command}: error: {printable(message)}", file=sys.stderr)
            logger.debug("traceback", exc_info=True)
            return EXIT_USER_ERROR


def run() -> None:
    """The ``maskface`` program: :func:`main`, then exit without tearing the interpreter down.

    Tearing down torch's and torchvision's modules takes ~1 s, a tenth of embedding 1,000
    faces. By the time main returns it has closed and renamed its outputs and stopped its
    workers, so only logging and the standard streams need flushing. A bug's exception is
    not caught here: it prints its traceback and exits 1 as usual.
    """
    status = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing left to say
            pass
    os._exit(status)


if __name__ == "__main__":
    run()
