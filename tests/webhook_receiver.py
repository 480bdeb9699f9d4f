#!/usr/bin/env python3
"""A webhook receiver for the tests: verifies every request with the `standardwebhooks` package
from PyPI (an implementation independent of ours) and appends one JSON line per request to a
log the test reads. Its answers are scripted: 500 for the first N requests of each webhook-id,
then --status (200; 410 to ask for the endpoint to be disabled; 302 with a Location back to
this receiver, which a client must not follow); --delay-ms before answering.

    python3 tests/webhook_receiver.py --port P --secret whsec_... --log FILE [--fail-first N]
        [--status 200] [--delay-ms 0]
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=0)
    opts = parser.parse_args()
    verifier = Webhook(opts.secret)
    seen = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verifier.verify(body, headers)
                verified = True
            except Exception as error:  # any failure to verify is recorded, not raised
                verified = str(error) or type(error).__name__
            webhook_id = headers.get("webhook-id", "")
            with lock:
                seen[webhook_id] = seen.get(webhook_id, 0) + 1
                nth = seen[webhook_id]
            status = 500 if nth <= opts.fail_first else opts.status
            if opts.delay_ms:
                time.sleep(opts.delay_ms / 1000)
            record = {"id": webhook_id, "timestamp": headers.get("webhook-timestamp"),
                      "signature": headers.get("webhook-signature"), "verified": verified,
                      "nth": nth, "answered": status, "at": time.time(),
                      "path": self.path, "body": body.decode("utf-8", "replace")}
            with lock, open(opts.log, "a") as log:
                log.write(json.dumps(record) + "\n")
            self.send_response(status)
            if status in (301, 302, 303, 307, 308):
                # Where a client that follows redirects would go next (the gateway must not).
                self.send_header("location", f"http://127.0.0.1:{opts.port}/redirected")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
