"""sidekick: announce Docker containers in etcd on a lease.

Importing the package first imports the agent's libraries (structlog, requests, docker-py,
etcd3gw) without three things the agent never uses, each of which would cost every node's
agent memory and start-up time (tests/test_imports.py checks they stay out):

- rich (typer installs it): structlog draws tracebacks with it when it can import it.
  Without it structlog draws plain ones; the agent's one-line logs never draw any.
- asyncio: structlog imports it for its async loggers, and wrapt (under etcd3gw) for its
  coroutine locks; a threaded agent calls neither. They get a stand-in that imports asyncio
  on first use.
- a character-set detector (charset_normalizer or chardet): requests guesses a
  body's charset with it only when the answer names none and JSON decoding cannot tell. etcd
  and Docker answer JSON in UTF-8; requests, finding no detector, takes UTF-8.

Each is left out only of the libraries imported here: a later `import rich`, `import
asyncio` or `import charset_normalizer` gets the real module (typer's --help still draws with
rich). Runs on: the main thread, at import.
"""

import sys
import types
import warnings

__version__ = "0.1.0"


class _AsyncioOnFirstUse(types.ModuleType):
    """Stands in for asyncio inside structlog and wrapt: any public attribute imports the real
    module. A dunder (`__path__`, `__wrapped__`) is not there: importing a submodule through
    the stand-in fails loudly rather than load a second copy of it."""

    def __getattr__(self, name: str) -> object:
        import importlib  # noqa: PLC0415

        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if sys.modules.get("asyncio") is self:
            del sys.modules["asyncio"]
        return getattr(importlib.import_module("asyncio"), name)


def _import_without(stand_ins: dict[str, object], modules: tuple[str, ...]) -> None:
    """Import `modules` while each name of `stand_ins` not yet imported is replaced in
    sys.modules (None: the import system's "not installed"); put back afterwards."""
    stand_ins = {name: module for name, module in stand_ins.items() if name not in sys.modules}
    sys.modules.update(stand_ins)  # type: ignore[arg-type]
    try:
        with warnings.catch_warnings():
            # requests warns that it found no detector; that is what is meant here
            warnings.filterwarnings("ignore", message="Unable to find acceptable character")
            for module in modules:
                __import__(module)
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


# the third-party modules the agent imports, here once, before any of sidekick's own
_import_without(
    {
        "rich": None,
        "asyncio": _AsyncioOnFirstUse("asyncio"),
        "charset_normalizer": None,
        "chardet": None,
    },
    ("structlog", "requests", "docker", "etcd3gw.client"),
)
