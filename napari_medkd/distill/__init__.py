"""Knowledge distillation: terms (``terms/``), method presets (``methods``) and the training task."""


def load_all() -> None:
    """Import every term and method module so the registries are filled."""
    from . import methods, terms  # noqa: F401
