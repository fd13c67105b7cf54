import os
import sys

from setuptools import Extension, setup

sys.path.insert(0, "csrc")
from ffi_build import SOURCES, flags  # noqa: E402  (the one list of C sources and flags)

hot = Extension(
    "shmguard._hot",
    sources=["csrc/hot.c", "csrc/hot_handles.c", "csrc/hot_keyed.c", "csrc/hot_bulkhead.c",
             "csrc/hot_service.c"] + [os.path.join("csrc", s) for s in SOURCES],
    include_dirs=["csrc"],
    extra_compile_args=flags(),
    extra_link_args=os.environ.get("SHMGUARD_LDFLAGS", "").split(),
)

setup(cffi_modules=["csrc/ffi_build.py:ffibuilder"], ext_modules=[hot])
