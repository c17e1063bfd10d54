"""Image classification data sets read from their standard distribution files.

- :mod:`~ntk_lab.datasets.idx` — the IDX format of MNIST and Fashion-MNIST (gzip or not).
- :mod:`~ntk_lab.datasets.cifar` — CIFAR-10's binary version (never the pickled one).
- :mod:`~ntk_lab.datasets.files` — where the files live (``data.root``, torchvision's layout),
  their official hashes, and the pooch download.
- :mod:`~ntk_lab.datasets.images` — classes, stratified subsets, per-channel standardization
  and targets, giving a :class:`ntk_lab.data.Dataset`.

Every malformed input raises :class:`ntk_lab.data.DataError` with one line naming the file.
``ntk_lab.data`` imports this package only when an image data set is asked for.
"""
