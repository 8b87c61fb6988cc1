"""The training program: ``python -m train --config configs/X.py``.

Modules: ``config_validation`` (checks a config), ``optim`` (schedules,
optimizer, weight-decay mask), ``steps`` (pure train/eval steps and their
data-parallel form), ``data`` (input pipelines), ``checkpoint`` (save,
resume, load for inference), ``metrics_io`` (TensorBoard and JSON lines),
``loop`` (``train_and_evaluate``), ``plot`` (curves to PNG).
"""
