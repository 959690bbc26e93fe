"""`bidsapp demo` and `bidsapp emulator`: the sandbox's helper commands (entry points of the group
`bidsapp.commands`, which bidsapp's command line looks up when the sandbox is installed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bidsapp.cli import Parser


def demo(argv: Sequence[str]) -> int:
    """Synthetic exams through the whole flow on a built-in Drive emulator (no Google account)."""
    from bidsapp_sandbox.demo import run_demo

    parser = Parser(prog="bidsapp demo", description=demo.__doc__)
    parser.add_argument("--dir", type=Path, default=Path("bidsapp-demo"), help="where to put it")
    parser.add_argument(
        "--local", action="store_true", help="local folders instead of the built-in Drive emulator"
    )
    args = parser.parse_args(argv)
    return run_demo(args.dir, local=args.local)


def emulator(argv: Sequence[str]) -> int:
    """Run the Drive v3 emulator in the foreground (for the demo and manual tests)."""
    from bidsapp_sandbox.emulator.foreground import run_foreground

    parser = Parser(prog="bidsapp emulator", description=emulator.__doc__)
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--state", type=Path, metavar="DIR", help="keep files and identities here across restarts"
    )
    parser.add_argument("--latency", type=float, default=0.0, metavar="S", help="per request")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--bandwidth", type=float, metavar="B", help="bytes/s per response")
    parser.add_argument(
        "--service-account",
        default="bidsapp@bidsapp-emulator.iam.gserviceaccount.com",
        metavar="EMAIL",
        help="identity of the service-account key file written at start",
    )
    parser.add_argument("--shared-drive", metavar="NAME", help="also create this shared drive")
    parser.add_argument("--user", metavar="EMAIL", help="also write a user token for EMAIL")
    args = parser.parse_args(argv)
    return run_foreground(
        port=args.port,
        host=args.host,
        state_dir=args.state,
        latency=args.latency,
        seed=args.seed,
        bandwidth=args.bandwidth,
        service_account=args.service_account,
        shared_drive=args.shared_drive,
        user=args.user,
    )
