# The cffi extension is declared here: setuptools reads cffi_modules only from setup().
from setuptools import setup

setup(cffi_modules=["spfshm/_ffi_build.py:ffibuilder"])
