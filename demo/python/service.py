"""A demo service in Python: answers GETs and calls the next service through its sidecar's
outbound listener, with the headers the meshwasm:propagation component returns for the request
it serves (Python's standard library for HTTP, PyPI wasmtime for the component).

    python service.py --name orders --calls inventory --component meshwasm_propagation.wasm

It prints `listening on 127.0.0.1:<port>` once it holds its port, then reads lines from stdin:
`outbound <port>` says where its sidecar's outbound listener is (until then a request gets a
502), and it answers the same line on stdout once calls go there; the end of stdin stops it.
Each answer carries `x-demo-app: python` and the number of headers the component returned, for
the demo's report and its test.
"""

import argparse
import http.client
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from propagation import Propagation

OUTBOUND = {"port": 0}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--calls")
    parser.add_argument("--component", required=True)
    parser.add_argument("--work-ms", type=float, default=0.0)
    args = parser.parse_args()

    propagation = Propagation(args.component)
    lock = threading.Lock()  # one component instance, one caller at a time

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status, body, extra=()):
            data = body.encode()
            self.send_response(status)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(data)))
            self.send_header("x-demo-app", "python")
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if args.work_ms:
                time.sleep(random.uniform(0, 2 * args.work_ms) / 1000)
            if not args.calls:
                return self.reply(200, f"{args.name}: ok\n")
            port = OUTBOUND["port"]
            if not port:
                return self.reply(502, f"{args.name}: calling {args.calls}: no sidecar yet\n")
            with lock:
                out = propagation.propagate(self.headers.items())
            query = self.path.partition("?")[2]
            path = f"/{args.calls}" + (f"?{query}" if query else "")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", path, headers={"host": args.calls, **dict(out.headers)})
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                status = resp.status
            except OSError as e:
                status, body = 0, str(e)
            finally:
                conn.close()
            extra = [("x-demo-propagated", str(len(out.headers)))]
            if 200 <= status < 300:
                return self.reply(200, f"{args.name}: ok\n{body}", extra)
            # A dependency's failure is a 502 here, as in the Rust services.
            return self.reply(502, f"{args.name}: {args.calls} answered {status}\n", extra)

        def log_message(self, *_):
            pass

    class Server(ThreadingHTTPServer):
        # The listen backlog. socketserver's default of 5 drops the SYN of a sidecar's sixth
        # new connection while the app is slow to accept (under load), and the sidecar's
        # connect timeout to the app (0.25 s) expires before the kernel sends it again (1 s).
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    for line in sys.stdin:
        word, _, value = line.strip().partition(" ")
        if word == "outbound" and value.isdigit():
            OUTBOUND["port"] = int(value)
            print(f"outbound {value}", flush=True)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
