"""Model registry front door: ``create_model(name, ...)``, ``list_models()``, ``get_spec(name)``.

Importing this package registers every architecture (the modules below register on import).
"""

from pneumolab.models import study_nets, torchvision_models  # noqa: F401  (registration side effects)
from pneumolab.models.registry import (
    ModelSpec,
    count_flops,
    create_model,
    get_spec,
    list_models,
    model_table,
    register_model,
)

__all__ = ["ModelSpec", "count_flops", "create_model", "get_spec", "list_models", "model_table", "register_model"]
