"""setuptools shim: the native extension is built by cffi.

All metadata lives in pyproject.toml; only ``cffi_modules`` (a keyword added
by cffi's setuptools plugin, not expressible in pyproject.toml) is here.
"""

from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
