"""Check 4 and issue 8: the atheris harnesses of fuzz/ run for a bounded number of inputs each, in a subprocess.

A harness that finds a crash exits non-zero; the test then fails with libFuzzer's report (the Python traceback,
the crashing input as bytes and base64) and the saved input, which reproduces with
`.venv/bin/python -m fuzz.<harness> <file>`. The harnesses always run on the embedded setup (in-memory SQLite, the
in-memory channel layer), whatever this run's DATABASE_URL/REDIS_URL: they need neither service, and never touch
this run's test database.

Inputs per harness (FUZZ_RUNS overrides all three): chosen so that each takes well under ~30 s on the 2-core
development box; -max_total_time caps each run whatever the machine. The bugs the harnesses found are fixed and
pinned below by tests of their own.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from webhooks.parsers import signature_for

ROOT = Path(__file__).resolve().parents[2]
RUNS = {"webhook_parser": 10_000, "consumer_frames": 5_000, "webhook_view": 1_500}
TIME_CAP = int(os.environ.get("FUZZ_MAX_TOTAL_TIME", "60"))


def _fuzz(harness: str, tmp_path: Path) -> str:
    runs = int(os.environ.get("FUZZ_RUNS", RUNS[harness]))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "REQUIRE_SERVICES")}
    env["SQLITE_TEST_PATH"] = ":memory:"
    command = [
        sys.executable,
        "-m",
        f"fuzz.{harness}",
        f"-runs={runs}",
        f"-max_total_time={TIME_CAP}",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace", timeout=TIME_CAP + 120
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        inputs = "\n".join(
            f"{path.name}: {path.read_bytes()[:2000]!r}\nbase64: {base64.b64encode(path.read_bytes()).decode()}"
            for path in sorted(tmp_path.glob("*"))
            if path.is_file()
        )
        lines = [line for line in output.splitlines() if not line.startswith(("#", "INFO: Instrumenting"))]
        pytest.fail(
            f"{harness} crashed (exit {result.returncode}); reproduce with "
            f"`.venv/bin/python -m fuzz.{harness} <file with the input below>`\n"
            + "\n".join(lines[-80:])
            + f"\n--- crashing input(s) ---\n{inputs}",
            pytrace=False,
        )
    done = [line for line in output.splitlines() if line.startswith("Done ")]
    assert done, output[-3000:]
    return done[-1]


@pytest.mark.slow
@pytest.mark.parametrize("harness", sorted(RUNS))
def test_it_survives_the_fuzzer(harness: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = _fuzz(harness, tmp_path)  # e.g. "Done 10000 runs in 3 second(s)"
    with capsys.disabled():
        sys.stdout.write(f" [{harness}: {summary}] ")


# --- What the fuzzers found (fixed; these keep it so) -----------------------------------------------------------------
# A non-ASCII verify token gave a 500 and a non-ASCII signature header a 503: hmac.compare_digest refuses non-ASCII
# text. The harness in fuzz/webhook_view probes each at start-up and would keep to ASCII if one came back.

URL = "/webhooks/whatsapp/"


@pytest.mark.django_db
def test_it_refuses_a_non_ascii_verify_token_with_403(settings: Any) -> None:
    settings.WHATSAPP_VERIFY_TOKEN = "the-verify-token"
    response = Client().get(URL, {"hub.mode": "subscribe", "hub.verify_token": "t\u00e9", "hub.challenge": "42"})
    assert response.status_code == 403


@pytest.mark.django_db
def test_it_refuses_a_non_ascii_signature_with_403(settings: Any) -> None:
    settings.WHATSAPP_APP_SECRET = "the-app-secret"
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    garbled = signature_for(body, "the-app-secret")[:-1] + "\u00e9"  # what latin-1 decoding of a byte 0xe9 gives
    response = Client().post(URL, data=body, content_type="application/json", HTTP_X_HUB_SIGNATURE_256=garbled)
    assert response.status_code == 403
