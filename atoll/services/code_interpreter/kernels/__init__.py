"""Kernels: one per context; Python (ipykernel via jupyter_client) and TypeScript (Node.js)."""
