"""Shared widget helpers: layer combos, geometry copying, notifications, devices, tooltips, workers.

Everything heavy (torch, the models) is imported inside functions, so opening napari never
imports torch; the widgets import it when they are created or run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .._reader import geometry_to_layer_kwargs, layer_kwargs_to_geometry

DEVICES = ("auto", "cpu", "cuda", "mps")

TOOLTIPS: Dict[str, str] = {
    "data_dir": "Data set folder: Decathlon layout (dataset.json, imagesTr/, labelsTr/) or paired folders "
                "(images/, masks/, optional fov/, optionally inside train/ and test/).",
    "source": "Train on a data set folder, or on the image and labels layers open in the viewer "
              "(written to a temporary data set with their geometry).",
    "teacher_dir": "Run folder of a trained teacher (holds best.pt or last.pt), e.g. from `medkd train`.",
    "train_teacher": "Train the teacher first (in the same background process chain), then distil.",
    "teacher_model": "Registered teacher architecture used when training the teacher first.",
    "student": "Registered student architecture (see `medkd models`).",
    "method": "Distillation method preset (see `medkd methods`).",
    "budget_kind": "Stop after this many iterations or minutes of training.",
    "device": "auto = CUDA, then Apple MPS, then CPU. The run happens in a separate process, so GPU memory "
              "is freed when it ends.",
    "out_dir": "Optional: a new, empty run folder for the student (the teacher goes to <folder>_teacher). "
               "Empty = a new folder per Start in the runs folder, named <date>-<model>-<method>. "
               "Resume continues the run in this folder (empty: the last run started here).",
    "runs_root": "Where new run folders are made (one per Start) and where the runs browser looks.",
    "val_every": "Iterations between validations (and checkpoints) of the run.",
    "threads": "torch CPU threads of the run (0 = all cores; the default leaves one core to napari).",
    "patch_size": "Training patch size in pixels (voxels for 3D models).",
    "batch_size": "Patches per iteration.",
    "teacher_run": "Teacher run folder (best.pt / last.pt).",
    "student_run": "Student run folder (best.pt / last.pt).",
    "truth": "Optional ground-truth labels layer; without it only teacher vs student is measured.",
    "fov": "Optional field-of-view labels layer: pixels outside it are ignored (as in `medkd evaluate`).",
    "graph": "Patch nodes: max-pooled feature patches (SKD pair-wise, Graph Flow, MSKD). Class regions: "
             "masked-mean prototypes of the teacher's predicted classes (EMKD RAD, MSKD class graph).",
    "tap": "Feature tap of both models (enc_low, enc_mid, enc_high, bottleneck, dec_mid, dec_low).",
    "top_k": "Draw only the k strongest edges so the graph stays readable.",
    "onnx": "An exported student (.onnx, e.g. from Export ONNX or `medkd export`), or a run folder (its exported "
            "model is used, exported on first use).",
    "live": "Segment the slice in view whenever you scroll (debounced, stale results dropped).",
}


class InputError(ValueError):
    """A user input problem; shown as an error notification, never raised into Qt."""


# -- notifications --------------------------------------------------------------------------
def show_error(message: str) -> None:
    from napari.utils import notifications

    notifications.show_error(str(message))


def show_info(message: str) -> None:
    from napari.utils import notifications

    notifications.show_info(str(message))


def last_lines(text: str, n: int = 8) -> str:
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return "\n".join(lines[-n:])


def set_tooltips(widgets: Dict[str, Any]) -> None:
    for key, w in widgets.items():
        if key in TOOLTIPS:
            w.tooltip = TOOLTIPS[key]


# -- registries (torch imported here, never at napari start-up) -------------------------------
def model_names(role: Optional[str] = None) -> List[str]:
    import napari_medkd.models  # noqa: F401  (fills MODELS)
    from ..registry import MODELS

    return [n for n in MODELS.names() if role is None or MODELS.meta(n).get("role") == role]


def method_names() -> List[str]:
    from ..distill import load_all
    from ..registry import METHODS

    load_all()
    return METHODS.names()


# -- layers -----------------------------------------------------------------------------------
def layer_combo(viewer, kind, label: str, nullable: bool = False, tooltip_key: str = ""):
    """A magicgui ComboBox listing the viewer's layers of ``kind``, kept in sync with the viewer."""
    from magicgui.widgets import ComboBox

    def choices(_w=None):
        return [(lyr.name, lyr) for lyr in viewer.layers if isinstance(lyr, kind)]

    combo = ComboBox(label=label, choices=choices, nullable=nullable)
    if tooltip_key in TOOLTIPS:
        combo.tooltip = TOOLTIPS[tooltip_key]

    def refresh(*_):
        try:
            combo.reset_choices()
        except RuntimeError:  # the Qt widget is gone
            pass

    for ev in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
        ev.connect(refresh)
    refresh()
    if not nullable and combo.value is None and combo.choices:
        combo.value = combo.choices[0]
    return combo


def layer_geometry(layer) -> Dict[str, Any]:
    """spacing/origin/direction (SimpleITK order) of a layer: its metadata, else its transform."""
    geo = (layer.metadata or {}).get("medkd_geometry")
    if geo:
        return geo
    nsp = layer.ndim
    scale = np.asarray(layer.scale)[-nsp:]
    translate = np.asarray(layer.translate)[-nsp:]
    affine = np.asarray(layer.affine.affine_matrix)[-nsp - 1:, -nsp - 1:]
    return layer_kwargs_to_geometry(scale, translate, affine)


def geometry_kwargs(like) -> Dict[str, Any]:
    """scale/translate/affine/metadata so a new layer lies exactly on ``like``'s grid."""
    geo = layer_geometry(like)
    kw = geometry_to_layer_kwargs(geo["spacing"], geo["origin"], geo["direction"])
    meta = {"medkd_geometry": geo, "source": (like.metadata or {}).get("source", like.name)}
    return {**kw, "metadata": meta}


def spatial_shape(layer) -> tuple:
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(data.shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def image_from_layer(layer):
    """A ``MedicalImage`` of a napari layer (array + geometry)."""
    from ..io.image import MedicalImage

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    geo = layer_geometry(layer)
    return MedicalImage(np.asarray(data), tuple(geo["spacing"]), tuple(geo["origin"]),
                        tuple(np.ravel(geo["direction"])), (layer.metadata or {}).get("source"))


def _is_kind(layer, kind: str) -> bool:
    """Whether ``layer`` is a napari ``Labels`` / ``Image`` / ... layer, by napari's public classes."""
    import napari.layers

    cls = getattr(napari.layers, kind.capitalize(), None)
    return cls is not None and isinstance(layer, cls)


def put_layer(viewer, kind: str, data, name: str, like=None, **kwargs):
    """Add a layer of ``kind`` on ``like``'s grid, or update the layer of that name and kind in place
    (``layer.data = ...``: removing and re-adding a layer costs napari a full garbage collection)."""
    geo = geometry_kwargs(like) if like is not None else {}
    if name in viewer.layers and _is_kind(viewer.layers[name], kind):
        layer = viewer.layers[name]
        attrs = {k: v for k, v in {**geo, **kwargs}.items() if k not in ("name", "shape_type")}
        if kind in ("points", "shapes"):  # one redraw for data and styles, not one per attribute
            with layer.events.blocker_all():
                _update_vector_layer(layer, kind, data, kwargs.get("shape_type", "rectangle"), attrs)
            layer.refresh()
            return layer
        layer.data = data
        for k, v in attrs.items():
            if not _same(getattr(layer, k, None), v):  # each change costs napari a refresh
                setattr(layer, k, v)
        return layer
    if name in viewer.layers:
        viewer.layers.remove(name)
    add = getattr(viewer, f"add_{kind}")
    return add(data, name=name, **geo, **kwargs)


def _same(a, b) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:  # noqa: BLE001 - not comparable: set it
        return False


def _update_vector_layer(layer, kind: str, data, shape_type: str, attrs) -> None:
    if kind == "shapes":  # every shape with its type, else napari's default type is used
        layer.data = [(d, shape_type) for d in data]
    else:
        layer.data = data
    for k, v in attrs.items():
        if not _same(getattr(layer, k, None), v):
            setattr(layer, k, v)


def current_index(viewer, layer, axis: int) -> int:
    """The layer's data index along spatial ``axis`` at the viewer's current position."""
    pos = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    n = spatial_shape(layer)[axis]
    return int(np.clip(np.round(pos[axis]), 0, n - 1))


# -- runs -------------------------------------------------------------------------------------
def check_run_folder(path, what: str) -> Path:
    """A run folder (a path or a FileEdit) holding a checkpoint, else an InputError naming it."""
    from ..train.run_model import checkpoint_path
    from ..train.checkpoint import CheckpointError

    if hasattr(path, "line_edit"):  # a FileEdit: its text, empty = not set
        path = path_value(path)
    if path is None or str(path) in ("", "."):
        raise InputError(f"choose the {what} run folder")
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{what} run folder {p} does not exist")
    try:
        checkpoint_path(p)
    except CheckpointError as exc:
        raise InputError(f"{what}: {exc}") from exc
    return p


def model_pair_inputs(viewer):
    """The three inputs every teacher-vs-student widget starts with: image layer, teacher run, student run."""
    from magicgui.widgets import FileEdit
    from napari.layers import Image

    return (layer_combo(viewer, Image, "image"), FileEdit(label="teacher run", mode="d"),
            FileEdit(label="student run", mode="d"))


def read_model_pair(image_combo, teacher_edit, student_edit, missing_image: str = "open an image layer first"):
    """(image layer, teacher run, student run) from those inputs, or an InputError naming what is wrong."""
    layer = image_combo.value
    if layer is None:
        raise InputError(missing_image)
    return layer, check_run_folder(teacher_edit, "teacher"), check_run_folder(student_edit, "student")


def start_worker(func: Callable, *args, returned: Optional[Callable] = None, yielded: Optional[Callable] = None,
                 errored: Optional[Callable] = None, finished: Optional[Callable] = None, start: bool = True,
                 **kwargs):
    """``create_worker`` with our callbacks; errors go to a notification (never into Qt)."""
    from napari.qt.threading import create_worker

    worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True, **kwargs)
    if returned:
        worker.returned.connect(returned)
    if yielded and hasattr(worker, "yielded"):
        worker.yielded.connect(yielded)
    worker.errored.connect(errored or (lambda exc: show_error(f"{type(exc).__name__}: {exc}")))
    if finished:
        worker.finished.connect(finished)
    if start:
        worker.start()
    return worker


def labels_colormap(colors: Dict[int, str]):
    """A DirectLabelColormap with the given colours (0 transparent, others transparent too)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **colors})


def path_value(edit) -> Optional[Path]:
    """A FileEdit's path, or None when the field is empty (magicgui reads '' as '.' or the working
    folder; an empty field means "not set", never the folder napari was started in)."""
    text = str(getattr(getattr(edit, "line_edit", None), "value", edit.value) or "").strip()
    if text in ("", "."):
        return None
    return Path(text).expanduser()


def write_layer_dataset(image_layer, labels_layer, folder: Path) -> Path:
    """Write an image layer and its labels layer as a one-case Decathlon-layout data set (geometry
    kept): ``data.from_arrays.write_array_dataset`` of the layers' arrays; its errors as InputError."""
    from ..data.from_arrays import ArrayDatasetError, write_array_dataset

    img = image_from_layer(image_layer)
    try:
        return write_array_dataset(img.array, np.asarray(labels_layer.data), Path(folder), geometry=img.geometry(),
                                   name=f"napari layers {image_layer.name} / {labels_layer.name}",
                                   image_name=image_layer.name, labels_name=labels_layer.name)
    except ArrayDatasetError as exc:
        raise InputError(str(exc)) from exc


def widget_opened() -> None:
    """Called by every napari-medkd panel when it opens: the one-time reader offer (``_reader_offer``)."""
    from .._reader_offer import offer_reader_preference

    offer_reader_preference()


# -- teachers from anywhere (issue 13 item 4) ----------------------------------------------------
def check_teacher(folder, file=None) -> Path:
    """The teacher to use: ``file`` if one is chosen (ONNX, TorchScript, a medkd .pt checkpoint), else
    ``folder`` (a medkd run or a MONAI bundle); an InputError saying what is wrong otherwise."""
    from ..teachers import TeacherError, teacher_kind

    folder = path_value(folder) if hasattr(folder, "line_edit") else folder  # FileEdits: empty = not set
    file = path_value(file) if hasattr(file, "line_edit") else file
    chosen = file if file is not None and str(file) not in ("", ".") else folder
    if chosen is None or str(chosen) in ("", "."):
        raise InputError("choose the teacher: a run or MONAI bundle folder, or a model file (ONNX, TorchScript)")
    path = Path(chosen).expanduser()
    if not path.exists():
        raise InputError(f"teacher {'file' if chosen is file else 'run folder'} {path} does not exist")
    try:
        teacher_kind(path)
    except TeacherError as exc:
        raise InputError(f"teacher: {exc}") from exc
    return path


def write_layer_scans(image_layer, folder: Path) -> Path:
    """The image layer alone as a plain folder of one scan (geometry kept): distilling needs no masks."""
    from ..io.image_io import write_image

    img = image_from_layer(image_layer)
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in image_layer.name) or "image"
    write_image(img.array, Path(folder) / f"{name}.nii.gz", reference=img)
    return Path(folder)
