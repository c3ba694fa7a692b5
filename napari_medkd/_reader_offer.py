"""A one-time offer to make napari-medkd napari's preferred reader for NIfTI / MHA / NRRD / DICOM.

napari's File > Open pre-selects its built-in reader for ``.nii.gz`` and friends, which cannot read
them. The first time napari-medkd reads a file or one of its panels opens, and only if napari-medkd is
not already the preferred reader, an information toast offers to change that (one button, napari's
own setting ``plugins.extension2reader``). The offer is remembered in
``$XDG_CONFIG_HOME/napari-medkd/reader_offer.json`` and never repeated.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

from .io.suffixes import VOLUME_EXTENSIONS

PATTERNS: List[str] = ["*" + s for s in VOLUME_EXTENSIONS] + ["*.dcm"]
MESSAGE = ("napari-medkd reads NIfTI, MetaImage, NRRD and DICOM with their spacing and orientation; "
           "napari's built-in reader cannot. Make napari-medkd the reader File > Open uses for them?")
BUTTON = "Use napari-medkd for medical images"


def state_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "napari-medkd" / "reader_offer.json"


def already_offered() -> bool:
    return state_path().is_file()


def remember_offer() -> None:
    path = state_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"offered": True}), encoding="utf-8")
    except OSError:
        pass  # a read-only config folder: the offer may come again, nothing breaks


def reader_is_preferred() -> bool:
    from napari.settings import get_settings

    mapping = get_settings().plugins.extension2reader
    return all(mapping.get(p) == "napari-medkd" for p in PATTERNS)


def prefer_medkd_reader(*_) -> None:
    """Make napari-medkd the preferred reader for :data:`PATTERNS` (napari's user setting)."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    plugins.extension2reader = {**plugins.extension2reader, **{p: "napari-medkd" for p in PATTERNS}}


def offer_reader_preference() -> bool:
    """Show the offer once (returns whether it was shown now)."""
    try:
        if already_offered() or reader_is_preferred():
            return False
        from napari.utils.notifications import Notification, NotificationSeverity, notification_manager
    except Exception:  # noqa: BLE001 - no napari settings (a script): nothing to offer
        return False
    remember_offer()
    notification_manager.dispatch(Notification(MESSAGE, severity=NotificationSeverity.INFO,
                                               actions=[(BUTTON, prefer_medkd_reader)]))
    return True
