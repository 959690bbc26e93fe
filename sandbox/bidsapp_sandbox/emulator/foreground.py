"""`bidsapp emulator`: run the emulator in the foreground until Ctrl-C."""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bidsapp_sandbox.emulator.service import Emulator


def run_foreground(
    *,
    port: int,
    host: str = "127.0.0.1",
    state_dir: Path | None,
    latency: float,
    seed: int,
    bandwidth: float | None,
    service_account: str,
    shared_drive: str | None,
    user: str | None,
    say: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve until interrupted (or `stop` is set); print what a client needs to reach it."""
    stop = stop or threading.Event()
    say = say or (lambda line: print(line, flush=True))
    keys = state_dir or Path(tempfile.mkdtemp(prefix="bidsapp-emulator-"))
    emu = Emulator(state_dir, latency=latency, seed=seed, bandwidth=bandwidth, port=port, host=host)

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    with emu:
        say(f"Drive emulator at {emu.url}  (Ctrl-C stops it)")
        say(f"export BIDSAPP_DRIVE_URL={emu.url}")
        sa = emu.service_account(service_account, keys / "service-account.json")
        say(f"service account key: {sa}  ({service_account})")
        if shared_drive:
            # Content manager, as DESIGN.md asks of a publishing service account.
            drive = emu.shared_drive(shared_drive, {service_account: "fileOrganizer"})
            say(f"shared drive {shared_drive!r}: id {drive} (service account is Content manager)")
        if user:
            token = emu.user_token(user, keys / "user-token.json")
            say(f"user token: {token}  ({user})")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        say(f"stopped; {emu.stats()['requests']} requests served")
    return 0
