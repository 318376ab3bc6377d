"""The code interpreter service that runs inside a sandbox (leap0 wire, spec agent-services.md §1).

Started in the template as ``/opt/atoll/venv/bin/python -m code_interpreter`` with
``PYTHONPATH=/opt/atoll``: it must import nothing from ``atoll`` (relative imports only).
Python contexts are ipykernel kernels driven by jupyter_client; TypeScript/JavaScript contexts
are Node.js processes running ``ts_runner.js``.
"""
