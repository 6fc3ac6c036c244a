"""A study's output folder as a BIDS derivatives dataset: ``dataset_description.json``, the model file, and per
node group its statistical maps in the naming BEP041 proposes, its design matrix (run level) and its record.

Maps of a node group: ``sub-<label>/[ses-<label>/]node-<Name>/<entities>_contrast-<c>_stat-<s>_statmap<ext>``
(dataset-level nodes: ``node-<Name>/[<entities>_]contrast-<c>_stat-<s>_statmap<ext>``), where ``<entities>``
are the group's (``sub-01_task-x_run-1``, with ``hemi-L`` for a hemisphere) and ``<s>`` one of effect,
variance, t (or F), p and z. The group's record is ``<entities>_[contrast-<c>_]model.json`` beside them.
Each group is written through one :class:`voxfit.io.OutputFolder` and committed at once, so an interrupted
study leaves every finished group whole and nothing half-written.
"""

from __future__ import annotations

import json
from pathlib import Path

from .._version import __version__
from ..exceptions import InputError
from ..io import OutputFolder, sanitize_label, write_files_atomically
from .layout import ENTITIES, short_entities

__all__ = [
    "check_name_lengths",
    "describe_dataset",
    "description_files",
    "group_folder",
    "group_prefix",
    "group_records",
    "grouped_by_others",
    "map_name",
    "open_group",
]

CODE_URL = "https://github.com/voxfit/voxfit"


def description_files(out_dir, model: dict) -> list[Path]:
    """The files :func:`describe_dataset` writes for `model`: the description and the model file."""
    name = sanitize_label(model.get("Name", "model"), "model")
    return [Path(out_dir) / "dataset_description.json", Path(out_dir) / f"model-{name}_smdl.json"]


def describe_dataset(out_dir, model: dict, command=None) -> Path:
    """Write ``dataset_description.json`` (DatasetType derivative, GeneratedBy voxfit with its version and
    command) and the model as ``model-<Name>_smdl.json`` into `out_dir`; returns the model file's path. A model
    file there of another model whose name keeps the same letters and digits (``model_B``, ``model-B``) is
    refused: the groups of both would be taken for one study's."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = {"Name": "voxfit", "Version": __version__, "CodeURL": CODE_URL}
    if command:
        generated["Command"] = " ".join(map(str, command))
    description = {
        "Name": f"voxfit statistical maps of model {model.get('Name', 'model')}",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
    }
    model_file = description_files(out_dir, model)[1]
    try:
        other = json.loads(model_file.read_text()).get("Name")
    except (OSError, ValueError, AttributeError):
        other = None
    if other is not None and other != model.get("Name", "model"):
        raise InputError(
            f"{out_dir} holds the study of model {other!r} in {model_file.name}, the file model "
            f"{model.get('Name', 'model')!r} would write too (names keep only their letters and digits): rename "
            "the model, or give another output folder."
        )
    texts = {
        path: json.dumps(content, indent=2, default=str) + "\n"
        for path, content in ((out_dir / "dataset_description.json", description), (model_file, model))
    }
    write_files_atomically({path: lambda tmp, text=text: Path(tmp).write_text(text) for path, text in texts.items()})
    return model_file


def group_folder(out_dir, node_name: str, entities: dict, level: str) -> Path:
    """The folder of a node group: ``sub-<label>/[ses-<label>/]node-<Name>`` below `out_dir`, or
    ``node-<Name>`` for a dataset-level node."""
    node = f"node-{sanitize_label(node_name, 'node')}"
    if level == "dataset" or entities.get("subject") is None:
        return Path(out_dir) / node
    parts = [f"sub-{entities['subject']}"]
    if entities.get("session") is not None:
        parts.append(f"ses-{entities['session']}")
    return Path(out_dir, *parts, node)


def group_records(out_dir) -> list[Path]:
    """The records (``*model.json``) of every node group below `out_dir`: dataset-level nodes', then subjects' and
    sessions' (records of other tools' folders among them are the caller's to tell apart)."""
    out_dir = Path(out_dir)
    patterns = ("node-*/*model.json", "sub-*/node-*/*model.json", "sub-*/ses-*/node-*/*model.json")
    return [path for pattern in patterns for path in out_dir.glob(pattern)]


def group_prefix(entities: dict) -> str:
    """The group's entities as a file name prefix (``sub-01_task-x_run-1_``; empty for none): BIDS entities in
    BIDS order, then any other key the node groups by but the contrast (a participants.tsv column, ``group``:
    ``group-patient_``), by name, key and value as letters and digits. Without them the groups of a dataset node
    grouped by such a column wrote the same files, each over the last."""
    text = short_entities({k: v for k, v in entities.items() if k in ENTITIES})
    others = [
        f"{sanitize_label(k, 'GroupBy')}-{sanitize_label(entities[k], f'GroupBy {k} value')}"
        for k in grouped_by_others(entities)
    ]
    text = "_".join([t for t in (text, *others) if t])
    return f"{text}_" if text else ""


def grouped_by_others(entities: dict) -> list[str]:
    """The keys of a group's `entities` that are neither BIDS entities nor the contrast (a participants.tsv column
    a node groups by), by name, those with a value only."""
    return sorted(k for k, v in entities.items() if k not in ENTITIES and k != "contrast" and v is not None)


def check_name_lengths(prefix: str, labels, extension: str, stat: str = "variance") -> None:
    """Refuse a group whose files' names would be longer than the 255 bytes a file system takes for a name (a
    participant label of 170 characters): said before it is fitted, not when its maps are written (which stopped
    the whole study). `stat`: the longest ``stat-`` part of its maps' names (a permutation or RFT map's)."""
    names = [map_name(prefix, label, stat, extension) for label in labels] + [f"{prefix}design.json"]
    longest = max(names, key=lambda n: len(n.encode()))
    if len(longest.encode()) > 255:
        raise InputError(
            f"its files' names would be longer than the 255 bytes a file system takes ({longest[:48]}..., "
            f"{len(longest.encode())} bytes); shorten its labels (the subject's, the contrasts')."
        )


def map_name(prefix: str, contrast: str, stat: str, extension: str) -> str:
    """``<prefix>contrast-<c>_stat-<stat>_statmap<ext>`` (BEP041)."""
    return f"{prefix}contrast-{contrast}_stat-{stat}_statmap{extension}"


def open_group(folder) -> OutputFolder:
    """The output folder of one node group (shared with the node's other groups: same-named files replaced,
    others left alone), committed as one."""
    return OutputFolder(folder, force=True)
