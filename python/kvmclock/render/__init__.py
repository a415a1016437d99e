"""Renderers of simulation runs and trace summaries for the command line.

``text``: the side-by-side summary and the key-moments timeline of ``kvmclock simulate``;
``perfetto``: Chrome/Perfetto trace-event JSON; ``plot``: a PNG (matplotlib, optional extra
``plot``); ``ftrace``: the ``--trace`` text. All take the run dicts of
``kvmclock.sim.run_scenario`` (the run dict of its JSON output).
"""
