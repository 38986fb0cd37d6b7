"""Build script: the metadata lives in setup.cfg; this adds the optional compiled word search.

``pykd_ext._wordscan`` makes the many-value pointer search several times faster. It is optional: where
no C compiler is available the build goes on without it and leakhunt searches with numpy.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("pykd_ext._wordscan", ["pykd_ext/_wordscan.c"], optional=True)])
