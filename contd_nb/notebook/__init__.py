"""Durable notebook cells: the IPython extension (``%load_ext contd_nb``).

``magics`` (the magic commands), ``session`` (a notebook run), ``state`` (pure decisions),
``values`` (variables as content-addressed blobs), ``capture`` (outputs), ``cell_analysis``
(which names a cell writes and reads).
"""

from __future__ import annotations

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ip) -> None:
    from .magics import ContdMagics, rewrite_async_step_cells

    unload_ipython_extension(ip)  # %reload_ext: never registered twice
    ip.register_magics(ContdMagics)
    ip.input_transformers_cleanup.append(rewrite_async_step_cells)


def unload_ipython_extension(ip) -> None:
    from .magics import ContdMagics, rewrite_async_step_cells

    manager = ip.magics_manager
    for kind in ("line", "cell"):
        table = manager.magics[kind]
        for name in [n for n, fn in table.items()
                     if isinstance(getattr(fn, "__self__", None), ContdMagics)]:
            del table[name]
    manager.registry.pop(ContdMagics.__name__, None)
    ip.input_transformers_cleanup[:] = [
        t for t in ip.input_transformers_cleanup
        if getattr(t, "__name__", "") != rewrite_async_step_cells.__name__]
