"""Presets: ``--config`` files shipped inside the package (``fastvae/presets/NAME.toml``),
each a flat TOML file whose keys are the flags of ``fastvae train`` without ``--``, with a
comment header saying what it trains, where it departs from the paper it follows and
what it costs.  ``fastvae train --preset NAME`` reads one as the layer below the
``--config`` file and the flags (see :func:`fastvae.cli.train.resolve_settings`);
``--config NAME`` reads one too when no file NAME exists."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .options import PROGRAM, ConfigError, _toml_loads, normalize_settings, read_toml

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def preset_names() -> tuple:
    """The names of the shipped presets, sorted."""
    return tuple(sorted(path.stem for path in PRESETS_DIR.glob("*.toml")))


def preset_path(name: str) -> Optional[Path]:
    """The file of preset ``name``, or None when there is no such preset."""
    return PRESETS_DIR / f"{name}.toml" if name in preset_names() else None


def read_preset(name: str, where: str = "train") -> dict:
    """The settings of preset ``name``, checked like a ``--config`` file's.

    Raises:
        ConfigError: no preset of that name (the message lists the known ones).
    """
    path = preset_path(name)
    if path is None:
        raise ConfigError(f"{PROGRAM} {where}: --preset: unknown preset {name!r}; known presets: "
                          f"{', '.join(preset_names())}")
    text = path.read_text(encoding="utf-8")
    return normalize_settings(_toml_loads(text, f"preset {name}"), f"{where} (preset {name})")


def read_config(text: str, where: str = "train", allowed=()) -> dict:
    """The settings of ``--config TEXT``: the TOML file TEXT, else (when no such file
    exists) the preset named TEXT."""
    if not Path(text).is_file() and preset_path(text) is not None:
        return read_preset(text, where)
    try:
        return read_toml(text, where, allowed)
    except FileNotFoundError:
        raise FileNotFoundError(f"{PROGRAM} {where}: no config file {text!r} (nor a preset of that name; presets: "
                                f"{', '.join(preset_names())})") from None
