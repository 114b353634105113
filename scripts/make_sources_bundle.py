"""Writes the training sources of the bundled models as one portable bundle file.

Usage: ``python scripts/make_sources_bundle.py SHARED_DATA_DIR MNI_FOLDER OUTPUT.pt``

``MNI_FOLDER`` holds nilearn's ``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``
(``pip download --no-deps nilearn==0.14.1`` and unzip ``nilearn/datasets/data/``).
The bundle is what ``python -m wsicl.training.episode_training --sources`` reads, also on a
machine without SimpleITK (the GPU script carries it). It is never committed: the data
keep their own licences (listed in the bundle and in Resources/MODEL_CARD.md).
"""
import sys

from wsicl.training.sources import development_sources, save_bundle

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sources, provenance = development_sources(sys.argv[1], sys.argv[2])
    save_bundle(sources, sys.argv[3], provenance)
    for source in sources:
        print(f"{source.name}: {list(source.image.shape)} voxels at {source.spacing} mm, "
              f"{len(source.structures)} structures")
