"""Runs under Python 3.12 with the public leap0==0.8.0 SDK (never imported by pytest itself).

Usage: leap0_tls_client.py BASE_URL API_KEY SANDBOX_DOMAIN SANDBOX_ID
With SSL_CERT_FILE naming Atoll's local CA: the SDK's own sandbox-host call (the code
interpreter's health check, GET https://{id}.{domain}/healthz) and its ``invoke_url`` fetched
with httpx. Prints one JSON object with what it saw."""

from __future__ import annotations

import json
import sys

import httpx
from leap0 import Leap0Client


def main() -> None:
    base_url, api_key, sandbox_domain, sandbox_id = sys.argv[1:5]
    with Leap0Client(api_key=api_key, base_url=base_url, sandbox_domain=sandbox_domain) as client:
        sandbox = client.sandboxes.get(sandbox_id)
        url = sandbox.invoke_url("/healthz", port=8080)
        response = httpx.get(url, headers={"authorization": f"Bearer {api_key}"}, timeout=30)
        seen = {
            "health": sandbox.code_interpreter.health(),
            "invoke_url": url,
            "status": response.status_code,
            "body": response.text,
        }
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
