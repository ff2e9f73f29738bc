"""Helpers and factories the tests share, imported as ``support.*``.

pyproject's ``pythonpath`` puts ``tests/`` on the path of the test process, and ``process_env`` in
``tests/conftest.py`` does the same for worker subprocesses (they load ``support.sample_definitions``).
Test modules import from here, never from each other.
"""
