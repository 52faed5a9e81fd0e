"""Import one module of a package without running the package's ``__init__`` first.

facenet-pytorch's ``__init__`` imports MTCNN and with it torchvision, ``torch._dynamo`` and
cv2: 1.1 s of a 7 s ``maskface embed`` on 1,000 faces, none of which InceptionResnetV1 needs.
The package is registered unexecuted; its real ``__init__`` runs on the first name looked up
in it that it does not have yet (a module ``__getattr__``, PEP 562), so ``from facenet_pytorch
import MTCNN`` later, here or in the user's code, in any thread, gets the whole package with
the very classes already imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types


class _InitOnFirstLookup:
    """The unexecuted package's ``__getattr__``: runs its ``__init__`` once, under a lock.

    Other threads wait for the whole package. The thread running ``__init__`` sees a
    partly initialised module, as a normal import shows it.
    """

    def __init__(self, package: types.ModuleType, spec: importlib.machinery.ModuleSpec):
        self.package, self.spec = package, spec
        self.lock = threading.RLock()
        self.running = False

    def __call__(self, attribute: str):
        package = self.package
        with self.lock:
            if package.__dict__.get("__getattr__") is self and not self.running:
                self.running = True
                try:
                    self.spec.loader.exec_module(package)
                except BaseException:
                    sys.modules.pop(package.__name__, None)  # as a failed import leaves it
                    raise
                finally:
                    self.running = False
                    package.__dict__.pop("__getattr__", None)
        try:
            return package.__dict__[attribute]
        except KeyError:
            raise AttributeError(f"module {package.__name__!r} has no attribute {attribute!r}") from None


def import_without_package_init(name: str) -> types.ModuleType:
    """``importlib.import_module(name)``, deferring the top-level package's ``__init__``
    (unless the package is imported already) until a name is looked up in the package."""
    package_name = name.partition(".")[0]
    if name in sys.modules or package_name in sys.modules:
        return importlib.import_module(name)
    spec = importlib.util.find_spec(package_name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return importlib.import_module(name)  # not a package on disk: the normal import says why
    package = importlib.util.module_from_spec(spec)
    package.__getattr__ = _InitOnFirstLookup(package, spec)
    sys.modules[package_name] = package
    try:
        return importlib.import_module(name)
    except BaseException:
        sys.modules.pop(package_name, None)
        raise
