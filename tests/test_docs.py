"""The runnable examples in the docstrings of the public building blocks run and hold."""

import doctest
import importlib

import pytest

MODULES = ["jaxfl.planners.power", "jaxfl.transforms.aircomp", "jaxfl.transforms._aggregate",
           "jaxfl.sim.channel", "jaxfl.transforms.lora_aggregate",
           "jaxfl.data.corpus", "jaxfl.peft.layerdrop",
           "jaxfl.models.quant", "jaxfl.models.transformer", "jaxfl.models.pretrained",
           "jaxfl.models.lora", "jaxfl.peft.expand", "jaxfl.peft.memory",
           "jaxfl.algorithms.fedpeft", "jaxfl.algorithms.diloco",
           "jaxfl.transforms.delay_comp",
           "jaxfl.planners.fragments",
           "jaxfl.algorithms.streaming_diloco", "sweeps.experiments.cocodc",
           "shapes.data", "shapes.ssm", "shapes.tokens", "shapes.metrics", "shapes.diffusion",
           "shapes.baselines"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"{name} has no examples"
  assert result.failed == 0
