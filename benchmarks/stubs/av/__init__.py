"""Stand-in for PyAV on the GPU benchmark machine, whose upload limit leaves no room for the real wheel (35 MB).

ComfyUI's ``comfy_api.latest`` imports ``av`` (and ``av.container`` ...) for its video and audio types; the
benchmarks never use them. ``benchmarks/gpu_run.sh`` puts this folder on ``PYTHONPATH`` only where ``import av``
fails. Every submodule imports, and every attribute is a placeholder class, so module-level names resolve; using
one for real raises.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(type):
    def __getattr__(cls, name):  # enum members and nested names used at import time (ColorTrc.ARIB_STD_B67, ...)
        if name.startswith("__"):
            raise AttributeError(name)
        return cls


class _Unavailable(metaclass=_Placeholder):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("PyAV is not installed on this machine (benchmarks/stubs/av is a stand-in).")


def _placeholder(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable


class _StubSubmodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__getattr__ = _placeholder
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


__getattr__ = _placeholder
sys.meta_path.append(_StubSubmodules())
