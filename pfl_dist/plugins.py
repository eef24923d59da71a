"""Plug-in names: `package.module:Name` in a config resolves to a user's own class or factory.

Every extension point (algorithms, codecs, data kinds, models) takes its built-in names and a
plug-in name through the same path: the registry of that extension point asks this module to
parse the name, and either reads what it needs from the source without running it
(`class_declaration`) or imports it (`load`). Both fail with one `ConfigError` line naming the
config key, never with an import traceback.

Why read declarations from the source: the launcher and the sweep driver validate every config
before any process starts, and the sweep driver never imports torch. An algorithm module imports
torch, but the facts a config check needs (its `MethodInfo`: label, whether lambda enters it,
which keys it reads) are literals in its class body. `ast.literal_eval` reads them in a
millisecond without executing the module, for a built-in algorithm and a plug-in alike.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import keyword
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfl_dist.errors import ConfigError


@dataclass(frozen=True)
class PluginName:
    """`module:attr`: an importable dotted module path and an attribute of that module."""

    module: str
    attr: str

    def __str__(self) -> str:
        return f"{self.module}:{self.attr}"


def _is_identifier(part: str) -> bool:
    return part.isidentifier() and not keyword.iskeyword(part)


def is_plugin_name(text: str) -> bool:
    """True for `pkg.module:Name` (and `module:Name`): a dotted module path, one colon, a name."""
    module, sep, attr = text.partition(":")
    return bool(sep) and all(_is_identifier(p) for p in module.split(".")) and _is_identifier(attr)


def parse(text: str, *, key: str) -> PluginName:
    if not is_plugin_name(text):
        raise ConfigError(f"{key} {text!r} is not a plug-in name: write 'package.module:Name' (a module "
                          "Python can import, a colon, the class or function in it)")
    module, _, attr = text.partition(":")
    return PluginName(module, attr)


def load(name: PluginName, *, key: str) -> Any:
    """Import `name.module` and return `name.attr`; any failure is one ConfigError line.

    The current directory is importable, as for `python -m`; a module elsewhere needs its folder
    on PYTHONPATH."""
    try:
        module = importlib.import_module(name.module)
    except ModuleNotFoundError as err:
        where = " (is its folder on PYTHONPATH?)" if err.name == name.module.split(".")[0] else ""
        raise ConfigError(f"{key}={name}: cannot import {name.module}: {err}{where}") from None
    except Exception as err:  # the user's module raised while it was imported: one line, not its traceback
        raise ConfigError(f"{key}={name}: importing {name.module} failed: {type(err).__name__}: "
                          f"{_first_line(err)}") from None
    if not hasattr(module, name.attr):
        raise ConfigError(f"{key}={name}: module {name.module} has no {name.attr!r}")
    return getattr(module, name.attr)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "(no message)"


def source_path(module: str) -> Path | None:
    """The .py file of `module`, found without executing it (its parent packages are imported, as
    `importlib.util.find_spec` does); None when it has no source file or cannot be found."""
    if module in sys.modules:
        file = getattr(sys.modules[module], "__file__", None)
        return Path(file) if file and file.endswith(".py") else None
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def class_declaration(path: Path, attr: str) -> dict[str, ast.Call]:
    """{class name: the call assigned to `attr` in its body} for the classes of the source file
    `path` that assign `attr = SomeCall(...)` at class level, e.g. `info = MethodInfo(...)`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            value: ast.expr | None
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target, value = stmt.targets[0], stmt.value
            elif isinstance(stmt, ast.AnnAssign):
                target, value = stmt.target, stmt.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id == attr and isinstance(value, ast.Call):
                found[node.name] = value
    return found


def plugin_declaration(plugin: PluginName, attr: str, kind: str, *, where: str) -> ast.Call:
    """The `kind(...)` call a plug-in class assigns to `attr` in its body (`info = MethodInfo(...)`,
    `codec = CodecInfo(...)`), read from its source without importing it; ConfigError naming
    `where` (one line) when the module, its source or the class's declaration is missing."""
    path = source_path(plugin.module)
    if path is None:
        raise ConfigError(f"{where}: cannot find module {plugin.module} (is its folder on PYTHONPATH?)")
    try:
        declared = class_declaration(path, attr)
    except (OSError, SyntaxError, ValueError) as err:
        raise ConfigError(f"{where}: cannot read {path}: {type(err).__name__}: {err}") from None
    if plugin.attr not in declared:
        raise ConfigError(f"{where}: {path} has no class {plugin.attr} declaring '{attr} = {kind}(...)' in its body")
    return declared[plugin.attr]


def literal_call(call: ast.Call, *, where: str) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments of `call`, each a Python literal; ValueError naming
    `where` otherwise (a declaration that computes its values cannot be read without running)."""
    try:
        args = [ast.literal_eval(arg) for arg in call.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
    except ValueError:
        raise ValueError(f"{where}: the declaration must use literal values only") from None
    if any(kw.arg is None for kw in call.keywords):
        raise ValueError(f"{where}: the declaration must not use **kwargs")
    return args, kwargs
