"""jaxfl: federated and distributed learning as pure-functional JAX building blocks.

Start with :mod:`jaxfl.runtime` (the client axis), :mod:`jaxfl.algorithms` (FedAvg and
the FedOpt family), :mod:`jaxfl.transforms` (aggregators as optax transforms) and
:mod:`jaxfl.data` (embedded data and non-IID partitioners).
"""

__version__ = "0.1.0"
