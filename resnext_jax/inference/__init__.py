"""Inference: the eval preprocessing spec, predictions on image files, and
exported programs (``jax.export``) with the runtime that serves them."""

from resnext_jax.inference.export import export_model, save_exported
from resnext_jax.inference.predict import predict_files
from resnext_jax.inference.preprocessing import Preprocessing

__all__ = ("Preprocessing", "export_model", "predict_files", "save_exported")
