"""Write scikit-image's bundled sample photos into a folder (class sub-folders), for smoke tests.

    python calibration/sample_photos.py calibration/photos

They are real photographs (people, animals, objects, textures, scans) but only a few
dozen: enough to exercise a 224×224 pipeline end to end, not to calibrate a product.
Mixed grayscale and colour on purpose; calibration converts and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

PHOTOS = {
    "scenes": ("astronaut", "coffee", "chelsea", "cat", "rocket", "hubble_deep_field"),
    "textures": ("grass", "gravel", "brick", "colorwheel"),
    "scans": ("camera", "coins", "moon", "page", "text", "clock", "immunohistochemistry", "retina"),
}


def write_sample_photos(root: Path) -> int:
    import skimage.data
    from PIL import Image

    written = 0
    for label, names in PHOTOS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            Image.fromarray(getattr(skimage.data, name)()).save(root / label / f"{name}.jpg", quality=92)
            written += 1
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "photos")
    print(f"wrote {write_sample_photos(target)} photos under {target}")
