"""The `monitor` command line: serve, replay, watch, report, inspect, compare, keygen."""

from __future__ import annotations

import argparse
import faulthandler
import io
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console

from trainer_side.msglog import CorruptLogError, LogFormatError

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_RENDER_DEFER_S = 30.0  # serve and watch: the longest a figure waits for a trainer keeping the CPUs busy


class UsageError(ValueError):
    """A user error: printed as one line, exit status 2."""


def _positive(kind: type, what: str):
    """An argparse type: `kind(text)`, which must be above zero."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid float value: 'x'"
    return parse


_positive_float = _positive(float, "positive")


def _non_negative_float(text: str) -> float:
    """An argparse type: a float of at least zero."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


_non_negative_float.__name__ = "float"
_positive_int = _positive(int, "a positive whole number")


def _add_render_priority(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--render-priority", choices=("idle", "normal"), default="idle",
                        help="CPU priority of the worker processes that draw figures and tables. idle (default): "
                             "SCHED_IDLE (nice 19 where the OS has no SCHED_IDLE), so a CPU-bound trainer on this "
                             "machine comes first and the figures wait for a quiet moment; the monitor's own process "
                             "stays at normal priority. normal: the workers at normal priority too, each epoch's "
                             "figures and tables drawn as soon as it ends. For more, start the whole monitor in an "
                             "idle cgroup: `systemd-run --user --scope -p CPUWeight=idle monitor serve`")
    parser.add_argument("--render-defer", type=_non_negative_float, default=DEFAULT_RENDER_DEFER_S, metavar="SECONDS",
                        help="while a run is under way and less than one CPU core is idle, hold each epoch's "
                             "figures, tables and files back, at most this long, so that the monitor never "
                             "competes with a CPU-bound trainer (receiving, logging and counting never wait). "
                             f"0 draws at once (default "
                             f"{DEFAULT_RENDER_DEFER_S:g})")


def _add_tensorboard(parser: argparse.ArgumentParser) -> None:
    """--tensorboard (monitor/outputs/tensorboard.py), the same on serve, watch and replay."""
    from monitor.outputs.tensorboard import DEFAULT_MAX_CLASSES, INSTALL_HINT

    group = parser.add_argument_group("TensorBoard", f"optional; needs the tensorboard extra: {INSTALL_HINT}")
    group.add_argument("--tensorboard", type=Path, metavar="DIR",
                       help="also write each run's epoch figures (confusion matrices, sample grids, ...) as images "
                            "and its per-class and history metrics as scalars, as TensorBoard events in "
                            "DIR/<run>/, step = epoch number. Give Lightning TensorBoardLogger's save_dir to see "
                            "them beside its runs (`tensorboard --logdir DIR`)")
    group.add_argument("--tensorboard-max-classes", type=_positive_int, default=DEFAULT_MAX_CLASSES, metavar="N",
                       help="per-class precision, recall and F1 scalars only for runs with at most N classes; "
                            f"larger runs get the macro and weighted averages only (default {DEFAULT_MAX_CLASSES})")


def _tensorboard(args: argparse.Namespace):
    """The --tensorboard options (None without it); fails at once when tensorboard is not installed."""
    if args.tensorboard is None:
        return None
    out, events = args.out.resolve(), args.tensorboard.resolve()
    if events == out or out in events.parents:
        # Event files hold wall times: inside a run folder they would break replay's byte-identical output.
        raise UsageError(f"--tensorboard {args.tensorboard} is inside --out {args.out}; give a folder beside it, "
                         "e.g. --tensorboard tb_logs")
    from monitor.outputs.tensorboard import TensorBoardMissing, TensorBoardOptions, check_available

    try:
        check_available()
    except TensorBoardMissing as exc:
        raise UsageError(str(exc)) from None
    return TensorBoardOptions(args.tensorboard, args.tensorboard_max_classes)


def _add_limits(parser: argparse.ArgumentParser) -> None:
    """What senders may claim (monitor/ingest/quotas.py): a frame over a limit is refused, counted, not logged."""
    from monitor.ingest.quotas import GB, Limits

    default = Limits()
    group = parser.add_argument_group("limits", "what senders may claim; a frame over a limit is refused (not "
                                                "logged), counted under its reason and reported once per run")
    group.add_argument("--max-runs", type=_positive_int, default=default.max_runs,
                       help=f"runs this monitor takes (default {default.max_runs:,})")
    group.add_argument("--max-run-gb", type=_positive_float, default=default.max_run_bytes / GB,
                       help=f"GiB (2**30 bytes) of frames logged per run (default {default.max_run_bytes / GB:g})")
    group.add_argument("--max-total-gb", type=_positive_float, default=default.max_total_bytes / GB,
                       help=f"GiB of frames logged by this monitor, all runs together "
                            f"(default {default.max_total_bytes / GB:g})")
    group.add_argument("--max-classes", type=_positive_int, default=default.max_classes,
                       help=f"class names in a run_start (default {default.max_classes:,})")
    group.add_argument("--max-ranks", type=_positive_int, default=default.max_ranks,
                       help=f"distinct ranks sending to one run (default {default.max_ranks:,})")


def _limits(args: argparse.Namespace):
    from monitor.ingest.quotas import GB, Limits

    return Limits(max_runs=args.max_runs, max_run_bytes=int(args.max_run_gb * GB),
                  max_total_bytes=int(args.max_total_gb * GB), max_classes=args.max_classes,
                  max_ranks=args.max_ranks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor",
        description="Out-of-process training monitor for PyTorch Lightning. Trainers send compact messages "
                    "(trainer_side.EmitterCallback); this process logs them, computes confusion matrices and "
                    "renders every plot and table, off the training process's critical path.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="receive from trainers, record a replayable log, render artifacts live",
                           description="Listen for trainers, record every message to <out>/<run>/messages.mlog and "
                                       "render each epoch's artifacts. Stops on Ctrl-C or SIGTERM within about 10 "
                                       "seconds: drains the socket (at most 2 s), closes the logs, gives pending "
                                       "renders what is left of the time and abandons the rest (`monitor replay` "
                                       "redraws them from the log), writes summary.json.")
    serve.add_argument("--bind", default=DEFAULT_BIND,
                       help=f"ZeroMQ endpoint to listen on (default {DEFAULT_BIND}; port 0 picks a free port). The "
                            "next port is bound too: trainers ask it what reached the log (forward both "
                            "through a tunnel)")
    serve.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default: outputs)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow binding a non-loopback address (other machines can then send), for --bind and "
                            "--http")
    serve.add_argument("--http", metavar="HOST:PORT",
                       help="also serve the HTML report under --out, read-only, at http://HOST:PORT/ (e.g. "
                            "127.0.0.1:8765; loopback only unless --allow-remote). The pages are files: opening "
                            "<out>/index.html works without it")
    serve.add_argument("--max-message-mb", type=_positive_float, default=256.0,
                       help="largest accepted frame in MiB; a larger frame drops its sender's connection (default 256)")
    serve.add_argument("--stale-after", type=_positive_float, default=3600.0, metavar="SECONDS",
                       help="mark a run 'stale' in its summary.json when none of its ranks has sent anything for "
                            "this long and not every rank sent run_end (its trainer has probably died); a new "
                            "message marks it running again (default 3600; raise it for longer epochs)")
    serve.add_argument("--epoch-timeout", type=_positive_float, default=120.0,
                       help="seconds to wait for every rank's epoch end before rendering without the missing "
                            "ranks, with a warning naming them (default 120)")
    serve.add_argument("--curve-secret", type=Path, metavar="FILE",
                       help="server secret-key file from `monitor keygen`: require ZeroMQ CURVE encryption")
    serve.add_argument("--curve-clients", type=Path, metavar="DIR",
                       help="folder of allowed client public-key files (with --curve-secret); default any client "
                            "holding the server's public key")
    serve.add_argument("--ready-file", type=Path, metavar="FILE",
                       help="write the bound endpoint to FILE once listening (then 'http URL' with --http), and a "
                            "last line 'started' once the pipeline and the render workers are up (for scripts "
                            "and tests)")
    _add_render_priority(serve)
    _add_tensorboard(serve)
    _add_limits(serve)

    replay = sub.add_parser("replay", help="regenerate every artifact from saved message logs",
                            description="Feed message logs (served logs or emitter spools) through the same "
                                        "pipeline as serve. The artifacts of a served log come out byte for byte "
                                        "identical.")
    replay.add_argument("logs", nargs="+", type=Path, metavar="LOG",
                        help="message log(s) to replay, in order; a folder stands for every *.mlog under it (a "
                             "spool folder: each run's rank<N>.mlog, found as `monitor watch` finds them)")
    replay.add_argument("--out", type=Path, default=Path("replay"), help="output folder (default: replay)")
    replay.add_argument("--skip-corrupt", action="store_true",
                        help="resume at the next whole record after a damaged one, and report what was skipped")
    replay.add_argument("--quiet", action="store_true", help="do not print the run tables")
    _add_tensorboard(replay)
    _add_limits(replay)

    report = sub.add_parser("report", help="build the HTML report pages offline",
                            description="Write <out>/<run>/index.html for every run and <out>/index.html listing "
                                        "them. With LOGs, replays them into --out first (as `monitor replay "
                                        "--quiet`, which writes the pages too); without, builds the pages from "
                                        "the run folders already in --out.")
    report.add_argument("logs", nargs="*", type=Path, metavar="LOG", help="message log(s), spools or spool folders to replay first")
    report.add_argument("--out", type=Path, required=True, help="output folder holding (or to hold) the runs")
    report.add_argument("--skip-corrupt", action="store_true",
                        help="resume at the next whole record after a damaged one, and report what was skipped")
    _add_limits(report)

    watch = sub.add_parser("watch", help="follow emitter spool logs in a folder and render live",
                           description="Follow the spool logs that trainers write with EmitterCallback(spool=DIR) "
                                       "as they appear and grow, and render like serve. For clusters that share a "
                                       "filesystem but not a network port. Stops cleanly on Ctrl-C or SIGTERM.")
    watch.add_argument("folder", type=Path, metavar="DIR", help="the spool folder (searched recursively for *.mlog)")
    watch.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default: outputs)")
    watch.add_argument("--stale-after", type=_positive_float, default=3600.0, metavar="SECONDS",
                       help="mark a run 'stale' in its summary.json when none of its ranks has sent anything for "
                            "this long and not every rank sent run_end (its trainer has probably died); a new "
                            "message marks it running again (default 3600; raise it for longer epochs)")
    watch.add_argument("--epoch-timeout", type=_positive_float, default=120.0,
                       help="seconds to wait for every rank's epoch end before rendering without the missing ranks")
    watch.add_argument("--skip-corrupt", action="store_true", help="read past damaged records")
    watch.add_argument("--polling", action="store_true",
                       help="poll the folder instead of using file-system events (for network filesystems)")
    _add_render_priority(watch)
    _add_tensorboard(watch)
    _add_limits(watch)

    inspect = sub.add_parser("inspect", help="summarize a message log: runs, ranks, kinds, sizes, gaps, rejects",
                             description="Print per run and rank the message kinds with counts and bytes, the "
                                         "sequence gaps, and the rejected or damaged records of each log.")
    inspect.add_argument("logs", nargs="+", type=Path, metavar="LOG", help="message log(s) to inspect")
    inspect.add_argument("--skip-corrupt", action="store_true", help="read past damaged records")

    from monitor.compare import add_parser as add_compare

    add_compare(sub)

    keygen = sub.add_parser("keygen", help="create a ZeroMQ CURVE key pair (for --curve-secret and server_key=)",
                            description="Write NAME.key (public) and NAME.key_secret (secret, readable by its owner "
                                        "only) into DIR and print the public key. An existing pair is kept unless "
                                        "--force is given.")
    keygen.add_argument("dir", type=Path, help="folder for the key files")
    keygen.add_argument("--name", default="server",
                        help="base name of the key files: letters, digits, '.', '_' and '-', not starting with "
                             "'.' (default: server)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair of that name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command in `argv` (default: sys.argv); returns the exit status: 0, 1 when frames could
    not be logged, 2 for a user error (one line on stderr), 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="monitor: %(levelname)s: %(message)s")
    # `kill -USR1 <pid>` prints every thread's stack: the way to see what a stuck monitor is doing.
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError, OSError):
        pass  # stderr has no file descriptor (in-process use, notebooks): no stack dumps, that is all
    # Everything the monitor prints quotes keys, paths, endpoints or names from the wire, and none of it
    # is rich markup: a Z85 key holding "[g3i!]" must print as it is, not lose it as a style tag.
    console = Console(file=ReaderMayLeave(sys.stdout), markup=False, emoji=False)
    try:
        return _run(args, console)
    except (UsageError, CorruptLogError, LogFormatError, FileNotFoundError, ValueError) as exc:
        print(f"monitor {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


class ReaderMayLeave(io.TextIOBase):
    """stdout that goes quiet instead of raising once its reader has gone (`monitor replay LOG | head`):
    the artifacts and console.txt are the product, the terminal copy is not."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream
        self.gone = False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    def isatty(self) -> bool:
        return not self.gone and self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def write(self, text: str) -> int:
        if not self.gone:
            try:
                self.stream.write(text)
            except BrokenPipeError:
                self._leave()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._leave()

    def _leave(self) -> None:
        self.gone = True
        try:  # what Python still holds for stdout must not fail again at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def _run(args: argparse.Namespace, console: Console) -> int:
    tensorboard = _tensorboard(args) if args.command in ("serve", "watch", "replay") else None
    if args.command in ("serve", "watch"):
        # Bad arguments are reported at once, before anything heavy is imported.
        curve = _check_serve_args(args) if args.command == "serve" else _check_watch_args(args)
        http = _check_http(args) if args.command == "serve" else None
        from monitor.signals import stop_on_signals

        stop = stop_on_signals()  # first: the imports below start threads, which inherit the signal mask
    if args.command == "serve":
        from monitor.serve import serve

        return serve(args.bind, args.out, allow_remote=args.allow_remote,
                     max_message_bytes=int(args.max_message_mb * (1 << 20)), epoch_timeout=args.epoch_timeout,
                     stale_after=args.stale_after,
                     curve=curve, ready_file=args.ready_file, console=console, stop=stop,
                     render_priority=args.render_priority, render_defer=args.render_defer, limits=_limits(args),
                     tensorboard=tensorboard, http=http)
    if args.command == "report":
        return _report(args, console)
    if args.command == "replay":
        from monitor.replay import replay

        pipeline, intake, _ = replay(args.logs, args.out, skip_corrupt=args.skip_corrupt, console=console,
                                     show_tables=not args.quiet, limits=_limits(args), tensorboard=tensorboard)
        rejected = intake.rejected + pipeline.rejected
        console.print(f"monitor replay: {intake.frames} frames, {sum(rejected.values())} rejected, "
                      f"{len(pipeline.runs)} run(s) written to {args.out}/", highlight=False)
        return 0
    if args.command == "watch":
        from monitor.watch import watch

        return watch(args.folder, args.out, epoch_timeout=args.epoch_timeout, stale_after=args.stale_after,
                     skip_corrupt=args.skip_corrupt,
                     polling=args.polling, console=console, stop=stop,
                     render_priority=args.render_priority, render_defer=args.render_defer, limits=_limits(args),
                     tensorboard=tensorboard)
    if args.command == "inspect":
        from monitor.loginspect import inspect_logs

        return inspect_logs(args.logs, skip_corrupt=args.skip_corrupt, console=console)
    if args.command == "compare":
        from monitor.compare import run_compare

        return run_compare(args, console)
    if args.command == "keygen":
        return _keygen(args.dir, args.name, console, force=args.force)
    raise UsageError(f"unknown command {args.command}")


def _check_serve_args(args: argparse.Namespace):
    """The bind address and the CURVE key files; returns the keys (None without --curve-secret)."""
    from monitor.ingest.endpoint import check_bind

    check_bind(args.bind, args.allow_remote)
    return _curve_keys(args)


def _check_http(args: argparse.Namespace) -> tuple[str, int] | None:
    from monitor.ingest.endpoint import check_http

    return None if args.http is None else check_http(args.http, args.allow_remote)


def _report(args: argparse.Namespace, console: Console) -> int:
    """`monitor report`: replays the logs (which writes the pages), or builds the pages from --out."""
    if args.logs:
        from monitor.replay import replay

        pipeline, intake, _ = replay(args.logs, args.out, skip_corrupt=args.skip_corrupt, console=console,
                                     show_tables=False, limits=_limits(args))
        runs = len(pipeline.runs)
    else:
        if not args.out.is_dir():
            raise FileNotFoundError(f"no such folder: {args.out} (give LOGs to replay into it)")
        from monitor.outputs.report.writer import Reports

        runs = Reports(args.out).write_all()
        if not runs:
            raise UsageError(f"{args.out} holds no run folder (one with a summary.json); give LOGs to replay")
    console.print(f"monitor report: {runs} run(s); open {args.out / 'index.html'}", highlight=False)
    return 0


def _check_watch_args(args: argparse.Namespace) -> None:
    if not args.folder.is_dir():
        raise FileNotFoundError(f"no such folder to watch: {args.folder}")


def _curve_keys(args: argparse.Namespace):
    if args.curve_secret is None:
        if args.curve_clients is not None:
            raise UsageError("--curve-clients needs --curve-secret")
        return None
    import zmq.auth

    from monitor.ingest.endpoint import CurveServerKeys

    if not args.curve_secret.is_file():
        raise UsageError(f"--curve-secret: no such file {args.curve_secret} (create one with `monitor keygen DIR`)")
    public, secret = zmq.auth.load_certificate(str(args.curve_secret))
    if secret is None:
        raise UsageError(f"--curve-secret: {args.curve_secret} holds no secret key (use the .key_secret file)")
    if args.curve_clients is not None and not args.curve_clients.is_dir():
        raise UsageError(f"--curve-clients: no such folder {args.curve_clients}")
    return CurveServerKeys(public, secret, args.curve_clients)


_KEY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _keygen(folder: Path, name: str, console: Console, *, force: bool = False) -> int:
    """Writes NAME.key and NAME.key_secret into `folder`; the secret file is created 0600."""
    import zmq
    import zmq.auth

    if not _KEY_NAME.fullmatch(name):
        raise UsageError(f"--name must be a plain file name (letters, digits, '.', '_', '-', not starting "
                         f"with '.'), got {name!r}")
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    existing = [str(path) for path in (public_file, secret_file) if path.exists() or path.is_symlink()]
    if existing and not force:
        raise UsageError(f"{' and '.join(existing)} already exist; pass --force to replace the key pair")
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    _write_key_file(public_file, public, None, force=force)
    _write_key_file(secret_file, public, secret, force=force)
    public, _ = zmq.auth.load_certificate(str(public_file))  # printed as read back: the file is what counts
    console.print(f"public key: {public.decode()}\npublic key file: {public_file}\nsecret key file: {secret_file} "
                  "(keep it private)", highlight=False)
    return 0


def _write_key_file(path: Path, public: bytes, secret: bytes | None, *, force: bool) -> None:
    """A key file in the format `zmq.auth.load_certificate` reads. The file is created with its final
    mode (0600 with a secret key, so it is never readable by others, not even for an instant); with
    `force`, an existing file (or link) is removed first, never written through."""
    if force:
        path.unlink(missing_ok=True)
    kind = "public" if secret is None else "secret"
    text = (f"#   ****  Generated by monitor keygen  ****\n#   ZeroMQ CURVE {kind} certificate\n"
            f"metadata\ncurve\n    public-key = \"{public.decode()}\"\n")
    if secret is not None:
        text += f"    secret-key = \"{secret.decode()}\"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if secret is None else 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)

if __name__ == "__main__":
    raise SystemExit(main())
