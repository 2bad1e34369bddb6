"""Reads a Prometheus text exposition on stdin with the reference parser
(prometheus_client) and prints one sample per line: NAME{k="v",...} VALUE, labels
sorted, so a test can look samples up. Exits non-zero if the text does not parse."""
import sys

from prometheus_client.parser import text_string_to_metric_families

families = list(text_string_to_metric_families(sys.stdin.read()))
for family in families:
    print(f"# family {family.name} {family.type}")
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(f"{sample.name}{{{labels}}} {sample.value!r}")
