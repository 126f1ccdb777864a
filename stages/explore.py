"""Stage explore: the book's pictures of the ingested data (class counts, sample images, sound per state).

Reads data/interim/ and writes metrics/explore/*.png (see vapm.explore); shown by `dvc plots show`.
"""
from __future__ import annotations

from vapm.errors import run_stage


def main() -> None:
    from vapm import paths
    from vapm.explore import explore
    from vapm.features.records import acoustic_image_record
    from vapm.settings import load_settings

    settings = load_settings(models=())
    written = explore(paths.VISION_INTERIM, paths.ACOUSTIC_INTERIM, acoustic_image_record(settings), paths.EXPLORE)
    print(f"wrote {len(written)} pictures to {paths.EXPLORE}")


if __name__ == "__main__":
    with run_stage("explore"):
        main()
