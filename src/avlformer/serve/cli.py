"""`avlformer serve --model CKPT [--host 127.0.0.1 --port 7860] [--videos DIR]`: the captioning page; localhost
only unless ``--host`` says otherwise (with a warning). Ctrl-C or SIGTERM stops it."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import signal
import sys
from pathlib import Path

from avlformer.device import resolve_device
from avlformer.serve import DEFAULT_MAX_UPLOAD_MB, DEFAULT_QUEUE_SIZE, DEFAULT_READ_TIMEOUT_S

SERVE_PACKAGES = ("python_multipart", "starlette", "uvicorn")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint: our folder, an upstream folder, a released model.bin or a Hub model id")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: localhost only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    parser.add_argument("--videos", default=None, help="folder of clips the page offers to pick from")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--num-beams", type=int, default=None, help="beam width (default: the checkpoint's)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest accepted upload, in MB")
    parser.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE,
                        help="captioning requests accepted at once, running and waiting; more are answered 503 "
                             "with Retry-After")
    parser.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT_S,
                        help="seconds a client may take to send its request headers, or stay silent mid-upload")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return host == "localhost"


def check_flags(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must be 0..65535")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb {args.max_upload_mb}: must be > 0")
    if args.queue_size < 1:
        raise ValueError(f"--queue-size {args.queue_size}: must be >= 1")
    if not args.read_timeout > 0:
        raise ValueError(f"--read-timeout {args.read_timeout}: must be > 0")
    if args.num_beams is not None and args.num_beams < 1:
        raise ValueError(f"--num-beams {args.num_beams}: must be >= 1")
    if args.videos is not None and not Path(args.videos).is_dir():
        raise FileNotFoundError(f"--videos {args.videos}: not a folder")
    resolve_device(args.device)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:  # checked before the model is loaded
        print(f"avlformer serve: needs the [serve] extra ({', '.join(missing)} missing): "
              f"pip install 'avlformer[serve]'", file=sys.stderr)
        return 2
    from avlformer.inference.captioner import Captioner
    from avlformer.serve.listener import CaptionServer
    from avlformer.serve.server import ServeState

    # SIGTERM (a service manager's stop) ends the server as Ctrl-C does: gracefully, temporary folder removed.
    previous_handler = signal.signal(signal.SIGTERM, _interrupt)
    state = server = None
    try:
        try:
            check_flags(args)
            captioner = Captioner(args.model, num_beams=args.num_beams, device=args.device, batch_size=1)
            state = ServeState(captioner=captioner, model_name=str(args.model),
                               videos_dir=Path(args.videos) if args.videos else None,
                               max_upload_bytes=int(args.max_upload_mb * 1e6), queue_size=args.queue_size,
                               read_timeout_s=args.read_timeout)
            server = CaptionServer(state, args.host, args.port)
        except (OSError, ValueError) as error:
            if state is not None:  # only binding the address fails after the state is made
                error = f"{args.host}:{args.port}: {getattr(error, 'strerror', None) or error}"
            print(f"avlformer serve: {error}", file=sys.stderr)
            return 2
        if not is_loopback(args.host):
            print(f"avlformer serve: WARNING: listening on {args.host}: anyone who can reach this machine can "
                  f"upload videos to it", file=sys.stderr)
        print(f"avlformer serve: {args.model} on {captioner.loaded.device}; open {server.url} (Ctrl-C stops)",
              flush=True)
        server.serve_forever()  # returns after a graceful stop, then re-raises the signal that asked for it
    except KeyboardInterrupt:
        print("\navlformer serve: stopped", file=sys.stderr)
        if server is None:
            return 130
    finally:
        if server is not None:
            server.server_close()
        elif state is not None:
            state.close()
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
