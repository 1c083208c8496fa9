"""Run the offline Hub in the foreground: `python -m selfalign.hub_server --port 8080 --data-dir ./local_hub`."""

import argparse
import logging
import threading

from .server import HubServer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m selfalign.hub_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--data-dir", default="./local_hub", help="where repos and files are stored")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)

    server = HubServer(args.data_dir, host=args.host, port=args.port, verbose=args.verbose).start()
    print(f"Offline Hub serving {args.data_dir} at {server.url}", flush=True)
    print("Export these before starting Python (the clients read them at import time):")
    print(f"  export HF_ENDPOINT={server.url}")
    print("  export HF_HUB_DISABLE_XET=1   # upload over plain HTTP/LFS, not Xet")
    print("  export HF_TOKEN=hf_offline    # any non-empty token; writes are refused without one")
    print("Press Ctrl+C to stop.", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
