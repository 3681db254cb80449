"""From resolved settings to the things a run needs: the data splits, the model, the
trainer's config, the device."""
from __future__ import annotations

import inspect
import math
import os
from typing import Mapping, Optional

import torch

from .. import data as fastvae_data
from ..models import MODELS, build_model
from ..train import TrainConfig
from .options import MODEL_KEYS, OPTION_BY_KEY, PROGRAM, ConfigError

# Each split's own stream of the static binarization, so the train and test images of
# one seed are drawn independently.
_BINARIZE_SEED_OFFSET = {"train": 0, "valid": 1, "test": 2}
DEFAULT_EVAL_BATCH = 100
# The models with a diffusion decoder, and its settings.
DIFFUSION_MODELS = ("mlp", "conv")
DIFFUSION_KEYS = tuple(key for key in MODEL_KEYS if key.startswith("diffusion_"))


def pick_device(settings: Mapping, distributed: bool) -> Optional[str]:
    """The device to train on: the setting, else CUDA when there is one; under torchrun
    None, so the trainer takes cuda:LOCAL_RANK (or the CPU)."""
    if settings.get("device"):
        return settings["device"]
    if distributed:
        return None
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_split(settings: Mapping, split: str, device: Optional[str] = None):
    """The data set of ``split`` as the settings describe it (data, data_root,
    binarize, num_train/num_test, image_size), on ``device`` when given.

    A dynamically binarized data set is binarized dynamically for training only: the
    evaluation splits are binarized once (statically, from the run's seed), so every
    evaluation of a run reads the same images."""
    name = settings["data"]
    count = settings.get("num_train") if split == "train" else settings.get("num_test")
    kwargs = {}
    if name == "sprites" and count is not None:
        kwargs["num_images"] = count
    if name == "image_folder" and settings.get("image_size") is not None:
        kwargs["image_size"] = settings["image_size"]
    root = settings.get("data_root")
    if name == "image_folder" and not root:
        raise ConfigError("--data image_folder needs --data-root FOLDER, the folder of the images (FASTVAE_DATA "
                          "names the folder of the other data sets' files, not an image folder)")
    try:
        dataset = fastvae_data.load_dataset(name, root=root, split=split, **kwargs)
    except fastvae_data.DataNotFoundError as error:
        raise FileNotFoundError(f"--data {name}: {error.problem}. {_data_root_advice(name, root)}") from None
    if count is not None and name != "sprites" and count < len(dataset):
        dataset = dataset.subset(torch.arange(count))
    binarize = settings.get("binarize") or "none"
    if binarize == "static" or (binarize == "dynamic" and split != "train"):
        dataset = fastvae_data.static_binarize(dataset, seed=settings["seed"] + _BINARIZE_SEED_OFFSET.get(split, 3))
    elif binarize == "dynamic":
        dataset = fastvae_data.DynamicBinarization(dataset)
    if device is not None and torch.device(device).type != "cpu" and hasattr(dataset, "to"):
        dataset = dataset.to(device)
    return dataset


def _data_root_advice(name: str, root: Optional[str]) -> str:
    """Where the command looks for data and how to point it elsewhere, in the command's
    terms (--data-root, FASTVAE_DATA) rather than the Python API's (root=)."""
    if name == "image_folder":
        return f"Give the folder of the images with --data-root FOLDER (it is {root})"
    configured = os.environ.get("FASTVAE_DATA")
    where = (f"--data-root is {root}" if root else f"FASTVAE_DATA is {configured}" if configured
             else f"neither is set, so the folder is {fastvae_data.data_root()}")
    return (f"fastvae downloads nothing: put the files there, or give their folder with --data-root FOLDER or the "
            f"FASTVAE_DATA environment variable ({where})")


def model_config(settings: Mapping, data_shape) -> dict:
    """The ``fastvae.models.build_model`` config of the settings' model for data of
    ``data_shape``: every model setting given, checked against what the model takes."""
    name = settings["model"]
    if name not in MODELS:
        raise ConfigError(f"{PROGRAM} train: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    accepted = inspect.signature(MODELS[name].__init__).parameters
    if settings.get("likelihood") == "diffusion" and name not in DIFFUSION_MODELS:
        raise ConfigError(f"{PROGRAM} train: --likelihood diffusion (a diffusion decoder) is a decoder of the "
                          f"single-latent models {', '.join(DIFFUSION_MODELS)}, not of the {name!r} model")
    if settings.get("likelihood") != "diffusion":
        given = [OPTION_BY_KEY[key].flag for key in DIFFUSION_KEYS if settings.get(key) is not None]
        if given:
            raise ConfigError(f"{PROGRAM} train: {', '.join(given)} apply to --likelihood diffusion only (the "
                              f"likelihood is {settings.get('likelihood')!r})")
    config = {"name": name, "data_shape": list(data_shape)}
    for key in MODEL_KEYS:
        value = settings.get(key)
        if value is None:
            continue
        if key not in accepted:
            takes = sorted(OPTION_BY_KEY[k].flag for k in MODEL_KEYS if k in accepted)
            raise ConfigError(
                f"{PROGRAM} train: {OPTION_BY_KEY[key].flag} does not apply to the {name!r} model; its options are "
                f"{', '.join(takes)}"
            )
        config[key] = value
    if config.get("baseline", "none") != "none" and config.get("objective") != "score_function":
        raise ConfigError(f"{PROGRAM} train: --baseline {config['baseline']} is a control variate of the "
                          f"score-function estimator; add --objective score_function (or leave --baseline out)")
    return config


def model_settings(model) -> dict:
    """The model's resolved constructor arguments that are settings (its defaults
    included), to write into the run's config."""
    return {key: value for key, value in model.config.items() if key in MODEL_KEYS}


def time_limit_seconds(settings: Mapping) -> Optional[float]:
    """The ``time_limit`` setting (minutes; None or 0: none) as the trainer's seconds."""
    minutes = settings.get("time_limit")
    if minutes is None:
        return None
    if not math.isfinite(minutes) or minutes < 0:
        raise ConfigError(f"{PROGRAM} train: --time-limit is minutes of training, >= 0 (0: no limit), got {minutes}")
    return 60.0 * minutes if minutes > 0 else None


def train_config(settings: Mapping, out_dir, device: Optional[str]) -> TrainConfig:
    """The trainer's :class:`fastvae.train.TrainConfig` from the settings."""
    return TrainConfig(
        steps=settings.get("steps"),
        epochs=settings.get("epochs"),
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        lr_warmup_steps=settings["lr_warmup_steps"],
        optimizer=settings["optimizer"],
        adam_betas=tuple(settings.get("adam_betas") or TrainConfig.adam_betas),
        weight_decay=settings["weight_decay"],
        grad_clip=settings.get("grad_clip") or None,
        skip_threshold=settings.get("skip_threshold") or None,
        max_consecutive_skips=settings["max_consecutive_skips"],
        time_limit=time_limit_seconds(settings),
        beta_schedule=settings["beta"],
        temperature_schedule=settings.get("temperature_schedule"),
        free_bits=settings["free_bits"],
        ema_decay=settings.get("ema_decay"),
        autocast=settings["autocast"],
        compile=settings["compile"],
        seed=settings["seed"],
        device=device,
        out_dir=str(out_dir) if out_dir is not None else None,
        log_every=settings["log_every"],
        eval_every=settings["eval_every"],
        eval_batch_size=settings.get("eval_batch_size") or DEFAULT_EVAL_BATCH,
        checkpoint_every=settings["checkpoint_every"],
        keep_last=settings["keep_last"],
        overwrite=settings.get("overwrite", False),
        progress=settings["progress"],
        tensorboard=settings["tensorboard"],
    )


def new_model(settings: Mapping, data_shape):
    """The settings' model for data of ``data_shape``, its weights drawn from the
    settings' seed (so the same seed gives the same initial model)."""
    torch.manual_seed(settings["seed"])
    return build_model(model_config(settings, data_shape))
