"""One registry for algorithms: the torch-free side (pfl_dist/methods.py `METHODS`, read by AST
from the class bodies of pfl_dist/algorithms/) and the torch side (pfl_dist/algorithms
`ALGORITHMS`, the imported classes) agree on every entry, and a built-in is found from its
module alone, with no list to extend."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import pfl_dist.algorithms
from pfl_dist.algorithms import ALGORITHMS, Algorithm, algorithm_class
from pfl_dist.errors import ConfigError
from pfl_dist.methods import BUILTIN_CLASSES, METHODS, MethodInfo, method_info, read_builtins
from pfl_dist.plugins import PluginName

REPO = Path(__file__).resolve().parents[2]


def classes_declaring_info() -> dict[str, type[Algorithm]]:
    """Found by importing, independently of the AST read: every Algorithm subclass defined in a
    module of pfl_dist/algorithms/ with its own `info`, in module-name then definition order."""
    found: dict[str, type[Algorithm]] = {}
    for module_info in sorted(pkgutil.iter_modules(pfl_dist.algorithms.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"pfl_dist.algorithms.{module_info.name}")
        for _, cls in vars(module).items():
            if (inspect.isclass(cls) and issubclass(cls, Algorithm) and cls.__module__ == module.__name__
                    and "info" in vars(cls)):
                assert cls.info.name not in found, cls.info.name
                found[cls.info.name] = cls
    return found


def test_the_torch_side_and_the_torch_free_side_agree_on_every_builtin() -> None:
    imported = classes_declaring_info()
    assert list(imported) == list(ALGORITHMS) == list(METHODS) == list(BUILTIN_CLASSES)
    assert len(METHODS) >= 12
    for name, cls in imported.items():
        assert ALGORITHMS[name] is cls and algorithm_class(name) is cls
        assert cls.name == name and cls.info == METHODS[name] == method_info(name)
        assert BUILTIN_CLASSES[name] == PluginName(cls.__module__, cls.__qualname__)


def test_a_shared_base_without_its_own_info_is_not_a_method() -> None:
    from pfl_dist.algorithms.classic import FedAvg, ProxLocalUpdate

    assert "info" not in vars(ProxLocalUpdate) and ProxLocalUpdate not in ALGORITHMS.values()

    class Tweaked(FedAvg):  # inherits FedAvg's info: still FedAvg's name, not a second entry
        pass

    assert Tweaked.name == "fedavg" and list(ALGORITHMS).count("fedavg") == 1


def test_the_torch_free_side_imports_no_torch() -> None:
    code = ("import sys; from pfl_dist.methods import METHODS; "
            "print(len(METHODS), 'torch' in sys.modules, 'pfl_dist.algorithms' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(METHODS)), "False", "False"]


# --- a built-in is its module: read_builtins on a scratch package ----------------------------------

NEW_MODULE = '''
from pfl_dist.algorithms.classic import FedAvg
from pfl_dist.methods import MethodInfo


class Helper(FedAvg):
    """A shared base: no info of its own."""


class Fancy(Helper):
    info = MethodInfo("fancy", "Fancy", reads=("algorithm.beta",), colors="#123456", marker="8")
'''


def scratch_package(tmp_path: Path, **modules: str) -> Path:
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(text)
    (tmp_path / "__init__.py").write_text("CLASSES = ('not read: __init__ declares no method',)\n")
    return tmp_path


def test_a_class_declaring_info_in_a_module_of_the_package_is_a_builtin(tmp_path: Path) -> None:
    directory = scratch_package(tmp_path, zz_new=NEW_MODULE, aa_first='''
class First:
    info = MethodInfo("first", "First", message="state")
''')
    methods, where = read_builtins(directory)
    assert list(methods) == ["first", "fancy"]  # module name order, then position
    assert methods["fancy"] == MethodInfo("fancy", "Fancy", reads=("algorithm.beta",), colors="#123456", marker="8")
    assert where == {"first": PluginName("pfl_dist.algorithms.aa_first", "First"),
                     "fancy": PluginName("pfl_dist.algorithms.zz_new", "Fancy")}


@pytest.mark.parametrize(("body", "message"), [
    ('info = MethodInfo("fancy", "Fancy", reads=KEYS)',
     "built-in algorithm pfl_dist.algorithms.bad:Bad: the declaration must use literal values only"),
    ('info = MethodInfo("fancy", "Fancy", message="gradient")',
     "built-in algorithm pfl_dist.algorithms.bad:Bad: its info = MethodInfo(...) is not valid: gradient"),
    ('info = MethodInfo("my:fancy", "Fancy")',
     "built-in algorithm pfl_dist.algorithms.bad:Bad: its name 'my:fancy' must be lower-case letters, digits and "
     "'_' (a name with ':' is a plug-in's)"),
    ('info = MethodInfo("fancy", "Fancy 2")',
     "built-in algorithm pfl_dist.algorithms.bad:Bad: name 'fancy' is already pfl_dist.algorithms.aa:Fancy's"),
])
def test_a_bad_builtin_declaration_is_one_line_naming_its_class(tmp_path: Path, body: str, message: str) -> None:
    directory = scratch_package(tmp_path, aa='class Fancy:\n    info = MethodInfo("fancy", "Fancy")\n',
                                bad=f"class Bad:\n    {body}\n")
    with pytest.raises(ConfigError) as err:
        read_builtins(directory)
    assert str(err.value) == message
