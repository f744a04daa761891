"""Copy the BBBC010 training wells into gpu_data/ in as little room as a device call allows.

Only 64 MiB travel to the GPU machine and the two bundled models take 56 of them, so: the
per-worm masks and foreground PNGs as they are (3.3 MB), and, unless --binary-only, the ``w2``
bright-field TIFFs re-written losslessly with zlib (36 MB -> 18 MB; checked pixel for pixel).
The ``w1`` GFP channel is not used and not copied. A bright-field call then also has to leave
one bundled model behind (see ``benchmarks/gpu_fold0.sh``).

    python benchmarks/prepare_gpu_data.py ../shared/data/bbbc010/train gpu_data/bbbc010/train
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="the BBBC010 train folder (images/, eachworm/, foreground/)")
    p.add_argument("dst", help="where to write (git-ignored, named in the call's carry)")
    p.add_argument("--binary-only", action="store_true", help="masks only: no w2 images")
    args = p.parse_args(argv)

    import numpy as np
    import tifffile

    src, dst = Path(args.src), Path(args.dst)
    for folder in ("eachworm", "foreground"):
        shutil.copytree(src / folder, dst / folder, dirs_exist_ok=True)
    if not args.binary_only:
        (dst / "images").mkdir(parents=True, exist_ok=True)
        for path in sorted((src / "images").glob("*_w2_*.tif")):
            pixels = tifffile.imread(path)
            out = dst / "images" / path.name
            tifffile.imwrite(
                out, pixels, compression="zlib", compressionargs={"level": 9}, predictor=True
            )
            if not np.array_equal(tifffile.imread(out), pixels):
                raise SystemExit(f"{out}: the compressed copy differs from {path}")
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"{dst}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
