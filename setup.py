"""Only the native host-call fast path (everything else is in pyproject.toml): a C extension that
setuptools builds at install time, `pip install -e .` included."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("bridge.opawasm._hostfast", sources=["bridge/opawasm/native/hostfast.c"],
                             extra_compile_args=["-O2"], optional=True)])
