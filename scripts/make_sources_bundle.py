"""Writes the training sources of the bundled models as one portable bundle file.

Usage: ``python scripts/make_sources_bundle.py SHARED_DATA_DIR MNI_FOLDER OUTPUT.pt``

``MNI_FOLDER`` holds nilearn's ``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``
(``pip download --no-deps nilearn==0.14.1`` and unzip ``nilearn/datasets/data/``).
The bundle is what ``python -m wsicl.training.episode_training --sources`` reads, also on a
machine without SimpleITK (the GPU script carries it). It is never committed: the data
keep their own licences (listed in the bundle and in Resources/MODEL_CARD.md).
"""
import argparse

from wsicl.training.sources import development_sources, save_bundle

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shared_data", help="the development data folder (../shared/data)")
    parser.add_argument("mni_folder", help="nilearn's datasets/data folder (ICBM 2009a)")
    parser.add_argument("output", help="the bundle to write (.pt)")
    args = parser.parse_args()
    sources, provenance = development_sources(args.shared_data, args.mni_folder)
    save_bundle(sources, args.output, provenance)
    for source in sources:
        print(f"{source.name}: {list(source.image.shape)} voxels at {source.spacing} mm, "
              f"{len(source.structures)} structures")
