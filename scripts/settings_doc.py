"""Writes local.settings.example.json and prints the README configuration table from config.Settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from config.settings import Settings

HOST_VALUES = {
    "FUNCTIONS_WORKER_RUNTIME": ("python", "Functions host: the language worker."),
    "AzureWebJobsStorage": ("UseDevelopmentStorage=true", "Functions host: its own storage (Azurite locally)."),
    "ServiceBusConnection": ("", "Functions host: Service Bus connection used by the queue triggers."),
}


def defaults() -> dict[str, tuple[str, str]]:
    out = {}
    for name, field in Settings.model_fields.items():
        value = field.default
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        out[name.upper()] = (str(value).lower() if isinstance(value, bool) else str(value), field.description or "")
    return out


def example() -> dict:
    values = {**HOST_VALUES, **defaults()}
    return {
        "IsEncrypted": False,
        "Values": {k: v for k, (v, _) in values.items()},
        "_meaning": {k: d for k, (_, d) in values.items()},
    }


def table() -> str:
    rows = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for k, (v, d) in defaults().items():
        shown = "(Azurite well-known key)" if "AccountKey=" in v else (v or "(empty)")
        rows.append(f"| `{k}` | `{shown}` | {d} |")
    return "\n".join(rows)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    (root / "local.settings.example.json").write_text(json.dumps(example(), indent=2) + "\n")
    print(table())
