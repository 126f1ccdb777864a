"""Stage explore: the book's pictures of the ingested data (class counts, sample images, sound per state).

Reads data/interim/ and writes metrics/explore/*.png (see vapm.data.explore); shown by `dvc plots show`.
"""
from __future__ import annotations

from vapm.core.errors import run_stage


def main() -> None:
    from vapm.config import paths
    from vapm.data.explore import explore
    from vapm.data.features.records import acoustic_image_record
    from vapm.config.settings import load_settings

    settings = load_settings(models=())
    written = explore(paths.VISION_INTERIM, paths.ACOUSTIC_INTERIM, acoustic_image_record(settings), paths.EXPLORE)
    print(f"wrote {len(written)} pictures to {paths.EXPLORE}")


if __name__ == "__main__":
    with run_stage("explore"):
        main()
