"""Where a golden test reads an official checkpoint from: the file (or folder) as released, or the folder
``elqproj convert`` makes of it. Golden fixtures are parametrised over :data:`SOURCES`."""

from __future__ import annotations

from pathlib import Path

from elqproj.conversion import convert_component

SOURCES = ["official", "converted"]


def weights_from(source: str, component: str, official: Path, tmp_path_factory) -> Path:
    """``official`` itself, or (``source == "converted"``) the converted folder of ``component`` made from it."""
    if source == "official":
        return official
    return convert_component(component, official, tmp_path_factory.mktemp("converted") / component)
