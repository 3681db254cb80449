"""The options of ``fastvae train`` (and ``fastvae sweep``): one table that makes both the
command-line flags and the keys of a ``--config`` TOML file, so the two can never drift.

A run's settings are resolved in layers, later ones winning: the built-in defaults, the
defaults of the data set (its model and likelihood), the run folder's ``config.toml``
when resuming, the ``--preset`` (:mod:`fastvae.cli.presets`), the ``--config`` file, then
the flags given on the command line.  The
resolved settings, every one of them, are written to the run folder's ``config.toml``,
so ``fastvae train --config RUN/config.toml`` reruns the run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ..data import DATASETS

PROGRAM = "fastvae"

# Settings that name one run length: giving one in a later layer drops the other.
LENGTH_KEYS = ("steps", "epochs")
BINARIZATIONS = ("none", "static", "dynamic")
MODEL_NAMES = ("mlp", "conv", "hierarchical", "discrete", "deep")
LIKELIHOOD_NAMES = ("bernoulli", "continuous_bernoulli", "gaussian", "discretized_logistic",
                    "discretized_logistic_mixture", "diffusion")


@dataclass(frozen=True)
class Option:
    """One setting: its key (``batch_size``; the flag is ``--batch-size``), its kind, its
    default (None: unset, left to the layer below or to the code that uses it), its
    group in ``--help`` and its help text.

    Kinds: ``str``, ``int``, ``float``, ``bool`` (``--x`` / ``--no-x``), ``ints`` and
    ``floats`` (comma-separated on the command line, arrays in TOML) and ``schedule`` (a
    number or a schedule spec such as ``linear:1000``)."""

    key: str
    kind: str
    default: Any
    group: str
    help: str
    choices: Optional[Sequence[str]] = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


DATA, MODEL, TRAINING, EVALUATION, OUTPUT = "data", "model", "training", "evaluation", "output"

OPTIONS: tuple[Option, ...] = (
    # ---- data
    Option("data", "str", "sprites", DATA, "the data set: " + ", ".join(DATASETS)
           + " (sprites is embedded: nothing to download)", DATASETS),
    Option("data_root", "str", None, DATA, "the folder holding the data files (default: $FASTVAE_DATA, else "
           "~/.cache/fastvae); for image_folder, the folder of the images (required)"),
    Option("binarize", "str", None, DATA, "none, static (one fixed Bernoulli draw per pixel) or dynamic (a fresh "
           "draw at every read); default: dynamic for mnist and fashion_mnist, none otherwise", BINARIZATIONS),
    Option("num_train", "int", None, DATA, "training images (default: all; 20000 generated sprites)"),
    Option("num_test", "int", None, DATA, "evaluation images (default: all; 2000 generated sprites)"),
    Option("eval_split", "str", "test", DATA, "the split evaluated: test or valid", ("test", "valid")),
    Option("image_size", "int", None, DATA, "image_folder: the side images are resized to"),
    # ---- model
    Option("model", "str", None, MODEL, "mlp, conv, hierarchical, discrete or deep (a VDVAE/NVAE-class hierarchy of "
           "latent groups over resolutions; default: conv for sprites, cifar10 and image folders, mlp for the "
           "MNISTs)", MODEL_NAMES),
    Option("likelihood", "str", None, MODEL, "the decoder's distribution (default: bernoulli for binary data, "
           "discretized_logistic_mixture for 8-bit images)", LIKELIHOOD_NAMES),
    Option("latent_dim", "int", None, MODEL, "latent dimensions (mlp, conv)"),
    Option("hidden_sizes", "ints", None, MODEL, "hidden layer widths, e.g. 200,200 (mlp, discrete)"),
    Option("channels", "ints", None, MODEL, "convolution channels, e.g. 32,64 (conv)"),
    Option("hidden_dim", "int", None, MODEL, "hidden width (conv, hierarchical)"),
    Option("latent_dims", "ints", None, MODEL, "latent dimensions per stochastic layer, bottom first (hierarchical)"),
    Option("activation", "str", None, MODEL, "tanh, relu, elu, silu, gelu, softplus or leaky_relu"),
    Option("num_mixtures", "int", None, MODEL, "components of the discretized logistic mixture"),
    Option("prior", "str", None, MODEL, "standard_normal, mixture, vamp or autoregressive (a MADE over the latent; "
           "mlp, conv)", ("standard_normal", "mixture", "vamp", "autoregressive")),
    Option("prior_components", "int", None, MODEL, "components of the mixture prior / pseudo-inputs of the VampPrior "
           "/ components of each conditional of the autoregressive prior (1: Gaussian conditionals)"),
    Option("prior_hidden_sizes", "ints", None, MODEL, "hidden widths of the autoregressive prior's MADE, e.g. "
           "256,256 (mlp, conv)"),
    Option("prior_lr_scale", "float", None, MODEL, "the autoregressive prior's learning rate relative to --lr, in "
           "(0, 1] (mlp, conv; default: 0.01, which kept it from following the encoder into collapse in "
           "the README's comparison)"),
    Option("latent", "str", None, MODEL, "the latent's family, its standard member the prior: gaussian, laplace, "
           "logistic, cauchy or truncated_normal (mlp, conv)",
           ("gaussian", "laplace", "logistic", "cauchy", "truncated_normal")),
    Option("latent_bounds", "floats", None, MODEL, "the truncated_normal latent's interval low,high (default -2,2)"),
    Option("objective", "str", None, MODEL, "elbo, iwae or score_function (the ELBO, the encoder trained by the "
           "REINFORCE gradient; mlp, conv, discrete)", ("elbo", "iwae", "score_function")),
    Option("num_samples", "int", None, MODEL, "K of the iwae objective"),
    Option("dreg", "bool", None, MODEL, "the doubly reparameterized gradient for the encoder (objective iwae)"),
    Option("baseline", "str", None, MODEL, "control variate of --objective score_function: none, running_mean (a "
           "moving average of the learning signal) or learned (NVIL's input-dependent baseline)",
           ("none", "running_mean", "learned")),
    Option("diffusion_schedule", "str", None, MODEL, "--likelihood diffusion: the noise schedule, fixed (linear "
           "log-SNR from 13.3 to -5) or learned (VDM's monotone network; mlp, conv; default: fixed)",
           ("fixed", "learned")),
    Option("diffusion_hidden_sizes", "ints", None, MODEL, "--likelihood diffusion: the MLP denoiser's hidden widths "
           "(mlp; default: 512,512)"),
    Option("diffusion_channels", "ints", None, MODEL, "--likelihood diffusion: the U-Net denoiser's channels per "
           "level (conv; default: 32,64)"),
    Option("diffusion_t_samples", "int", None, MODEL, "--likelihood diffusion: t-samples per data point of the "
           "diffusion term, averaged (default: 1)"),
    Option("diffusion_levels", "int", None, MODEL, "--likelihood diffusion: the data's levels, 2 (binary) or 256 "
           "(8-bit) (default: 2 for binary data, 256 otherwise)"),
    Option("diffusion_steps", "int", None, MODEL, "--likelihood diffusion: sampling steps of the samples and "
           "reconstructions (default: 100)"),
    Option("diffusion_sampler", "str", None, MODEL, "--likelihood diffusion: ancestral or deterministic (DDIM) "
           "sampling (default: ancestral)", ("ancestral", "deterministic")),
    Option("num_variables", "int", None, MODEL, "categorical variables (discrete)"),
    Option("num_categories", "int", None, MODEL, "categories per variable (discrete)"),
    Option("temperature", "float", None, MODEL, "Gumbel-softmax temperature (discrete)"),
    Option("hard", "bool", None, MODEL, "straight-through Gumbel-softmax (discrete)"),
    Option("resolutions", "ints", None, MODEL, "the hierarchy's resolutions from the data's side down, each dividing "
           "the one before, e.g. 28,14,7,1 (deep)"),
    Option("width", "int", None, MODEL, "channels of the bottom-up and top-down states (deep)"),
    Option("bottleneck", "int", None, MODEL, "channels inside the residual blocks (deep; default: width/4)"),
    Option("encoder_blocks", "ints", None, MODEL, "residual blocks of the bottom-up path per resolution, the data's "
           "first (deep)"),
    Option("decoder_groups", "ints", None, MODEL, "latent groups (top-down blocks) per resolution, the data's first "
           "(deep)"),
    Option("latent_channels", "int", None, MODEL, "channels of every latent group (deep)"),
    Option("logvar_bound", "float", None, MODEL, "log-variances of q and p soft-clamped to (-b, b) (deep)"),
    Option("kl_balancing", "bool", None, MODEL, "NVAE's KL balancing of the groups during a KL warm-up (deep)"),
    Option("spectral_coeff", "float", None, MODEL, "weight of NVAE's spectral regularization (deep; 0: off)"),
    Option("committed_rate", "float", None, MODEL, "the δ-VAE's committed rate: nats per latent dimension that "
           "KL(q(z_d|x) ‖ N(0,1)) cannot fall below, by a bound on q's variance (mlp, conv; standard_normal prior; "
           "0: off)"),
    Option("decoder", "str", None, MODEL, "mlp, or autoregressive: a MADE over the pixels on top of the MLP's "
           "logits, a Bernoulli decoder strong enough to ignore z (mlp; default: mlp)", ("mlp", "autoregressive")),
    Option("autoregressive_hidden_sizes", "ints", None, MODEL, "hidden widths of the autoregressive decoder's MADE, "
           "e.g. 500 (mlp with --decoder autoregressive)"),
    # ---- training
    Option("steps", "int", None, TRAINING, "updates to take (give steps or epochs; default: 1500 on sprites, "
           "else 10 epochs)"),
    Option("epochs", "int", None, TRAINING, "passes over the training data"),
    Option("batch_size", "int", None, TRAINING, "the global batch, split over the processes under torchrun "
           "(default: 32 on sprites, else 128)"),
    Option("lr", "float", 1e-3, TRAINING, "learning rate (Adam)"),
    Option("lr_warmup_steps", "int", 0, TRAINING, "linear learning-rate warm-up steps"),
    Option("optimizer", "str", "adam", TRAINING, "adam or adamw", ("adam", "adamw")),
    Option("adam_betas", "floats", None, TRAINING, "the optimizer's (β1, β2), e.g. 0.9,0.9 (VDVAE's; default: "
           "0.9,0.999)"),
    Option("weight_decay", "float", 0.0, TRAINING, "weight decay"),
    Option("beta", "schedule", 1.0, TRAINING, "the KL weight: a number (β-VAE), linear:STEPS (KL warm-up) or "
           "cyclical:CYCLES[:RATIO] (cyclical annealing)"),
    Option("free_bits", "float", 0.0, TRAINING, "free bits: nats per latent dimension (0: off)"),
    Option("temperature_schedule", "schedule", None, TRAINING, "Gumbel-softmax temperature schedule, e.g. "
           "exponential:1.0:1e-4:0.5 (discrete)"),
    Option("grad_clip", "float", None, TRAINING, "clip the gradient's global norm to this (default: off)"),
    Option("skip_threshold", "float", None, TRAINING, "skip updates whose gradient norm is above this "
           "(default: off; a NaN/inf norm is always skipped)"),
    Option("time_limit", "float", None, TRAINING, "stop training once it has run this many MINUTES (wall time "
           "in training, summed over --resume), then evaluate and report as at the last step; a resumed run goes on "
           "until its total reaches the limit (default: none; 0: none)"),
    Option("max_consecutive_skips", "int", 20, TRAINING, "stop with an error after this many skipped updates "
           "in a row"),
    Option("ema_decay", "float", None, TRAINING, "keep an exponential moving average of the weights (e.g. 0.999); "
           "evaluated and sampled instead of the raw weights"),
    Option("autocast", "bool", False, TRAINING, "bf16 autocast of the forward pass"),
    Option("compile", "bool", False, TRAINING, "torch.compile the model"),
    Option("backend", "str", "auto", TRAINING, "fastvae backend: auto, torch, triton, cuda or cpu",
           ("auto", "torch", "triton", "cuda", "cpu")),
    Option("device", "str", None, TRAINING, "cpu, cuda or cuda:N (default: cuda if present; cuda:LOCAL_RANK "
           "under torchrun)"),
    Option("seed", "int", 0, TRAINING, "the seed: the same seed gives the same run bit for bit"),
    Option("log_every", "int", 50, TRAINING, "log training metrics every this many steps"),
    Option("eval_every", "int", 0, TRAINING, "evaluate the ELBO on the eval split every this many steps "
           "(0: at the end)"),
    Option("checkpoint_every", "int", 0, TRAINING, "write a checkpoint every this many steps (0: at the end)"),
    Option("keep_last", "int", 3, TRAINING, "step checkpoints kept"),
    Option("progress", "bool", True, TRAINING, "a progress bar (on a terminal)"),
    Option("tensorboard", "bool", True, TRAINING, "TensorBoard events too, when tensorboard is installed"),
    # ---- evaluation
    Option("iwae_samples", "int", None, EVALUATION, "K of the final importance-weighted estimate of log p(x) "
           "(default: 100 on sprites, else 1000; the papers use 5000: see `fastvae eval`)"),
    Option("iwae_points", "int", None, EVALUATION, "eval images the final IWAE estimate uses (0: all; default: "
           "200 on sprites, else 500)"),
    Option("iwae_every", "int", 0, EVALUATION, "also estimate the IWAE log-likelihood every this many steps "
           "(logged as test/iwae_nll; 0: only at the end)"),
    Option("eval_batch_size", "int", None, EVALUATION, "batch of the evaluations (default: 100)"),
    Option("pictures", "bool", True, EVALUATION, "write the PNGs at the end"),
    # ---- output
    Option("out", "str", None, OUTPUT, "the run folder (default: runs/<name>)"),
    Option("name", "str", None, OUTPUT, "the run's name (default: <data>-<model>-<date>-<time>)"),
    Option("overwrite", "bool", False, OUTPUT, "replace a run already in the folder"),
)

OPTION_BY_KEY: Dict[str, Option] = {option.key: option for option in OPTIONS}

# Settings of the model constructors (fastvae.models), passed when the model takes them.
MODEL_KEYS = ("likelihood", "latent_dim", "hidden_sizes", "channels", "hidden_dim", "latent_dims", "activation",
              "num_mixtures", "prior", "prior_components", "latent", "latent_bounds", "objective", "num_samples",
              "dreg", "num_variables", "num_categories", "temperature", "hard", "resolutions", "width", "bottleneck", "encoder_blocks",
              "decoder_groups", "latent_channels", "logvar_bound", "kl_balancing", "spectral_coeff",
              "baseline", "committed_rate", "decoder", "autoregressive_hidden_sizes",
              "prior_hidden_sizes", "prior_lr_scale", "diffusion_schedule", "diffusion_hidden_sizes",
              "diffusion_channels", "diffusion_t_samples", "diffusion_levels", "diffusion_steps", "diffusion_sampler")
# Settings that belong to one invocation, not to the run: never written to config.toml.
INVOCATION_KEYS = ("out", "overwrite")

# Each data set's model and data defaults (the likelihood follows from the data: see
# default_likelihood).  The sprites conv model is sized to train in about two minutes
# on two CPU cores.
DATA_DEFAULTS: Dict[str, dict] = {
    "sprites": {"model": "conv", "binarize": "none"},
    "binarized_mnist": {"model": "mlp", "binarize": "none"},
    "mnist": {"model": "mlp", "binarize": "dynamic"},
    "fashion_mnist": {"model": "mlp", "binarize": "dynamic"},
    "cifar10": {"model": "conv", "binarize": "none"},
    "image_folder": {"model": "conv", "binarize": "none"},
}
DEEP_MNIST = {"resolutions": [28, 14, 7, 1], "width": 32, "encoder_blocks": [2, 2, 2, 2],
              "decoder_groups": [2, 2, 2, 1], "latent_channels": 4}
MODEL_DEFAULTS: Dict[tuple, dict] = {
    ("sprites", "conv"): {"channels": [16, 32, 64], "hidden_dim": 256, "latent_dim": 10},
    ("cifar10", "conv"): {"channels": [64, 128], "hidden_dim": 512, "latent_dim": 64},
    ("image_folder", "conv"): {"channels": [64, 128], "hidden_dim": 512, "latent_dim": 64},
    # The deep model: one resolution per halving down to 7 (4 on CIFAR-10, 8 on sprites),
    # then 1×1; small enough to train on a CPU (presets hold the larger ones).
    ("binarized_mnist", "deep"): DEEP_MNIST,
    ("mnist", "deep"): DEEP_MNIST,
    ("fashion_mnist", "deep"): DEEP_MNIST,
    ("cifar10", "deep"): {"resolutions": [32, 16, 8, 4, 1], "width": 64, "encoder_blocks": [2, 2, 2, 2, 2],
                          "decoder_groups": [1, 2, 2, 2, 1], "latent_channels": 8},
    ("sprites", "deep"): {"resolutions": [64, 32, 16, 8, 1], "width": 32, "encoder_blocks": [1, 1, 1, 1, 1],
                          "decoder_groups": [1, 1, 2, 2, 1], "latent_channels": 4},
}
LENGTH_DEFAULTS: Dict[str, dict] = {"sprites": {"steps": 1500}}
DEFAULT_EPOCHS = 10
# The batch and the final IWAE estimate's size, per data set (the conv decoder on 64×64
# sprites is the costly one on a CPU).
RUN_DEFAULTS: Dict[str, dict] = {
    "sprites": {"batch_size": 32, "iwae_samples": 100, "iwae_points": 200},
}
GENERAL_RUN_DEFAULTS = {"batch_size": 128, "iwae_samples": 1000, "iwae_points": 500}
BINARY_DATA = ("sprites", "binarized_mnist")


class ConfigError(ValueError):
    """A bad setting: an unknown key, a value of the wrong kind, a conflict."""


def _fail(where: str, message: str):
    raise ConfigError(f"{PROGRAM} {where}: {message}")


# --------------------------------------------------------------------------------------
# Values: from the command line and from TOML
# --------------------------------------------------------------------------------------


def _parse_number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_flag_value(option: Option, text: str):
    """A flag's text as the option's value (argparse calls this; a ValueError becomes
    argparse's usage error)."""
    if option.kind == "str":
        return text
    if option.kind == "int":
        return int(text)
    if option.kind == "float":
        return float(text)
    if option.kind in ("ints", "floats"):
        convert = int if option.kind == "ints" else float
        return [convert(item) for item in text.replace(" ", "").split(",") if item]
    if option.kind == "schedule":
        try:
            return _parse_number(text)
        except ValueError:
            return text
    raise ValueError(f"option {option.key} of kind {option.kind} takes no value")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value(option: Option, value, where: str):
    """``value`` (from a TOML file or Python) checked against the option's kind; lists
    may also be given as comma-separated strings.  Returns the value, normalized."""
    kind, name = option.kind, option.key
    if kind == "str":
        if not isinstance(value, str):
            _fail(where, f"{name} must be a string, got {value!r}")
    elif kind == "int":
        if not _is_int(value):
            _fail(where, f"{name} must be an integer, got {value!r}")
    elif kind == "float":
        if not _is_number(value):
            _fail(where, f"{name} must be a number, got {value!r}")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            _fail(where, f"{name} must be true or false, got {value!r}")
    elif kind in ("ints", "floats"):
        if isinstance(value, str):
            try:
                value = parse_flag_value(option, value)
            except ValueError:
                _fail(where, f"{name} must be a list of {'integers' if kind == 'ints' else 'numbers'}, got {value!r}")
        check = _is_int if kind == "ints" else _is_number
        if not isinstance(value, (list, tuple)) or not all(check(item) for item in value):
            _fail(where, f"{name} must be a list of {'integers' if kind == 'ints' else 'numbers'}, got {value!r}")
        value = [int(v) if kind == "ints" else float(v) for v in value]
    elif kind == "schedule":
        if not (_is_number(value) or isinstance(value, str)):
            _fail(where, f"{name} must be a number or a schedule such as 'linear:1000', got {value!r}")
    if option.choices is not None and value not in option.choices:
        _fail(where, f"{name} must be one of {', '.join(option.choices)}, got {value!r}")
    return value


def normalize_settings(values: Mapping, where: str, allowed: Sequence[str] = ()) -> dict:
    """A dict of settings with keys checked and values checked by kind: keys may use
    dashes or underscores; an unknown key is an error listing the known ones.
    ``allowed`` names extra keys a command takes (e.g. the sweep's ``betas``)."""
    settings = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key in allowed:
            settings[key] = value
            continue
        if key not in OPTION_BY_KEY:
            known = ", ".join(sorted(list(OPTION_BY_KEY) + list(allowed)))
            _fail(where, f"unknown key {raw_key!r}; known keys (the flags without '--'): {known}")
        if isinstance(value, Mapping):
            _fail(where, f"{raw_key} must be a value, not a table: the file's keys are the flags, at its top level")
        settings[key] = check_value(OPTION_BY_KEY[key], value, where)
    return settings


# --------------------------------------------------------------------------------------
# TOML
# --------------------------------------------------------------------------------------


def _toml_loads(text: str, source: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover (Python 3.10)
        try:
            import tomli as tomllib
        except ImportError:
            _fail("train", f"reading {source} needs Python 3.11 or the package tomli")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        _fail("train", f"{source} is not valid TOML: {error}")


def read_toml(path, where: str = "train", allowed: Sequence[str] = ()) -> dict:
    """The settings of a TOML file whose keys are the flags (without ``--``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{PROGRAM} {where}: no config file {str(path)!r}")
    return normalize_settings(_toml_loads(path.read_text(encoding="utf-8"), str(path)), f"{where} ({path})", allowed)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # TOML's basic strings escape as JSON's do
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def toml_text(settings: Mapping, header: str = "") -> str:
    """Flat ``key = value`` TOML of ``settings`` grouped as ``--help`` groups them; None
    values are left out (TOML has no null, and an absent key means the default)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    groups: Dict[str, list] = {}
    for key, value in settings.items():
        if value is None:
            continue
        group = OPTION_BY_KEY[key].group if key in OPTION_BY_KEY else "other"
        groups.setdefault(group, []).append(f"{key} = {_toml_value(value)}")
    for group in (DATA, MODEL, TRAINING, EVALUATION, OUTPUT, "other"):
        if group in groups:
            lines += ["", f"# {group}"] + groups[group]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_toml(path, settings: Mapping, header: str = "") -> Path:
    """Write :func:`toml_text` atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(toml_text(settings, header), encoding="utf-8")
    os.replace(partial, path)
    return path


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


def builtin_defaults() -> dict:
    return {option.key: option.default for option in OPTIONS}


def overlay(base: Mapping, layer: Mapping) -> dict:
    """``base`` with ``layer``'s settings on top; a run length in ``layer`` (steps or
    epochs) replaces the other one of ``base``."""
    merged = dict(base)
    for key in LENGTH_KEYS:
        if layer.get(key) is not None:
            for other in LENGTH_KEYS:
                if other != key:
                    merged[other] = None
    merged.update(layer)
    return merged


def default_likelihood(settings: Mapping) -> str:
    """Bernoulli for binary data (sprites, binarized MNIST, or any binarization); the
    discretized logistic mixture for 8-bit images."""
    if settings["data"] in BINARY_DATA or settings.get("binarize") in ("static", "dynamic"):
        return "bernoulli"
    return "discretized_logistic_mixture"


def fill_data_defaults(settings: Mapping) -> dict:
    """Fill what the user left unset from the data set's defaults: the binarization, the
    model and its sizes, the likelihood and the run length."""
    resolved = dict(settings)
    data = resolved["data"]
    for key, value in DATA_DEFAULTS.get(data, {}).items():
        if resolved.get(key) is None:
            resolved[key] = value
    if resolved.get("likelihood") is None:
        resolved["likelihood"] = default_likelihood(resolved)
    if resolved["likelihood"] == "diffusion" and resolved.get("diffusion_levels") is None:
        resolved["diffusion_levels"] = 2 if default_likelihood(resolved) == "bernoulli" else 256
    for key, value in MODEL_DEFAULTS.get((data, resolved["model"]), {}).items():
        if resolved.get(key) is None:
            resolved[key] = value
    if all(resolved.get(key) is None for key in LENGTH_KEYS):
        resolved.update(LENGTH_DEFAULTS.get(data, {"epochs": DEFAULT_EPOCHS}))
    for key, value in {**GENERAL_RUN_DEFAULTS, **RUN_DEFAULTS.get(data, {})}.items():
        if resolved.get(key) is None:
            resolved[key] = value
    return resolved


def given_flags(namespace: argparse.Namespace) -> dict:
    """The settings given as flags (argparse leaves the others out: their default is
    SUPPRESS), checked like a file's."""
    values = {key: value for key, value in vars(namespace).items() if key in OPTION_BY_KEY}
    return normalize_settings(values, "train (command line)")


def add_option_flags(parser: argparse.ArgumentParser, keys: Optional[Sequence[str]] = None) -> None:
    """Add a flag per option (all, or those in ``keys``) to ``parser``, grouped, each
    with default SUPPRESS so that only the flags given reach the namespace."""
    groups = {}
    for option in OPTIONS:
        if keys is not None and option.key not in keys:
            continue
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(f"{option.group} options")
        group = groups[option.group]
        default_text = "" if option.default is None or option.kind == "bool" else f" (default: {option.default})"
        if option.kind == "bool":
            on = "on" if option.default else "off"
            group.add_argument(option.flag, dest=option.key, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS,
                               help=option.help + ("" if option.default is None else f" (default: {on})"))
        else:
            metavar = {"ints": "N,N,...", "floats": "X,X,...", "schedule": "SPEC"}.get(option.kind, option.key.upper())
            group.add_argument(option.flag, dest=option.key, type=_flag_type(option), default=argparse.SUPPRESS,
                               choices=option.choices, metavar=metavar if option.choices is None else None,
                               help=option.help + default_text)


def _flag_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str):
        return parse_flag_value(option, text)

    convert.__name__ = option.kind  # argparse names the type in its error message
    return convert
