"""A Google Drive v3 emulator over real HTTP, for tests, the demo and benchmarks.

The real google-api-python-client and google-auth talk to it: point the client at `emu.url`
(BIDSAPP_DRIVE_URL) and give it a service-account file from `emu.service_account(...)`.
"""

from bidsapp_sandbox.emulator.faults import Fault
from bidsapp_sandbox.emulator.service import Emulator

__all__ = ["Emulator", "Fault"]
