"""Parses a Prometheus text exposition with the Prometheus client library's own parser.

Usage: parse.py FILE

Prints one JSON line: every family with its type and samples. A malformed exposition
raises, so the command fails.
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    families = [
        {
            "name": family.name,
            "type": family.type,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples
            ],
        }
        for family in text_string_to_metric_families(text)
    ]
    print(json.dumps(families))


if __name__ == "__main__":
    main()
