"""Data: the :class:`Dataset` type and :class:`DataError` (``dataset``), the synthetic tasks
and user files (``tasks``: circle, sphere_teacher, digits, file), the image data sets
(``images``: MNIST, Fashion-MNIST, CIFAR-10) with their file formats (``idx``, ``cifar``),
their files and downloads (``image_files``), and files in those formats filled with generated
images for tests (``generated_files``).

May import models (the sphere teacher is an MLP); nothing above.
"""

from ntk_lab.data.dataset import DataError, Dataset
from ntk_lab.data.tasks import (
    DATASETS, circle, digits, from_file, load_arrays, make_dataset, sphere_teacher,
)

__all__ = ["DataError", "Dataset", "DATASETS", "circle", "digits", "from_file", "load_arrays",
           "make_dataset", "sphere_teacher"]
