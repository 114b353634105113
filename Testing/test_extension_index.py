"""The Extensions Index entry (`Resources/ExtensionsIndex/WSICL.json`) is ready to submit:
it follows the index's catalog-entry schema v1.0.1 and agrees with `CMakeLists.txt`, whose
icon and screenshot URLs name files of this repository."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "Resources" / "ExtensionsIndex" / "WSICL.json"

# Facts of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: the keys it
# requires, every key it allows (additionalProperties: false), their JSON types and enums.
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.1.json#")
REQUIRED = {"$schema", "category", "scm_url"}
TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str,
         "scm_type": str, "build_dependencies": list, "build_subdirectory": str,
         "enabled": bool, "tier": int}
ENUMS = {"scm_type": {"git", "local"}, "tier": {1, 3, 5}}


def cmake_setting(name: str) -> str:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    return re.search(rf'set\({name} "([^"]*)"\)', text).group(1)


def test_the_index_entry_follows_the_catalog_schema():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert REQUIRED <= set(entry) and set(entry) <= set(TYPES)
    assert entry["$schema"] == SCHEMA_URL
    for key, value in entry.items():
        assert isinstance(value, TYPES[key]), key
        assert key not in ENUMS or value in ENUMS[key], key
    assert all(isinstance(item, str) for item in entry.get("build_dependencies", []))


def test_the_index_entry_agrees_with_the_extension_and_its_pictures_exist():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert entry["category"] == cmake_setting("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_setting("EXTENSION_DEPENDS").split()
    assert entry["scm_url"] == cmake_setting("EXTENSION_HOMEPAGE")
    prefix = f"https://raw.githubusercontent.com/{entry['scm_url'].split('github.com/')[1]}/" \
             f"{entry['scm_revision']}/"
    urls = [cmake_setting("EXTENSION_ICONURL")] + cmake_setting(
        "EXTENSION_SCREENSHOTURLS").split()
    for url in urls:
        assert url.startswith(prefix), url
        assert (ROOT / url[len(prefix):]).is_file(), url
