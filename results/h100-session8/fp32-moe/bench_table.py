"""Print event_ms / event_tflops per (dtype, tokens, variant) from a pytest-benchmark json."""
import json, re, sys
rows = []
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    m = re.search(r"\[(.*)\]", b["name"])
    x = b["extra_info"]
    rows.append((b["param"] if "param" in b else m.group(1), x.get("event_ms"), x.get("event_tflops"), x.get("engine_choice")))
for name, ms, tf, ch in sorted(rows):
    print(f"{name:40s} {ms:8.3f} ms {tf:7.1f} TFLOP/s {'(engine)' if ch else ''}")
