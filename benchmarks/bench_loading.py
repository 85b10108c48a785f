"""DICOM loading speed: the package's transforms against pydicom's bare ``pixel_array``, measured in the same run.

Reads the real PA chest CR RG1 (1955 x 1841, MONOCHROME1, 15 bit) shipped by PyPI's ``pydicom-data`` (import name
``data_store``; the same files as the tests' ``rg1_uncompressed`` / ``rg1_j2k_lossless`` fixtures), once
uncompressed and once JPEG 2000 lossless, and times, interleaved:

- ``pixel_array``: ``pydicom.dcmread(path).pixel_array`` (read + decode, no scaling);
- ``LoadRadiographd``: the package's decode to a (1, H, W) float32 display image in [0, 1] (modality / VOI LUT,
  MONOCHROME1 inverted, the chest-radiograph checks);
- ``LoadStudyViewsd``: the model's input, a (2, 1, S, S) tensor and view mask at the embedded default's
  S = 128 (the above, then resized and padded to a square);
- ``floor``: the least work any resized float input needs, as a ceiling on the ratio: ``pixel_array``, one float32
  conversion and one area resize to S on the longest side (no LUT, no inversion, no checks, no padding).

Prints medians and the ratios to ``pixel_array`` (goal: model input <= 1.3x).

    python benchmarks/bench_loading.py              # 15 repeats (~1 min)
    python benchmarks/bench_loading.py --quick      # 3 repeats (< 15 s)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import interleave, median, print_ratio

FILES = {"uncompressed": "RG1_UNCR.dcm", "j2k_lossless": "RG1_J2KR.dcm"}


def pydicom_data_dir() -> Path:
    """The ``data`` folder of the ``pydicom-data`` package (as ``tests/conftest.py`` finds it)."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pydicom-data is not installed: pip install pydicom-data (or pip install -e .[test])")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _floor(pixels, size: int):
    """``pixels`` as float32, area-resized so that the longest side is ``size``: the floor of any preprocessing."""
    import torch
    import torch.nn.functional as F

    image = torch.from_numpy(pixels.astype("float32"))[None, None]
    scale = size / max(image.shape[-2:])
    shape = [max(1, round(n * scale)) for n in image.shape[-2:]]
    return F.interpolate(image, size=shape, mode="area")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (also parsed by the docs tests)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 15, quick 3)")
    parser.add_argument("--image-size", type=int, default=128, help="model input side (embedded default 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 15)

    import pydicom
    import torch

    from monai_r2gen.data.transforms import LoadRadiographd, LoadStudyViewsd

    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    print(f"bench_loading: {time.strftime('%Y-%m-%d %H:%M')}, pydicom {pydicom.__version__}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    root = pydicom_data_dir()
    decode = LoadRadiographd(keys="image")
    views = LoadStudyViewsd(keys="image", spatial_size=args.image_size, max_views=2)
    for label, name in FILES.items():
        path = str(root / name)
        ds = pydicom.dcmread(path)
        print(f"\n{name}: {ds.Rows} x {ds.Columns}, {ds.BitsStored} bit, {ds.PhotometricInterpretation}, transfer "
              f"syntax {ds.file_meta.TransferSyntaxUID.name}")  # fmt: skip
        out = views({"image": [path]})
        print(f"  model input {tuple(out['image'].shape)} {out['image'].dtype}, view mask {out['view_mask'].tolist()}")
        runs = {
            "pixel_array": lambda p=path: pydicom.dcmread(p).pixel_array,
            "LoadRadiographd": lambda p=path: decode({"image": p}),
            "LoadStudyViewsd": lambda p=path: views({"image": [p]}),
            "floor": lambda p=path: _floor(pydicom.dcmread(p).pixel_array, args.image_size),
        }
        times = interleave({k: (lambda f=f: (f(), None)[1]) for k, f in runs.items()}, repeats)
        base = median(times["pixel_array"])
        for key in runs:
            print(f"  {key:<16} median {median(times[key]) * 1e3:8.1f} ms  ({repeats} repeats, "
                  f"min {min(times[key]) * 1e3:.1f} ms)")  # fmt: skip
        print_ratio(f"loading_decode_over_pixel_array_{label}", median(times["LoadRadiographd"]) / base)
        print_ratio(f"loading_model_input_over_pixel_array_{label}", median(times["LoadStudyViewsd"]) / base, "<= 1.3")
        print_ratio(f"loading_floor_over_pixel_array_{label}", median(times["floor"]) / base)


if __name__ == "__main__":
    main()
