"""The training program: ``python -m train --config configs/X.py``, run
from the repository's root (it is not installed with the library).

``__main__`` (flags, process-wide effects, exit status) calls
``loop.train_and_evaluate``, which uses one module per concern:
``config_validation`` (checks a config), ``data`` (input pipelines),
``model_factory`` (the model a config names), ``optim`` (schedules,
optimizer), ``steps`` (pure train/eval steps), ``mesh`` (devices,
shardings, the data-parallel wrapper), ``checkpoint`` (save, resume; with
``checkpoint_integrity``), ``workdir`` (the workdir's file layout),
``bundle`` (the model bundle for the library), ``metrics_io``,
``nonfinite``, ``preemption``, ``distributed``; ``plot`` draws curves.
"""
