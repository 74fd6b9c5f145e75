"""Edge service for in-store smart displays.

Pipeline (one module per stage): capture -> detect -> track -> classify ->
audience -> select -> publish. Records passed between stages live in
`edge.records`; configuration in `edge.config`.
"""

import os

__version__ = "0.1.0"

# OpenCV reads this once, when cv2 is first imported (here, before any edge module
# imports it): no image decoder allocates more than 64 megapixels, whatever a file's
# header claims (a 50 kB PNG can declare 20000x20000). edge/pipeline/images.py checks the
# headers it knows first, with a clearer error.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(64_000_000))
