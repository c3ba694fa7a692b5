"""Knowledge distillation: terms (``terms/``), method presets (``methods``) and the training task."""


def load_all() -> None:
    """Fill the term and method registries now (they also fill themselves on first use)."""
    from ..registry import METHODS, TERMS

    TERMS.load()
    METHODS.load()
