"""The exporter (``pip install 'imgbeddings[export]'``): Hugging Face CLIP/SigLIP checkpoints to
verified ONNX models with model cards. Importing this package does not import torch; calling
:func:`export_model` does."""

from .exporter import ExportResult, export_model

__all__ = ["ExportResult", "export_model"]
