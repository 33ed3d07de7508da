# ruff: noqa: F821  (metadata/package are provided by the manifest loader)
# micropython-lib style manifest: freeze mpota into a firmware build
# (FROZEN_MANIFEST=.../device/manifest.py) or publish it with micropython-lib's tools.
# `mpremote mip install github:<owner>/<repo>/device` uses package.json instead.
metadata(
    description="mpota: resilient OTA firmware updates for ESP32 boards running MicroPython",
    version="0.1.0",
    license="MIT",
)

package("mpota")
