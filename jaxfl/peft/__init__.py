"""Parameter-efficient fine-tuning: what trains, and what its backward pass stores.

* :mod:`~jaxfl.models.lora` -- the LoRA layer and trainability as labels on parameter paths
  (LoRA, LoRA depth, FFA-LoRA, full fine-tuning), split/combine of trainable and frozen
  trees (re-exported here as ``jaxfl.peft.lora``);
* :mod:`~jaxfl.models.quant` -- int8 (or 4/2-bit) storage of saved activations (re-exported
  as ``jaxfl.peft.quant``); both live with the models, whose forward pass uses them;
* :mod:`~jaxfl.peft.layerdrop` -- stochastic layer dropout (rates, keep masks, block labels;
  the optimizer wrapper that leaves dropped layers untouched is
  :func:`jaxfl.transforms.skip_inactive`);
* :mod:`~jaxfl.peft.expand` -- identity-initialised block expansion;
* :mod:`~jaxfl.peft.memory` -- bytes of trainable params, optimizer state and saved
  activations, measured from JAX (and, cached, of every LoRA depth with int8-stored blocks).
"""

from jaxfl.models import lora, quant
from jaxfl.models.quant import (
                                ResidualBytes,
                                dequantize_rows,
                                quantize_rows,
                                quantized_remat,
                                saved_residual_bytes,
)
from jaxfl.peft import expand, layerdrop, memory
from jaxfl.peft.layerdrop import drop_rates, layer_index_tree, sample_keep
from jaxfl.peft.memory import Footprint, depth_footprint, footprint

__all__ = ["expand", "layerdrop", "lora", "memory", "quant"]
__all__ += ["ResidualBytes", "dequantize_rows", "quantize_rows", "quantized_remat",
            "saved_residual_bytes"]
__all__ += ["drop_rates", "layer_index_tree", "sample_keep"]
__all__ += ["Footprint", "depth_footprint", "footprint"]
