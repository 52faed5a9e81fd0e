import importlib
import sys
import textwrap
import threading

import pytest

from maskface.models.deferred_import import import_without_package_init


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A package whose __init__ counts its runs, imports a sibling and takes a while (as
    facenet_pytorch's imports MTCNN), beside the one module we want."""
    name = f"toy_pkg_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    (root / "models").mkdir(parents=True)
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "network.py").write_text("from .helpers import scale\nclass Network:\n    factor = scale\n")
    (root / "models" / "helpers.py").write_text("scale = 2\n")
    (root / "models" / "detector.py").write_text("class Detector:\n    pass\n")
    (root / "__init__.py").write_text(textwrap.dedent("""
        import time
        import builtins
        builtins.toy_init_runs = getattr(builtins, "toy_init_runs", 0) + 1
        from .models.network import Network
        time.sleep(0.2)
        from .models.detector import Detector
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import builtins

    monkeypatch.setattr(builtins, "toy_init_runs", 0, raising=False)
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def test_the_module_comes_without_the_package_init_and_the_package_stays_whole(toy_package):
    import builtins

    network = import_without_package_init(f"{toy_package}.models.network")
    assert network.Network.factor == 2
    assert builtins.toy_init_runs == 0 and f"{toy_package}.models.detector" not in sys.modules
    package = importlib.import_module(toy_package)
    assert builtins.toy_init_runs == 0  # importing the package name alone still runs nothing
    assert package.Detector.__name__ == "Detector" and builtins.toy_init_runs == 1
    assert package.Network is network.Network  # the same class, not a second copy
    assert package.models.network is network and package.models.detector.Detector is package.Detector
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        package.nothing
    assert builtins.toy_init_runs == 1


def test_threads_that_look_up_a_name_all_wait_for_one_init(toy_package):
    import builtins

    import_without_package_init(f"{toy_package}.models.network")
    got, errors = [], []

    def lookup():
        try:
            # What `from toy_pkg import Detector` runs.
            got.append(__import__(toy_package, fromlist=["Detector"]).Detector)
        except Exception as error:  # collected: the assertion below names it
            errors.append(error)

    threads = [threading.Thread(target=lookup) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(got) == 6 and len(set(got)) == 1
    assert builtins.toy_init_runs == 1


def test_an_init_that_fails_fails_like_an_import(toy_package, tmp_path):
    (tmp_path / toy_package / "__init__.py").write_text("raise RuntimeError('broken package')\n")
    import_without_package_init(f"{toy_package}.models.network")
    with pytest.raises(RuntimeError, match="broken package"):
        importlib.import_module(toy_package).anything
    assert toy_package not in sys.modules


def test_an_already_imported_package_is_used_as_it_is(toy_package):
    import builtins

    package = importlib.import_module(toy_package)
    assert builtins.toy_init_runs == 1
    assert import_without_package_init(f"{toy_package}.models.network").Network is package.Network
    assert builtins.toy_init_runs == 1
