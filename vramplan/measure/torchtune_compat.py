"""Let torchtune 0.6.1 import beside torchao 0.16, the oldest torchao that peft accepts.

peft (import_utils.is_torchao_available) refuses torchao < 0.16.0 whenever torchao is installed, and torchao 0.16
dropped the function-style names `int4_weight_only` and `int8_dynamic_activation_int4_weight`, which torchtune
0.6.1's torchtune/training/quantization.py still imports. In torchao 0.10-0.15 those names were aliases of
`Int4WeightOnlyConfig` and `Int8DynamicActivationInt4WeightConfig`; the aliases are restored here before torchtune
is imported. vramplan's traces never quantize to int4/int8, so nothing calls them.
"""

from __future__ import annotations


def restore_torchao_aliases() -> None:
    import torchao.quantization as quantization

    aliases = {
        "int4_weight_only": "Int4WeightOnlyConfig",
        "int8_dynamic_activation_int4_weight": "Int8DynamicActivationInt4WeightConfig",
    }
    for old, new in aliases.items():
        if not hasattr(quantization, old) and hasattr(quantization, new):
            setattr(quantization, old, getattr(quantization, new))


restore_torchao_aliases()
