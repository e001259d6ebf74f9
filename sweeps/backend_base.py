"""What every backend of :mod:`sweeps.backends` shares, and the ``local`` backend.

The ``Submit`` interface, the worker's entry point (:func:`_call_run`), how a run's
exception travels back to the driver as itself (:class:`_Failure`, :func:`_outcome`), and
the ``local`` backend, which runs in this process behind the same interface.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from jaxfl.errors import ConfigError

INSTALL = "uv sync --extra cluster"

# submit(fn, config_dict, specs, workdir) -> iterator of (spec, rows or exception)
Submit = Callable[[Callable, dict, Sequence[Any], str], Iterator[tuple[Any, Any]]]


def _require(module: str, backend: str):
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ConfigError("--backend", f"the {module!r} package installed for --backend={backend} "
                      f"(it is in the 'cluster' extra: {INSTALL})", backend) from None


# ---------------------------------------------------------------------------- results


class RemoteError(RuntimeError):
  """A run failed in a worker with an exception that could not travel back as itself."""


@dataclasses.dataclass
class _Failure:
  """A worker's exception in a form that survives pickling.

  Exceptions with their own ``__init__`` signature (``ConfigError(field, expected,
  got)``) do not unpickle through ``BaseException.__reduce__``, which replays ``args``
  into ``__init__``. This keeps the class, ``args`` and attributes and rebuilds the
  instance without calling ``__init__``.
  """

  cls: type | None
  args: tuple
  state: dict
  summary: str
  traceback: str

  @classmethod
  def capture(cls, e: BaseException) -> _Failure:
    summary = f"{type(e).__qualname__}: {e}"
    tb = "".join(traceback.format_exception(e))
    failure = cls(type(e), tuple(e.args), dict(getattr(e, "__dict__", {})), summary, tb)
    try:  # the driver unpickles it with the same code, so a round trip here is the test
      pickle.loads(pickle.dumps(failure)).rebuild()
    except Exception:  # noqa: BLE001 -- any failure means: send the text instead
      failure = cls(None, (), {}, summary, tb)
    return failure

  def rebuild(self) -> BaseException:
    if self.cls is None:
      return RemoteError(self.summary)
    e = self.cls.__new__(self.cls, *self.args)
    e.args = self.args
    e.__dict__.update(self.state)
    return e


def _call_run(fn: Callable, config_dict: dict, spec: Any, workdir: str) -> tuple:
  """The worker's entry point: ``("ok", rows)`` or ``("error", _Failure)``.

  Returning the failure as a value (rather than raising) keeps the exception's class
  and fields, which Ray's and submitit's own error wrappers reduce to text.
  """
  try:
    return "ok", fn(config_dict, spec, workdir)
  except Exception as e:  # noqa: BLE001 -- every run failure is reported to the driver
    return "error", _Failure.capture(e)


def _outcome(result: Any, where: str) -> Any:
  """The driver's view of ``_call_run``'s value: the rows, or the rebuilt exception."""
  status, value = result
  if status == "ok":
    return value
  e = value.rebuild()
  e.add_note(f"raised in {where}; the worker's traceback:\n{value.traceback.rstrip()}")
  return e


def _submit_here(fn: Callable, config_dict: dict, specs: Sequence[Any],
                 workdir: str) -> Iterator[tuple[Any, Any]]:
  """The ``local`` backend behind the same interface: runs in this process, in order."""
  for spec in specs:
    try:
      outcome = fn(config_dict, spec, workdir)
    except Exception as e:  # noqa: BLE001 -- reported like a remote failure
      outcome = e
    yield spec, outcome
