"""Training and evaluation: task synthesis, simulated prompts, losses, the training loops
and paper-style evaluation. Built on the inference core (``wsicl``), which never imports
from here; the Slicer extension does not ship this package."""
