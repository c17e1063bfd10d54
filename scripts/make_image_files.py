"""Write files in the exact official formats of MNIST, Fashion-MNIST or CIFAR-10, filled with
GENERATED images (ntk_lab.data.generated_files), for machines that cannot download the real ones.

    python scripts/make_image_files.py --root /tmp/generated cifar10     # 6 × 30,730,000 bytes
    python scripts/make_image_files.py --root /tmp/generated mnist       # the four .gz IDX files

The files have the official names, layouts, record counts and (for CIFAR-10) byte sizes, so
ntk_lab reads them exactly as it reads the real files (data.root=/tmp/generated). They are NOT
the real data sets: every class is a smooth random template plus noise. Results obtained on
them must say so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ntk_lab.data import cifar, generated_files as synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["mnist", "fashion_mnist", "cifar10"])
    parser.add_argument("--root", required=True, type=Path, help="the data.root to fill")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dataset == "cifar10":
        folder = args.root / "cifar10" / cifar.BINARY_DIR
        synthetic.write_cifar_dataset(folder, per_file=cifar.RECORDS_PER_FILE, seed=args.seed)
    else:
        folder = args.root / args.dataset
        synthetic.write_idx_dataset(folder, 60000, 10000, seed=args.seed, compress=True)
    for path in sorted(folder.iterdir()):
        print(f"{path}  {path.stat().st_size} bytes")
    print("GENERATED images in the official file format — not the real data set.")


if __name__ == "__main__":
    main()
