"""Medical image input/output: NIfTI, MetaImage, NRRD, DICOM series and 2D bitmaps, with geometry."""
from .dicom import DicomSeries, list_dicom_series, read_dicom_series, write_dicom_series
from .suffixes import SUPPORTED_EXTENSIONS, WRITE_EXTENSIONS, is_supported
from .image import ImageReadError, ImageWriteError, MedicalImage
from .image_io import read_image, write_image, write_mask

__all__ = ["SUPPORTED_EXTENSIONS", "WRITE_EXTENSIONS", "DicomSeries", "ImageReadError", "ImageWriteError",
           "MedicalImage", "is_supported", "list_dicom_series", "read_dicom_series", "read_image",
           "write_dicom_series", "write_image", "write_mask"]
