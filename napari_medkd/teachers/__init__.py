"""Teachers from anywhere: a medkd run folder, an ONNX file, a TorchScript file, a MONAI bundle folder or a
torch module given in Python, behind one :class:`~.base.Teacher` interface (logits, its preprocessing and
classes, feature taps where the format allows), each from one adapter module registered in
``registry.TEACHERS``; ``open_teacher`` picks the adapter by what the path is. ``cache.py`` keeps a
teacher's outputs on disk so a slow teacher runs once per scan."""
from .base import Teacher, TeacherError
from .resolve import open_teacher, teacher_kind
from .torch_module import register_module

__all__ = ["Teacher", "TeacherError", "open_teacher", "teacher_kind", "register_module"]
