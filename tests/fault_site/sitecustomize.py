"""Imported by Python at start-up in test subprocesses (conftest.cli puts this folder on PYTHONPATH)."""

import os
import sys

if os.environ.get("OPTREPRO_TEST_FAULTS") == "1":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fault_hooks

    fault_hooks.install()
