"""A local emulator of the OCI Generative AI inference API (20231130) and, given a
directory (``os_root``, ``--os-root``), of OCI Object Storage (20160918, see
:mod:`pipeline.genai.emulator.objectstore`).

Point the ``oci`` SDK (``service_endpoint=emu.url``), ocifs-style clients or plain httpx
at it to develop and test without spending money::

    with Emulator(EmulatorConfig(embedder="hash", rpm=600), oci_config="oci.cfg") as emu:
        client = GenerativeAiInferenceClient(cfg, service_endpoint=emu.url)
        ...
        emu.stats()["throttled"]

The command line front end is ``oci-genai-batch emulator``.
"""

from __future__ import annotations

from pipeline.genai.emulator.behaviour import EmulatorConfig
from pipeline.genai.emulator.server import Emulator

__all__ = ["Emulator", "EmulatorConfig"]
