import os
import sys

# Make `aarm_sandbox` importable when pytest is run without PYTHONPATH / `python -m`.
_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
