"""napari-medkd: knowledge distillation for medical image segmentation."""

__version__ = "0.1.0"
