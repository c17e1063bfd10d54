"""Studies that are not sweeps of training runs, as plain functions: the coordinate check
(``coord_check``) and the finite-width fluctuations of the NTK (``fluctuations``).

May import models, kernels, data, measures, records and analysis (figures, fits); the
command lines and :mod:`ntk_lab.study` run them from validated settings.
"""
