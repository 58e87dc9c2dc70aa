"""Parses a Prometheus text exposition with the Prometheus client library's own parser.

Usage: parse.py [--openmetrics] FILE

With --openmetrics, the library's OpenMetrics parser, which is strict: it refuses an
exposition without `# EOF`, a counter sample without `_total`, a malformed label.

Prints one JSON line: every family with its type and samples. A malformed exposition
raises, so the command fails.
"""

import json
import sys

from prometheus_client.openmetrics import parser as openmetrics
from prometheus_client.parser import text_string_to_metric_families


def main():
    args = sys.argv[1:]
    parse = text_string_to_metric_families
    if args[0] == "--openmetrics":
        parse = openmetrics.text_string_to_metric_families
        args = args[1:]
    with open(args[0], encoding="utf-8") as f:
        text = f.read()
    families = [
        {
            "name": family.name,
            "type": family.type,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples
            ],
        }
        for family in parse(text)
    ]
    print(json.dumps(families))


if __name__ == "__main__":
    main()
