"""Write the procedural 2D vessel sample set into napari_medkd/sample_data/vessels2d (deterministic)."""
from pathlib import Path

import SimpleITK as sitk

from napari_medkd.data.phantoms import vessel_phantom

ROOT = Path(__file__).resolve().parents[1] / "napari_medkd" / "sample_data" / "vessels2d"


def main(n_train: int = 10, n_test: int = 4, size: int = 256) -> None:
    for split, seeds in (("train", range(n_train)), ("test", range(100, 100 + n_test))):
        for sub in ("images", "masks", "fov"):
            (ROOT / split / sub).mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            img, ves, fov = vessel_phantom(size, seed)
            stem = f"phantom_{seed:03d}"
            sitk.WriteImage(sitk.GetImageFromArray(img, isVector=True), str(ROOT / split / "images" / f"{stem}.png"))
            sitk.WriteImage(sitk.GetImageFromArray(ves * 255), str(ROOT / split / "masks" / f"{stem}.png"))
            sitk.WriteImage(sitk.GetImageFromArray(fov * 255), str(ROOT / split / "fov" / f"{stem}.png"))


if __name__ == "__main__":
    main()
