"""Standard codes for common anatomical structure names (SNOMED CT, as in DICOM's
anatomic region list), so that results carry a coded meaning beside the user's name: the
Slicer panel's segment terminology and the segments of a DICOM SEG use the same table."""
from typing import Optional, Tuple

ANATOMY = {
    "liver": ("10200004", "Liver"), "spleen": ("78961009", "Spleen"),
    "kidney": ("64033007", "Kidney"), "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"), "gallbladder": ("28231008", "Gallbladder"),
    "aorta": ("15825003", "Aorta"), "lung": ("39607008", "Lung"),
    "brain": ("12738006", "Brain"), "heart": ("80891009", "Heart"),
    "bladder": ("89837001", "Urinary bladder"), "prostate": ("41216001", "Prostate"),
}
"""Name word -> (SNOMED CT code, code meaning)."""

ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
"""The SNOMED CT category of every entry of :data:`ANATOMY`."""


def anatomy_code(name: str) -> Optional[Tuple[str, str]]:
    """The SNOMED CT code and meaning of a structure named ``name`` ("left kidney",
    "Liver", "lung_upper_lobe": any word of the name), or None."""
    key = name.lower().replace("_", " ")
    for word, code in ANATOMY.items():
        if word in key.split() or key == word:
            return code
    return None
