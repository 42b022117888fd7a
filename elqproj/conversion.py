"""``elqproj convert``: an official weights release -> a Hub-ready folder (safetensors, an index, a model card).

A single-file component (OSEDiff's ``osediff.pkl``, S3Diff's ``s3diff.pkl`` and ``de_net.pth``, RAM, DAPE)
becomes ``<stem>.safetensors`` holding exactly the official dict (:func:`elqproj.hub.save_checkpoint`),
``elqproj_weights.json`` naming it and the official file it came from, and ``README.md``, a model card with
the source, the licence and the citation. The loaders read such a folder (or a Hub repository holding it)
wherever they take the official file: ``load_restorer("osediff", weights="./osediff-hub")``. A folder
component (SeeSR's ``unet/`` and ``controlnet/``) is copied with its weights as safetensors.

The conversion reads pickles with ``torch.load(weights_only=True)``: no code in them runs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from . import hub
from .downloads import file_sha256
from .errors import InvalidInputError, WeightsNotFoundError
from .weights import Component, get_component, source_text

__all__ = ["convert_component", "push_folder"]

#: How each component is loaded from a converted folder (shown in its model card).
_RESTORER = 'from elqproj import load_restorer\ng = load_restorer("{restorer}", {option}="{{repo}}")'
_EXTRACTOR = 'from elqproj.prompts import load_prompt_extractor\ny = load_prompt_extractor("{name}", weights="{{repo}}")'
_USAGE = {
    "osediff": _RESTORER.format(restorer="osediff", option="weights"),
    "s3diff": _RESTORER.format(restorer="s3diff", option="weights"),
    "de-net": _RESTORER.format(restorer="s3diff", option="de_net"),
    "seesr": _RESTORER.format(restorer="seesr", option="weights"),
    "dape": _EXTRACTOR.format(name="dape"),
    "ram": _EXTRACTOR.format(name="ram"),
}
_HUB_LICENCES = {"Apache-2.0": "apache-2.0"}


def convert_component(name: str, source: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Convert component ``name``'s official weights at ``source`` (the file, or a folder holding it; for
    SeeSR the folder holding ``unet/`` and ``controlnet/``, or its parent) into the folder ``output``.

    Raises:
        UnknownNameError: no such component.
        InvalidInputError: a component that is already published as safetensors on the Hub.
        WeightsNotFoundError: ``source`` does not hold the component's files.
        CheckpointMismatchError / UnsafeCheckpointError: the file is not a checkpoint, or a pickle with code.
    """
    component = get_component(name)
    if component.kind == "hub-repo":
        raise InvalidInputError(f"{name} is published on the Hub ({component.source}) in safetensors already: "
                                "there is nothing to convert; use the Hub id.")
    out = Path(output)
    if component.kind == "gdrive-folder":
        original = _convert_folder(component, Path(source), out)
    else:
        original = _convert_file(component, Path(source), out)
    _write_model_card(component, out, original)
    return out


def _convert_file(component: Component, source: Path, out: Path) -> Path:
    official = component.files[0]
    path = source / official if source.is_dir() else source
    if not path.is_file():
        raise WeightsNotFoundError(f"{source} does not hold {official} (the official {component.name} file).")
    checkpoint = hub.load_checkpoint(path)
    converted = f"{Path(official).stem}.safetensors"
    hub.save_checkpoint(checkpoint, out / converted)
    index = {"component": component.name, "file": converted, "original_file": official, "source": component.source,
             "original_sha256": file_sha256(path)}
    (out / hub.CONVERTED_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return path


def _convert_folder(component: Component, source: Path, out: Path) -> Path:
    root = source / component.folder if component.folder and (source / component.folder).is_dir() else source
    configs = [file for file in component.files if file.endswith("config.json")]
    missing = [file for file in configs if not (root / file).is_file()]
    if missing:
        raise WeightsNotFoundError(f"{source} does not hold {missing} (the official {component.name} folder).")
    from safetensors.torch import save_file

    for config in configs:
        part = Path(config).parent
        (out / part).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / config, out / config)
        weights = root / part / "diffusion_pytorch_model.safetensors"
        if weights.is_file():
            shutil.copyfile(weights, out / part / weights.name)
        else:  # a .bin release: the same tensors as safetensors, which diffusers prefers
            state = hub.load_checkpoint(root / part / "diffusion_pytorch_model.bin")
            save_file({k: v.contiguous() for k, v in state.items()}, str(out / part / weights.name))
    return root


def _write_model_card(component: Component, out: Path, original: Path) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    licence = _HUB_LICENCES.get(component.licence)
    data = ModelCardData(license=licence or "other", library_name="elqproj",
                         tags=["elqproj", "image-restoration", component.name],
                         **({} if licence else {"license_name": component.licence}))
    usage = _USAGE[component.name].format(repo="<this repository or folder>")
    content = f"""---
{data.to_yaml()}
---

# {component.name}: {component.description}

The official weights, converted to safetensors by `elqproj convert {component.name}` (no values changed:
loading this folder gives the same tensors as the official file). Converted from `{original.name}`.

- **Official source:** {source_text(component)}
- **Format of the official release:** {component.format}
- **Licence:** {component.licence}
- **Used by:** {", ".join(component.used_by)}

## Use

```python
{usage}
```

## Citation

{component.citation or "See the official source."}
"""
    ModelCard(content).save(out / "README.md")


def push_folder(folder: str | os.PathLike, repo_id: str, *, revision: str | None = None, private: bool = False,
                token: Any = None) -> str:
    """Upload a converted folder to the Hub repository ``repo_id`` (created when missing), on the branch
    ``revision`` (created when missing); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                             commit_message=f"Add {Path(folder).name} (converted by elqproj convert)")
    return str(info)
