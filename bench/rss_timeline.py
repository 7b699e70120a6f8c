"""Where in a run its memory goes: run the CLI once (hash backend, with progress) and print
its peak RSS, then the highest RSS in each twentieth of the run beside the progress line
printed just before it.

    .venv/bin/python bench/rss_timeline.py SOURCE OUTPUT [more CLI flags]

Run it twice on the same output to see an unchanged re-run: a peak reached early and held
flat to the end is a fixed cost; one that climbs with the progress grows with the corpus.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import CLI, sample_rss


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    source, output, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    cmd = [CLI, "run", "--source", source, "--output", output, "--backend", "hash"]
    cmd += ["--progress", *extra]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # tqdm ends its updates with \r: one line a refresh
            for part in line.split("\r"):
                if part.strip():
                    lines.append((time.monotonic() - started, part.strip()[:160]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = sample_rss(proc, started)
    reader.join(5)
    seconds = time.monotonic() - started
    if not samples:
        raise SystemExit(f"the run ended before its RSS was read (status {proc.returncode})")
    at, peak = max(samples, key=lambda s: s[1])
    print(f"status {proc.returncode}, {seconds:.1f} s, peak RSS {peak:.0f} MB at {at:.1f} s")
    end = samples[-1][0]
    for k in range(20):
        low, high = end * k / 20, end * (k + 1) / 20
        window = [s for s in samples if low <= s[0] < high]
        if not window:
            continue
        t, mb = max(window, key=lambda s: s[1])
        before = [text for when, text in lines if when <= t]
        print(f"{low:7.1f}-{high:7.1f} s  max {mb:5.0f} MB | {before[-1] if before else ''}")
    if proc.returncode:
        print("\n".join(text for _, text in lines[-20:]))
        raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
