"""Which methods a teacher can serve: the teacher features (taps) a method's terms read, and whether they
run the teacher model's own parts (GKD's terms call ``teacher.encode``/``decode``).

A teacher from a run folder gives everything; an ONNX file gives the internal tensors chosen as extra
outputs; a TorchScript file gives logits only. :func:`refusal` words the refusal of a method the teacher
cannot serve, naming the methods it can.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from ..registry import METHODS, TERMS


def spec_taps(name: str, params: Dict[str, Any]) -> Tuple[str, ...]:
    """The taps a term with these parameters reads (its ``taps``/``tap`` parameter, else its class's)."""
    if params.get("taps"):
        return tuple(params["taps"])
    if params.get("tap"):
        return (params["tap"],)
    return tuple(getattr(TERMS.get(name), "TAPS", ("logits",)))


def term_pairs(method: Optional[str] = None, terms: Optional[List[Dict[str, Any]]] = None
               ) -> List[Tuple[str, Dict[str, Any]]]:
    """``(term name, params)`` of ``terms`` (a ``distill.terms`` list), else of the preset ``method``."""
    from . import load_all

    load_all()
    if terms:
        return [(t["name"], dict(t.get("params") or {})) for t in terms]
    return [(name, dict(params or {})) for name, _, params in METHODS.meta(method or "none").get("terms", [])]


def _runs_teacher_model(name: str) -> bool:
    from .terms.gkd_msan import GKDTerm

    if name not in TERMS:  # a preset records its terms' labels (cwd_feat is a cwd term); such a one is no GKD term
        return False
    cls = TERMS.get(name)
    return isinstance(cls, type) and issubclass(cls, GKDTerm)


def method_needs(method: Optional[str] = None, terms: Optional[List[Dict[str, Any]]] = None) -> Tuple[Set[str], bool]:
    """(teacher taps read besides ``logits``, whether a term runs the teacher's ``encode``/``decode``)."""
    pairs = term_pairs(method, terms)
    taps = {t for n, p in pairs for t in spec_taps(n, p)} - {"logits"}
    return taps, any(_runs_teacher_model(n) for n, _ in pairs)


def fitting_methods(taps: Iterable[str], has_parts: bool) -> List[str]:
    """The method presets a teacher with these taps (and model parts, or not) can serve."""
    have = set(taps)
    out = []
    for name in METHODS.names():
        if name == "none":
            continue
        need, parts = method_needs(name)
        if need <= have and (has_parts or not parts):
            out.append(name)
    return out


def refusal(method: Optional[str], terms: Optional[List[Dict[str, Any]]], taps: Iterable[str], has_parts: bool,
            who: str) -> Optional[str]:
    """None when the teacher (``who``, its taps and parts) can serve the method, else why not and what can."""
    need, parts = method_needs(method, terms)
    have = set(taps)
    missing = sorted(need - have)
    if not missing and (has_parts or not parts):
        return None
    what = f"method '{method}'" if not terms else "the configured distill.terms"
    why = (f"needs the teacher features {missing}, but {who} gives {sorted(have) or 'only its outputs (logits)'}"
           if missing else f"runs the teacher's encoder and decoder (encode/decode), which {who} does not expose")
    can = ", ".join(fitting_methods(have, has_parts)) or "none"
    return (f"{what} {why}. Methods that can run with this teacher: {can}. An ONNX teacher can give internal "
            "tensors as features (--teacher-taps NAME=TENSOR; `medkd teacher-info FILE` suggests them)")
