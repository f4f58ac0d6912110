# Shim so that older pip and `python setup.py` keep working; metadata lives in setup.cfg.
from setuptools import setup

setup()
