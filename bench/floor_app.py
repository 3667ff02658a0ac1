"""The floor: the least an intake can do. Read the body, check the HMAC, parse JSON, answer 202.

It stores nothing and routes nothing, so its throughput bounds what any aiohttp intake
on this machine can reach. Run: python -m bench.floor_app --port 8081 --secret S
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json

from aiohttp import web


def create_app(secret: bytes) -> web.Application:
    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("X-JobServ-Sig", "")
        expected = "sha256:" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, header):
            return web.json_response({"error": "bad signature"}, status=401)
        try:
            json.loads(body)
        except ValueError:
            return web.json_response({"error": "not JSON"}, status=400)
        return web.json_response({"event_id": 0, "deliveries": 0}, status=202)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/webhook", webhook)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    app = create_app(args.secret.encode())
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
