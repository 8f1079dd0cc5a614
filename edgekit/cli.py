"""Thin click group: parse arguments, call the library, print one-line errors.

Heavy imports (torch, onnxruntime) happen inside the commands so ``edgekit --help`` is fast
and the device can run ``edgekit run`` without torch installed."""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from edgekit import __version__
from edgekit.errors import ConfigError, EdgekitError


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn EdgekitError (and a few common user errors) into one line on stderr + exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = bool(click.get_current_context().find_root().params.get("debug"))
        try:
            return fn(*args, **kwargs)
        except EdgekitError as exc:
            if debug:
                traceback.print_exc()
            if not getattr(exc, "quiet", False):  # quiet: another DDP rank prints this failure's line
                click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """edgekit: train, compile and run visual anomaly detectors on a production line."""


# ----------------------------------------------------------------------------- data
@main.group()
def data() -> None:
    """Create and convert datasets (MVTec AD layout)."""


class _RegistryChoice(click.Choice):
    """A click.Choice whose names come from a plug-in registry when first needed (parsing, help),
    so the choices cannot drift from the registry and ``edgekit --help`` does not import it."""

    def __init__(self, names: Callable[[], list[str]]) -> None:
        self._names = names
        self._cached: tuple[str, ...] | None = None
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        if self._cached is None:
            self._cached = tuple(self._names())
        return self._cached

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns it; the registry wins
        pass


def _synth_kinds() -> list[str]:
    from edgekit.data.synth import SYNTH_KINDS

    return SYNTH_KINDS.names()


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--kind", default="fabric", show_default=True, type=_RegistryChoice(_synth_kinds),
              help="Woven fabric, glazed tiles, or grey machined parts (mixed crop sizes, bright "
                   "edges at the border; cracks, uneven surface, blowholes, breaks).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--n-train", default=120, show_default=True, type=int, help="Good training images.")
@click.option("--n-test-good", default=40, show_default=True, type=int)
@click.option("--n-test-defect", default=40, show_default=True, type=int, help="Defect images (spread over types).")
@click.option("--size", default=256, show_default=True, type=int,
              help="Image side in pixels; for parts the typical long side (crops vary 0.6-1.5x around "
                   "it, aspect ratio 1-2.8).")
@_handle_errors
def data_synth(out: str, kind: str, seed: int, n_train: int, n_test_good: int, n_test_defect: int, size: int) -> None:
    """Write a synthetic dataset with defects and pixel masks to OUT (MVTec AD layout)."""
    from edgekit.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        out, kind=kind, seed=seed, n_train=n_train, n_test_good=n_test_good,
        n_test_defect=n_test_defect, size=size,
    )
    click.echo(summary)


@data.command("elpv")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--type", "cell_type", type=click.Choice(["mono", "poly"]), required=True)
@click.option("--seed", default=0, show_default=True, type=int)
@_handle_errors
def data_elpv(out: str, cell_type: str, seed: int) -> None:
    """Convert the elpv-dataset package (solar cells) into the MVTec layout in OUT."""
    from edgekit.data.elpv import write_elpv_dataset

    click.echo(write_elpv_dataset(out, cell_type=cell_type, seed=seed))


@data.command("preview-synthesis")
@click.argument("data_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Grid PNG to write.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--n", "n_images", default=4, show_default=True, type=int, help="Good images (rows) to show.")
@click.option("--size", default=256, show_default=True, type=int, help="Side of each grid cell in pixels.")
@_handle_errors
def data_preview_synthesis(data_dir: str, out_path: str, seed: int, n_images: int, size: int) -> None:
    """Write a PNG grid of CSE's synthetic defects on good images of DATA_DIR (outlined in red)."""
    from edgekit.methods.cse.synthesis import write_preview

    click.echo(write_preview(data_dir, out_path, seed=seed, n_images=n_images, size=size))


# ----------------------------------------------------------------------------- train
_SET = click.option("--set", "sets", multiple=True, metavar="KEY.PATH=VALUE",
                    help="Override any field (repeatable), validated like the YAML: --set train.epochs=5.")


@main.command(short_help="Train a recipe on folders of good images.")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--data", "data_dirs", required=True, multiple=True, type=click.Path(file_okay=False),
              help="Dataset (MVTec layout); repeat to train on several categories at once.")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--epochs", type=int, default=None, help="Override the recipe's epochs.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=None, help="Override the recipe's seed.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Backbone weight file (offline).")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from RUN_DIR's checkpoint.")
@click.option("--dist-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Under torchrun: seconds a collective waits for the other ranks before the job ends.")
@_SET
@_handle_errors
def train(recipe: str, data_dirs: tuple[str, ...], run_dir: str, epochs: int | None, device: str, seed: int | None,
          weights: str | None, resume: bool, dist_timeout: float, sets: tuple[str, ...]) -> None:
    """Train RECIPE (a shipped recipe's name, see `edgekit recipes`, or a recipe file) on the good
    images of a dataset (under torchrun: one process per GPU, DDP)."""
    from edgekit.config.catalog import load_recipe_with_sets, parse_sets
    from edgekit.train import train_run

    spec = load_recipe_with_sets(recipe, parse_sets(sets))
    train_run(spec, list(data_dirs), run_dir, epochs=epochs, device=device, seed=seed, weights=weights, resume=resume,
              dist_timeout_s=dist_timeout)


# ----------------------------------------------------------------------------- evaluate
@main.command(short_help="Image/pixel AUROC, PRO, F1 of a run or bundle.")
@click.argument("model_dir", metavar="RUN_OR_BUNDLE_DIR", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset in MVTec layout: its test/good and test/<defect> folders are scored.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write metrics as JSON.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None, help="Write an HTML report.")
@_handle_errors
def evaluate(model_dir: str, data_dir: str, json_path: str | None, report_path: str | None) -> None:
    """Evaluate a RUN_DIR (torch) or BUNDLE_DIR (onnxruntime) on the test split of a dataset."""
    from edgekit.evaluate.run import evaluate_cli

    evaluate_cli(model_dir, data_dir, json_path=json_path, report_path=report_path)


# ----------------------------------------------------------------------------- calibrate
@main.command(short_help="Set the accept/review/reject band from held-out images.")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Dataset with held-out good images in test/good (defects in test/<type>/ optional).")
@click.option("--frr", default="0.005", show_default=True, metavar="RATE|auto",
              help="Target false-reject rate (0.005 = 0.5 %); auto: the tightest rate the good images can bound.")
@click.option("--confidence", type=float, default=0.95, show_default=True, help="Confidence of the rate bound.")
@click.option("--method", type=click.Choice(["quantile", "evt", "coverage"]), default="quantile", show_default=True,
              help="quantile: distribution-free (needs many good images); evt: tail fit, fewer images; "
                   "coverage: band from labelled good and defect images.")
@click.option("--margin", type=float, default=0.0, show_default=True, help="Score units widening the review band.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@_handle_errors
def calibrate(model_dir: str, data_dir: str, frr: str, confidence: float, method: str, margin: float,
              device: str) -> None:
    """Set the accept/review/reject band of a RUN_DIR or BUNDLE_DIR from held-out images."""
    from edgekit.evaluate.calibration import calibrate_cli

    if frr != "auto":
        try:
            frr = float(frr)
        except ValueError:
            raise ConfigError(f"--frr {frr!r}: give a rate such as 0.005 (0.5 %) or auto") from None
    calibrate_cli(model_dir, data_dir, frr=frr, confidence=confidence, method=method, margin=margin, device=device)


# ----------------------------------------------------------------------------- build
@main.command(short_help="Compile a run into a verified bundle.")
@click.argument("model_dir", metavar="RUN_DIR", type=click.Path(file_okay=False))
@click.option("--target", type=click.Choice(["cpu", "jetson"]), default="cpu", show_default=True,
              help="Where the bundle runs: cpu (onnxruntime) or jetson (TensorRT engines, built on the device).")
@click.option("--out", "bundle_dir", type=click.Path(file_okay=False), default=None,
              help="Bundle directory to write. Default: RUN_DIR-bundle beside the run (printed).")
@click.option("--precision", default="fp32", show_default=True,
              help="Comma list of fp32,fp16,int8 (fp32 is always built: it is the reference).")
@click.option("--calib-data", type=click.Path(file_okay=False), default=None,
              help="Good images for INT8 calibration (default: the run's training images).")
@click.option("--eval-data", type=click.Path(file_okay=False), default=None,
              help="Labelled dataset (test/good, test/<defect>) for the AUROC accuracy gate.")
@click.option("--allow-degraded", is_flag=True, help="Keep a precision that fails the accuracy gate (warned, recorded).")
@click.option("--engine-only", is_flag=True, help="The argument is a BUNDLE_DIR (not a run): build its TensorRT engines on this device (with --target jetson).")
@click.option("--archive", is_flag=True, help="Also write a single-file BUNDLE.edgekit archive.")
@click.option("--int8-reduce-range/--no-int8-reduce-range", default=None,
              help="INT8 (cpu target): 7-bit weights, safe on every x86 CPU; --no-int8-reduce-range keeps 8-bit "
                   "weights, more accurate but only for CPUs with VNNI (AVX512-VNNI/AVX-VNNI) or ARM (without "
                   "VNNI u8s8 products saturate). Default: what the build host can run (recorded; the daemon "
                   "warns on a CPU without VNNI).")
@click.option("--int8-float-depthwise/--int8-quantize-depthwise", default=True, show_default=True,
              help="INT8: keep depthwise convolutions float (each sums only k² products of one channel, so "
                   "rounding does not average out). --int8-quantize-depthwise makes them int8 too: with the "
                   "high-resolution layers float, about 7 % faster on a 2-core x86 CPU and within 0.1 pt AUROC "
                   "on ELPV and synthetic parts (benchmarks/README.md, 2026-12-05).")
@click.option("--int8-float-high-resolution/--int8-quantize-high-resolution", default=True, show_default=True,
              help="INT8: keep the stem and the layers finer than stride 8 float (they see the image almost "
                   "pixel by pixel: on ELPV mono INT8 0.927 -> 0.932 = FP32, synthetic parts pixel AUROC "
                   "0.895 -> 0.928). --int8-quantize-high-resolution makes them int8 too.")
@click.option("--sign", "sign_key", type=click.Path(dir_okay=False), default=None, metavar="KEY",
              help="Sign the manifest with this Ed25519 private key (edgekit keys new): manifest.sig beside it; "
                   "stations with a trust list load only bundles signed by a key they trust.")
@_handle_errors
def build(model_dir: str, target: str, bundle_dir: str | None, precision: str, calib_data: str | None,
          eval_data: str | None, allow_degraded: bool, engine_only: bool, archive: bool,
          int8_reduce_range: bool | None, int8_float_depthwise: bool, int8_float_high_resolution: bool,
          sign_key: str | None) -> None:
    """Compile a RUN_DIR into a bundle (ONNX with scoring fused, FP16/INT8, manifest, hashes)."""
    from edgekit.compile.build import build_cli

    build_cli(model_dir, target=target, bundle_dir=bundle_dir, precision=precision, calib_data=calib_data,
              eval_data=eval_data, allow_degraded=allow_degraded, engine_only=engine_only, archive=archive,
              int8_reduce_range=int8_reduce_range, sign=sign_key, int8_float_depthwise=int8_float_depthwise,
              int8_float_high_resolution=int8_float_high_resolution)


@main.command(short_help="Score data with every precision of a bundle vs FP32.")
@click.argument("bundle_dir", type=click.Path(exists=True))
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="A dataset with test/ (labelled: AUROC) or a folder of images.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--max-images", type=click.IntRange(min=2), default=None, help="Seeded subset of the images.")
@click.option("--no-torch", is_flag=True, help="Compare against the FP32 ONNX model even when the run is here.")
@_handle_errors
def verify(bundle_dir: str, data_dir: str, as_json: bool, max_images: int | None, no_torch: bool) -> None:
    """Score DATA with every precision/backend in BUNDLE_DIR against the torch checkpoint (or FP32 ONNX)."""
    import json

    from edgekit.compile.parity import format_verify, verify_bundle

    result = verify_bundle(bundle_dir, data_dir, max_images=max_images, use_torch=not no_torch)
    click.echo(json.dumps(result, indent=2) if as_json else format_verify(result))


@main.command(short_help="Latency and throughput of every precision, side by side.")
@click.argument("target", metavar="RUN_OR_BUNDLE_DIR", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True, help="Intra-op threads.")
@click.option("--batch", "batches", default="1", show_default=True, help="Comma list of batch sizes (tiles).")
@click.option("--precision", "precisions", default=None, help="Only these precisions (comma list).")
@click.option("--rounds", type=click.IntRange(min=1), default=6, show_default=True, help="Interleaved rounds.")
@click.option("--iters", type=click.IntRange(min=1), default=5, show_default=True, help="Runs per candidate per round.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed runs per candidate before measuring.")
@click.option("--no-torch", is_flag=True, help="Skip torch eager.")
@_handle_errors
def bench(target: str, as_json: bool, threads: int, batches: str, precisions: str | None, rounds: int, iters: int,
          warmup: int, no_torch: bool) -> None:
    """Latency (median/p99) and throughput of every backend/precision of a RUN_DIR or BUNDLE_DIR, side by side."""
    import json

    from edgekit.compile.bench import bench as run_bench
    from edgekit.compile.bench import format_table
    from edgekit.errors import ConfigError

    try:
        sizes = [int(b) for b in batches.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--batch {batches!r}: give a comma list of integers, e.g. 1,4") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch {batches!r}: batch sizes must be >= 1")
    precs = [p.strip() for p in precisions.split(",")] if precisions else None
    result = run_bench(target, threads=threads, batches=sizes, precisions=precs, warmup=warmup, rounds=rounds,
                       iters_per_round=iters, with_torch=not no_torch)
    click.echo(json.dumps(result, indent=2) if as_json else format_table(result))


@main.command(short_help="Recompute a CSE run's k-means centres.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Good images of the new lot (a folder, or a dataset with train/good/).")
@click.option("--k", "k", type=click.IntRange(min=1), default=None, help="Number of centres (default: keep).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--sweep", "sweep", default=None,
              help="Comma list of k (e.g. 1,2,4,8): report image AUROC and coverage on DIR's labelled test "
                   "split for each, write RUN_DIR/k_sweep.json and .png; the run is not changed.")
@_handle_errors
def recluster(run_dir: str, data_dir: str, k: int | None, device: str, sweep: str | None) -> None:
    """Recompute a CSE run's k-means centres from new good images (embedder unchanged)."""
    if sweep is not None:
        from pathlib import Path

        from edgekit.bundle.io import write_json_atomic
        from edgekit.errors import ConfigError
        from edgekit.methods.cse.cluster import sweep_k

        try:
            ks = [int(v) for v in sweep.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--sweep {sweep!r}: give a comma list of integers, e.g. 1,2,4,8") from None
        res = sweep_k(run_dir, data_dir, ks, device=device, plot_path=Path(run_dir) / "k_sweep.png")
        write_json_atomic(Path(run_dir) / "k_sweep.json", res)
        click.echo(f"k sweep written to {Path(run_dir) / 'k_sweep.json'} and {res['plot']}")
        return
    from edgekit.methods.cse.cluster import recluster_run

    recluster_run(run_dir, data_dir, k=k, device=device)


@main.command(short_help="Refit a distillation run's score normalisation.")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--layer-norm", type=click.Choice(["position", "layer", "none"]), default=None,
              help="Score normalisation to fit (default: the run's recipe score.layer_norm).")
@click.option("--edge-norm", type=click.Choice(["terms", "ring", "none"]), default=None,
              help="Edge (ring) calibration: of every term and the map (terms), of the map (ring), none (default: the run's recipe score.edge_norm).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@_handle_errors
def rescore(run_dir: str, layer_norm: str | None, edge_norm: str | None, device: str) -> None:
    """Refit a distillation run's score normalisation and provisional threshold (no retraining)."""
    from edgekit.train import rescore_run

    rescore_run(run_dir, layer_norm=layer_norm, device=device, edge_norm=edge_norm)


# ----------------------------------------------------------------------------- recipes
@main.group(invoke_without_command=True, short_help="List the shipped recipes (show NAME writes one).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.pass_context
@_handle_errors
def recipes(ctx: click.Context, as_json: bool) -> None:
    """The recipes shipped with edgekit: method, backbone, input, epochs and measured figures."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from edgekit.config.catalog import deploy_names, format_recipe_table, measured, recipe_table

    rows = recipe_table()
    if as_json:
        click.echo(json.dumps({"recipes": rows, "deploy": deploy_names(), "measured_source": measured().get("source")},
                              indent=2))
    else:
        click.echo(format_recipe_table(rows, measured()))


@recipes.command("show")
@click.argument("name")
@_handle_errors
def recipes_show(name: str) -> None:
    """Print a shipped recipe or deploy example with its comments: edgekit recipes show NAME > my.yaml"""
    from edgekit.config.catalog import deploy_names, shipped_path, training_names
    from edgekit.errors import ConfigError

    p = shipped_path(name)
    if p is None:
        raise ConfigError(f"recipe {name!r}: not shipped; recipes: {', '.join(training_names())}; "
                          f"deploy examples: {', '.join(deploy_names())}")
    click.echo(p.read_text(encoding="utf-8"), nl=False)


@main.command("init-config", short_help="Write a commented deploy config to stdout.")
@click.option("--camera", type=click.Choice(["usb", "csi", "gstreamer", "folder", "video"]), default="usb",
              show_default=True)
@click.option("--output", "outputs", multiple=True, default=("gpiod",), show_default=True,
              help="gpiod, jetson_gpio, modbus, modbus_server, opcua, mqtt or fake_gpio; repeat for several.")
@click.option("--bundle", default="/var/lib/edgekit/bundles/current", show_default=True, help="Bundle directory.")
@click.option("--ui/--no-ui", default=True, show_default=True, help="Enable the operator page (loopback).")
@_handle_errors
def init_config_cmd(camera: str, outputs: tuple[str, ...], bundle: str, ui: bool) -> None:
    """Write a commented deploy config to stdout: edgekit init-config --camera usb --output modbus_server > station.yaml"""
    from edgekit.config.catalog import init_config

    click.echo(init_config(camera, list(outputs), bundle=bundle, ui=ui), nl=False)


# ----------------------------------------------------------------------------- run
@main.command(short_help="Run the inspection daemon of a deploy config.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True, help="Validate the config and exit.")
@_SET
@_handle_errors
def run(config: str, check: bool, sets: tuple[str, ...]) -> None:
    """Run the inspection daemon described by CONFIG.yaml."""
    from edgekit.config.catalog import parse_sets
    from edgekit.runtime.daemon import run_cli

    run_cli(config, check=check, overrides=parse_sets(sets))


@main.command(short_help="Run the daemon on a simulated conveyor.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--parts", type=int, default=None, help="Parts to run (default: source.parts in CONFIG).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@_SET
@_handle_errors
def simulate(config: str, parts: int | None, as_json: bool, sets: tuple[str, ...]) -> None:
    """Run the daemon on a simulated conveyor (source type sim) and check every reject."""
    import json

    from edgekit.config.catalog import parse_sets
    from edgekit.sim.run import simulate as simulate_run

    report = simulate_run(config, parts=parts, overrides=parse_sets(sets))
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo("\n".join(report["lines"]))


# ----------------------------------------------------------------------------- station checks
@main.command(short_help="Check this station: a fix per failed item.")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the checklist as JSON (for fleet tools).")
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False), default=None,
              help="Bundle to verify instead of the one in CONFIG.")
@click.option("--bundle-only", is_flag=True, help="Only check the config and the bundle hashes.")
@_handle_errors
def doctor(config: str | None, as_json: bool, bundle_dir: str | None, bundle_only: bool) -> None:
    """Check this station against CONFIG.yaml: a fix per failed item; exit 1 on failures.

    Without CONFIG: /etc/edgekit/config.yaml when it exists (what edgekit.service runs), else the
    default Jetson station (CUDA, TensorRT, /dev/gpiochip0, /dev/video0, the installed bundle)."""
    import json

    from edgekit.doctor import doctor as run_doctor
    from edgekit.doctor import stdout_is_unicode

    report = run_doctor(config, bundle_dir=bundle_dir, bundle_only=bundle_only)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        click.echo(report.to_text(unicode=stdout_is_unicode()))
    sys.exit(report.exit_code)


@main.command("opcua-cert", short_help="Create the OPC UA server certificate of a deploy config.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--output", "output_name", default=None, help="Name of the opcua output (default: every one).")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(1, 36500), help="Validity.")
@click.option("--force", is_flag=True, help="Replace an existing certificate (clients must then trust the new one).")
@_handle_errors
def opcua_cert(config: str, output_name: str | None, days: int, force: bool) -> None:
    """Create the key and self-signed application certificate in the cert_dir of CONFIG's opcua
    output (Basic256Sha256 SignAndEncrypt; docs/plc.md); print the SHA-1 thumbprint the clients
    are asked to trust. An existing certificate is kept unless --force."""
    from edgekit.config.run import load_run_config
    from edgekit.errors import ConfigError
    from edgekit.runtime.outputs.opcua import certificate_thumbprint, make_certificate

    cfg = load_run_config(config)
    outs = [o for o in cfg.outputs if o.type == "opcua" and output_name in (None, o.name)]
    if not outs:
        raise ConfigError(f"{config}: no opcua output{f' named {output_name!r}' if output_name else ''}; add one "
                          "under outputs: (type: opcua, endpoint: opc.tcp://HOST:4840)")
    for o in outs:
        cert, key, created = make_certificate(o, days=days, overwrite=force)
        click.echo(f"{o.name}: {'created' if created else 'kept'} {cert} (key {key}), application URI "
                   f"{o.namespace}, SHA-1 thumbprint {certificate_thumbprint(cert)}")


@main.command("verify-bundle", short_help="Check a bundle's schema, hashes and signature.")
@click.argument("bundle_dir", required=False, type=click.Path())
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Deploy config: verify the bundle it names (unless BUNDLE_DIR is given) with its trust: list.")
@click.option("--trust", "trust", multiple=True, type=click.Path(), metavar="KEY.pub",
              help="Trusted public key (file, or folder of *.pub); repeatable. With any, the bundle must be signed by one.")
@_handle_errors
def verify_bundle(bundle_dir: str | None, config: str | None, trust: tuple[str, ...]) -> None:
    """Check a bundle's manifest schema, every file's sha256 and, with a trust list, its signature (exit 2 if refused)."""
    from edgekit.bundle.io import load_bundle
    from edgekit.bundle.signing import load_trust, read_signature
    from edgekit.errors import ConfigError

    entries = list(trust)
    if config is not None:
        from edgekit.config.run import load_run_config

        cfg = load_run_config(config)
        bundle_dir = bundle_dir or cfg.bundle
        entries += cfg.trust
    if bundle_dir is None:
        raise ConfigError("verify-bundle: give BUNDLE_DIR, or --config CONFIG.yaml to verify the bundle it names")
    keys = load_trust(entries)
    b = load_bundle(bundle_dir, trust=keys)
    line = f"{bundle_dir}: bundle {b.bundle_id} ({b.method}) ok, {len(b.manifest['files'])} files verified"
    if b.signed_by is not None:
        k = next(k for k in keys if k.key_id == b.signed_by)
        click.echo(f"{line}, signature by trusted key {k.key_id} ({k.path}) verified")
        return
    click.echo(line)
    sig = read_signature(b.path)
    click.echo(f"warning: signature not checked ({'signed by key ' + sig['key_id'] if sig else 'unsigned'}): no trust "
               "list; pass --trust KEY.pub or --config with trust: to refuse bundles not signed by your key", err=True)


# ----------------------------------------------------------------------------- signing keys
@main.group(short_help="Ed25519 keys that sign bundles.")
def keys() -> None:
    """Ed25519 keys that sign bundles (build --sign KEY) and the stations' trust: lists."""


@keys.command("new")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for NAME.key (private, mode 0600: keep it off stations) and NAME.pub (for trust:).")
@click.option("--name", default="edgekit", show_default=True, help="File name stem of the key pair.")
@_handle_errors
def keys_new(out_dir: str, name: str) -> None:
    """Create a signing key pair (never overwrites an existing one)."""
    from edgekit.bundle.signing import new_keypair

    key, pub, kid = new_keypair(out_dir, name)
    click.echo(f"key {kid}: private {key} (0600; sign with `edgekit build RUN_DIR --sign {key}`), "
               f"public {pub} (copy it to each station and list it under trust: in the deploy config)")


@keys.command("sign")
@click.argument("bundle_dir", type=click.Path(file_okay=False))
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Private key (NAME.key).")
@_handle_errors
def keys_sign(bundle_dir: str, key_path: str) -> None:
    """Sign an existing BUNDLE_DIR (after --engine-only, or a bundle built without --sign); verifies it first."""
    from edgekit.bundle.io import load_bundle
    from edgekit.bundle.signing import load_private_key, sign_bundle

    load_bundle(bundle_dir)  # never sign a tampered or broken bundle
    sig = sign_bundle(bundle_dir, load_private_key(key_path), key_path)
    click.echo(f"{bundle_dir}: manifest.json signed with key {sig['key_id']} -> manifest.sig")


@main.command(short_help="Synthetic data → train → build → simulated line.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="demo-out", show_default=True,
              help="Folder for the demo's data, run, bundle, report and line video.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Training epochs for the demo (the synthetic fabric set is separated by 10; the "
                   "rd-lite0 recipe itself trains 30 for real products).")
@_handle_errors
def demo(out_dir: str, epochs: int | None) -> None:
    """Synthesize data, train, evaluate, build and replay through the daemon: end to end."""
    from edgekit.demo import run_demo

    run_demo(out_dir, epochs=epochs)


if __name__ == "__main__":  # pragma: no cover
    main()
