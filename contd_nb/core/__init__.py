"""The engine: runs workflows, journals steps, holds leases, retries, times out, snapshots.

Imports nothing from IPython, ipywidgets, pandas or prometheus_client: metrics and views
subscribe to engine events (``ExecutionEngine.add_listener``) or read the journal.
"""
