"""The ``fastvae`` command (also ``python -m fastvae``).

Commands::

    fastvae train [FLAGS] [--preset NAME] [--config FILE.toml] [--resume] [--stop-at STEP]
    fastvae eval CHECKPOINT [--iwae-samples 5000] [--num-points N] [--split test] ...
    fastvae sample CHECKPOINT [--num 64] [--seed 0] [--temperature 1.0] [--out FILE.png]
    fastvae sweep --betas 0.25,1,4 [FLAGS of train] [--config FILE.toml]
    fastvae bench [latent|likelihood|train|all] [ARGUMENTS of the benchmark]
    fastvae gradvar CHECKPOINT [--batch-size 100] [--num-estimates 1000] [--temperatures 1,0.5,0.1] ...

``fastvae train`` with no flags trains the default model on the embedded sprites and
leaves a run folder (see :mod:`fastvae.cli.train`).  The flags of ``train`` and
``sweep`` and the keys of their ``--config`` files are one table
(:mod:`fastvae.cli.options`); flags given override the file.

Example::

    >>> from fastvae.cli import main
    >>> main(["train", "--steps", "200", "--out", "runs/quick"])
    0
"""
from __future__ import annotations

import argparse
import difflib
import signal
import sys
from typing import Optional, Sequence

from .options import PROGRAM, add_option_flags, given_flags, normalize_settings, overlay, read_toml
from .presets import preset_names, read_config, read_preset

__all__ = ["main", "build_parser"]

# Errors that are the user's to fix (a bad setting, a missing file, a run that cannot
# go on): reported as one line, without a traceback.
_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive int"


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value


_non_negative_float.__name__ = "non-negative float"


def _temperatures(text: str) -> list:
    values = [float(value) for value in text.split(",") if value]
    if not values or not all(0 < value < float("inf") for value in values):
        raise ValueError(text)
    return values


_temperatures.__name__ = "list of temperatures > 0"


def _did_you_mean(text: str, candidates) -> str:
    """"; did you mean X?" for the candidate closest to ``text`` (flags compared without
    their dashes), or nothing when none is close."""
    by_name = {str(candidate).lstrip("-"): str(candidate) for candidate in candidates}
    close = difflib.get_close_matches(text.lstrip("-"), list(by_name), n=1, cutoff=0.7)
    return f"; did you mean {by_name[close[0]]}?" if close else ""


class _Parser(argparse.ArgumentParser):
    """argparse with shorter errors: a bad choice lists the choices and the closest one,
    and the usage line above an error is the command's own (short) one."""

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {choices})"
                                                 + _did_you_mean(str(value), action.choices))

    def unrecognized(self, arguments: Sequence[str]) -> None:
        """The usage error of flags this (sub)command does not take."""
        flags = [text for action in self._actions for text in action.option_strings]
        unknown = next((text.split("=")[0] for text in arguments if text.startswith("-")), "")
        hint = _did_you_mean(unknown, flags) if unknown else ""
        self.error(f"unrecognized arguments: {' '.join(arguments)}{hint}")


_TRAIN_USAGE = (f"{PROGRAM} train [--preset NAME] [--config FILE.toml] [--resume] [--stop-at STEP] "
                f"[--FLAG VALUE ...]")
_SWEEP_USAGE = f"{PROGRAM} sweep --betas B,B,... [--config FILE.toml] [--FLAG VALUE ...]"
_EVAL_USAGE = f"{PROGRAM} eval CHECKPOINT [--iwae-samples K] [--num-points N] [--split SPLIT] [--FLAG VALUE ...]"
_SAMPLE_USAGE = (f"{PROGRAM} sample CHECKPOINT [--num N] [--seed SEED] [--temperature T] [--steps N] "
                 f"[--sampler NAME] [--out FILE.png] [--FLAG VALUE ...]")
_GRADVAR_USAGE = (f"{PROGRAM} gradvar CHECKPOINT [--batch-size B] [--num-estimates N] [--temperatures T,T,...] "
                  f"[--out DIR] [--FLAG VALUE ...]")
_TRAIN_EPILOG = (
    "Ctrl-C (SIGINT) or SIGTERM stops training after the step in progress with a checkpoint, prints how to "
    "continue (--resume) and exits with status 130 for SIGINT, 143 for SIGTERM: 128 + the signal's number, as a "
    "shell reports a process the signal ended, so a scheduler sees which signal stopped the run. A second signal "
    "while the checkpoint is written does not interrupt it. --resume of a finished run says so and exits 0."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``fastvae`` argument parser and its commands."""
    parser = _Parser(
        prog=PROGRAM, description="Train, evaluate and sample variational autoencoders on fastvae's fused ops.",
        epilog=f"`{PROGRAM} COMMAND --help` lists a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parser.command_parsers = commands.choices

    train = commands.add_parser(
        "train", help="train a model and leave a run folder (config, metrics, checkpoints, PNGs, report.md)",
        usage=_TRAIN_USAGE, epilog=_TRAIN_EPILOG,
        description="Train a VAE and write a run folder: config.toml, metrics.jsonl, checkpoints/, PNGs and "
        "report.md (final ELBO, IWAE estimate, ELBO gap, active units, KL per dimension). With no flags: the "
        "default conv VAE on the embedded sprites, about two minutes on a CPU.",
    )
    presets = preset_names()
    train.add_argument("--preset", choices=presets, metavar="NAME",
                       help=f"settings of a preset shipped with fastvae: {', '.join(presets)} (each file's header "
                       f"says what it trains, how it departs from its paper and what it costs); --config and the "
                       f"flags given override it")
    train.add_argument("--config", metavar="FILE.toml", help="settings from a TOML file whose keys are these flags "
                       "(without --), or the name of a preset when no such file exists; over --preset's, and flags "
                       "given override it")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                       "(bit for bit on the same device); flags given override its config.toml")
    train.add_argument("--stop-at", type=_positive_int, metavar="STEP", help="stop at this step with a checkpoint "
                       "(continue later with --resume)")
    add_option_flags(train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a checkpoint: IWAE log-likelihood (K=5000), ELBO, gap, active units, KL per dimension",
        usage=_EVAL_USAGE,
        description="Evaluate a checkpoint on a data split and write report.md and results.json. The data set is "
        "the run's (from its config.toml) unless --data is given.",
    )
    evaluate.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run folder (its last one)")
    evaluate.add_argument("--iwae-samples", type=_positive_int, default=5000,
                          help="K, importance samples per data point (default: 5000, the papers' setting)")
    evaluate.add_argument("--num-points", type=_positive_int, default=None,
                          help="evaluate the first N points of the split (default: all)")
    evaluate.add_argument("--split", default="test", choices=("test", "valid", "train"), help="(default: test)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=100, help="data points per call (default: 100)")
    evaluate.add_argument("--sample-chunk", type=_positive_int, default=None,
                          help="importance samples per model call (default: sized to bound memory)")
    evaluate.add_argument("--diffusion-t-samples", type=_positive_int, default=None, metavar="S",
                          help="a diffusion decoder's t-samples per data point in every log-weight (default: the "
                          "model's --diffusion-t-samples); more make the IWAE's bound on a bound less noisy")
    _add_checkpoint_flags(evaluate)
    evaluate.add_argument("--out", help="the folder for report.md and results.json (default: "
                          "RUN/eval-<split>-k<K>, or beside the checkpoint)")
    evaluate.add_argument("--data", help="the data set (default: the run's)")
    evaluate.add_argument("--data-root", help="the folder of the data files (default: the run's)")
    evaluate.add_argument("--binarize", choices=("none", "static", "dynamic"), help="(default: the run's)")

    sample = commands.add_parser("sample", help="write a PNG grid of samples of a checkpoint's model",
                                 usage=_SAMPLE_USAGE, description="Draw z ~ p(z) and write the decoder's means as a "
                                 "PNG grid.")
    sample.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run folder (its last one)")
    sample.add_argument("--num", type=_positive_int, default=64, help="samples (default: 64)")
    sample.add_argument("--ncol", type=_positive_int, default=8, help="columns of the grid (default: 8)")
    sample.add_argument("--temperature", type=_non_negative_float, default=None, metavar="T",
                        help="scale the prior's standard deviations by T (default: 1, the prior itself; 0: its "
                        "means); for models whose sample() takes a temperature, such as --model deep")
    sample.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                        help="sampling steps of a diffusion decoder (default: the model's diffusion_steps)")
    sample.add_argument("--sampler", choices=("ancestral", "deterministic"), default=None,
                        help="a diffusion decoder's sampler (default: the model's diffusion_sampler)")
    _add_checkpoint_flags(sample)
    sample.add_argument("--out", help="the PNG (default: RUN/samples-seed<seed>.png)")

    sweep = commands.add_parser(
        "sweep", help="rate–distortion: train one model per β and plot rate against distortion", usage=_SWEEP_USAGE,
        description="Train one model per β (all other settings equal, each in OUT/beta-<β> with its own report), "
        "then write OUT/rate_distortion.png, .md and .json.",
    )
    sweep.add_argument("--betas", type=lambda text: [float(v) for v in text.split(",") if v], metavar="B,B,...",
                       help="the β values, e.g. 0.25,1,4 (or betas = [...] in --config)")
    sweep.add_argument("--config", metavar="FILE.toml", help="settings (and betas) from a TOML file; flags override")
    add_option_flags(sweep)

    bench = commands.add_parser(
        "bench", help="run the benchmarks of a source checkout (bench/)",
        description="Run bench/bench_<NAME>.py of a source checkout with the ARGUMENTS given (all of them, with "
        "their defaults, when no NAME is given). `fastvae bench NAME --help` lists a benchmark's options.",
    )
    bench.add_argument("arguments", nargs=argparse.REMAINDER, metavar="[NAME] ARGUMENTS",
                       help="NAME is latent, likelihood, train, diffusion or all")

    gradvar = commands.add_parser(
        "gradvar", help="gradient variance of the encoder: reparameterization against the score function",
        usage=_GRADVAR_USAGE,
        description="On the first --batch-size evaluation images, draw --num-estimates independent single-sample "
        "estimates of the gradient of the ELBO with respect to the encoder's parameters under each estimator "
        "(reparameterized, or Gumbel-softmax at each --temperatures for the discrete model; the score function "
        "without a baseline, with a running-mean baseline and with a learned one) and write gradvar.md (the table: "
        "mean gradient's norm, total variance, signal-to-noise ratio, variance against the reference), gradvar.json "
        "and gradvar.png (log scale) into the run folder or --out.",
    )
    gradvar.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file or a run folder (its last one)")
    gradvar.add_argument("--batch-size", type=_positive_int, default=100,
                         help="the fixed batch: the first B images of the split (default: 100)")
    gradvar.add_argument("--num-estimates", type=_positive_int, default=1000,
                         help="single-sample gradient estimates per estimator (default: 1000)")
    gradvar.add_argument("--temperatures", type=_temperatures, metavar="T,T,...", default=None,
                         help="Gumbel-softmax temperatures of the discrete model (default: 1,0.5,0.1; the first is "
                         "the reference)")
    gradvar.add_argument("--baseline-steps", type=_positive_int, default=300,
                         help="Adam steps that fit a learned baseline when the checkpoint holds none (default: 300)")
    gradvar.add_argument("--baseline-draws", type=_positive_int, default=100,
                         help="draws that estimate the running-mean baseline when the checkpoint holds none "
                         "(default: 100)")
    gradvar.add_argument("--split", default="test", choices=("test", "valid", "train"), help="(default: test)")
    _add_checkpoint_flags(gradvar)
    gradvar.add_argument("--out", help="the folder for gradvar.md, .json and .png (default: the run folder, or "
                         "beside the checkpoint)")
    gradvar.add_argument("--data", help="the data set (default: the run's)")
    gradvar.add_argument("--data-root", help="the folder of the data files (default: the run's)")
    gradvar.add_argument("--binarize", choices=("none", "static", "dynamic"), help="(default: the run's)")
    return parser


def _add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="use the weight average (default: when the checkpoint has one)")
    parser.add_argument("--seed", type=int, default=0, help="seeds every random draw (default: 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "triton", "cuda", "cpu"),
                        help="fastvae backend (default: auto)")


def _run_train(args) -> int:
    from .train import resolve_settings, train_run

    # Layers, later ones winning: the preset, the --config file (or preset), the flags.
    file_settings = overlay(read_preset(args.preset, "train") if args.preset else {},
                            read_config(args.config, "train") if args.config else {})
    settings = resolve_settings(given_flags(args), file_settings, resume=args.resume)
    train_run(settings, resume=args.resume, stop_at=args.stop_at)
    return 0


def _run_sweep(args) -> int:
    from .sweep import sweep_run
    from .train import resolve_settings

    file_settings = read_toml(args.config, "sweep", allowed=("betas",)) if args.config else {}
    betas = args.betas if args.betas is not None else file_settings.pop("betas", None)
    file_settings.pop("betas", None)
    if "beta" in given_flags(args) or "beta" in file_settings:
        raise ValueError(f"{PROGRAM} sweep: give the β values with --betas (or betas = [...]), not --beta")
    if betas is not None:
        betas = normalize_settings({"betas": betas}, "sweep", allowed=("betas",))["betas"]
    settings = resolve_settings(given_flags(args), file_settings, where="sweep")
    sweep_run(settings, betas)
    return 0


def _run_eval(args) -> int:
    from .checkpoints import eval_checkpoint

    overrides = {"data": args.data, "data_root": args.data_root, "binarize": args.binarize}
    eval_checkpoint(args.checkpoint, split=args.split, num_samples=args.iwae_samples, num_points=args.num_points,
                    batch_size=args.batch_size, sample_chunk=args.sample_chunk, use_ema=args.ema, device=args.device,
                    diffusion_t_samples=args.diffusion_t_samples,
                    backend=args.backend, seed=args.seed, out=args.out, data_overrides=overrides)
    return 0


def _run_sample(args) -> int:
    from .checkpoints import sample_checkpoint

    sample_checkpoint(args.checkpoint, num=args.num, ncol=args.ncol, seed=args.seed, use_ema=args.ema,
                      device=args.device, backend=args.backend, out=args.out, temperature=args.temperature,
                      steps=args.steps, sampler=args.sampler)
    return 0


def _run_bench(args) -> int:
    from .bench import BENCHMARKS, run_benchmarks

    arguments = list(args.arguments)
    if arguments and arguments[0] in BENCHMARKS + ("all",):
        name = arguments.pop(0)
    elif arguments and not arguments[0].startswith("-"):
        raise ValueError(f"{PROGRAM} bench: unknown benchmark {arguments[0]!r}; choose from "
                         f"{', '.join(BENCHMARKS)} or all")
    else:
        name = "all"
    if name == "all" and arguments:
        raise ValueError(f"{PROGRAM} bench: arguments go to one benchmark: name it ({', '.join(BENCHMARKS)})")
    return run_benchmarks(BENCHMARKS if name == "all" else (name,), arguments)


def _run_gradvar(args) -> int:
    from .gradvar import gradvar_checkpoint

    overrides = {"data": args.data, "data_root": args.data_root, "binarize": args.binarize}
    gradvar_checkpoint(args.checkpoint, batch_size=args.batch_size, num_estimates=args.num_estimates,
                       temperatures=args.temperatures, baseline_steps=args.baseline_steps,
                       baseline_draws=args.baseline_draws, split=args.split, use_ema=args.ema, device=args.device,
                       backend=args.backend, seed=args.seed, out=args.out, data_overrides=overrides)
    return 0


_COMMANDS = {"train": _run_train, "eval": _run_eval, "sample": _run_sample, "sweep": _run_sweep, "bench": _run_bench,
             "gradvar": _run_gradvar}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``fastvae`` command with ``argv`` (default ``sys.argv[1:]``); returns the
    exit status.  A bad setting or a missing file exits with a one-line message; so does
    Ctrl-C (status 130) or SIGTERM (143), after ``fastvae train`` has saved a checkpoint."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if unknown:
        # The subcommand's usage, not the top-level one: the flags go to the subcommand.
        parser.command_parsers[args.command].unrecognized(unknown)
    # Imported after parsing: `fastvae --help` needs none of the training stack.
    from ..train import TooManySkippedUpdates, distributed
    from .interrupt import Interrupted, exit_status

    try:
        return _COMMANDS[args.command](args)
    except (*_USER_ERRORS, TooManySkippedUpdates) as error:
        message = str(error)
        if not message.startswith(PROGRAM):
            message = f"{PROGRAM} {args.command}: {message}"
        raise SystemExit(message) from None
    except Interrupted as interruption:  # `fastvae train` has said where it stopped
        return interruption.exit_status
    except KeyboardInterrupt:
        print(f"{PROGRAM} {args.command}: interrupted", file=sys.stderr, flush=True)
        return exit_status(signal.SIGINT)
    finally:
        distributed.cleanup()
