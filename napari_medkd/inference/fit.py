"""Does a model fit an image? A guard run before any prediction a user asks for in napari.

A model carries what it was trained on in its card (``card.py``): spatial dimensions, input channels
and the preprocessing's modality. :func:`fit_problems` lists, in words a clinician can act on, why
the model cannot be used on the image (a 1-channel 3D MR model on an RGB fundus photo: three
reasons); :func:`check_fits` raises :class:`ModelDoesNotFit` with them.
"""
from __future__ import annotations

from typing import List

from ..card import ModelCard

VOLUME_MODALITIES = ("CT", "MR")


class ModelDoesNotFit(ValueError):
    """The model cannot segment this image; the message says why."""


def _modality(card: ModelCard) -> str:
    return str((card.preprocess or {}).get("modality") or "grey")


def _expected_channels(card: ModelCard) -> int:
    pre = card.preprocess or {}
    return 3 if _modality(card) == "RGB" and pre.get("rgb_mode", "green") == "rgb" else 1


def fit_problems(card: ModelCard, img, what: str = "the model") -> List[str]:
    """Why ``card``'s model cannot segment ``img`` (a ``MedicalImage``); empty when it can."""
    problems = []
    nsp, colour = img.ndim_spatial, bool(getattr(img, "is_rgb", False))
    dims = card.model_dims
    if dims == 3 and nsp == 2:
        problems.append(f"{what} is a 3D model and needs a volume; the image is 2D")
    modality = _modality(card)
    if colour and modality in VOLUME_MODALITIES:
        problems.append(f"{what} was trained on {modality} images; the image is an RGB colour picture")
    if modality == "RGB" and not colour:
        problems.append(f"{what} was trained on RGB colour pictures; the image has one channel "
                        f"({'a volume' if nsp == 3 else 'grey'})")
    channels = getattr(img, "channels", 1)
    if channels not in (1, 3, 4):
        problems.append(f"the image has {channels} channels per pixel; {what} reads "
                        f"{_expected_channels(card)} ({modality})")
    if int(card.in_channels) != _expected_channels(card):
        problems.append(f"{what} takes {card.in_channels} input channel(s) but its preprocessing "
                        f"({modality}) gives {_expected_channels(card)}")
    return problems


def check_fits(card: ModelCard, img, what: str = "the model") -> None:
    problems = fit_problems(card, img, what)
    if problems:
        raise ModelDoesNotFit(f"{what} does not fit this image: " + "; ".join(problems))
