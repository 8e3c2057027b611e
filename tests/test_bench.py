"""The benchmark harness, run for real once on the small corpus: ``scripts/bench corpus``
writes its JSON document, and ``scripts/bench tables`` turns it into the README's table.
Nothing here asserts a timing; the figures only have to be there and be consistent."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "scripts" / "bench"


def test_corpus_bench_and_its_table(tmp_path: Path) -> None:
    doc_path = tmp_path / "corpus.json"
    done = subprocess.run(
        [BENCH, "corpus", "--corpus", "mini", "--repeat", "1", "--json", doc_path],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAIL" not in done.stdout, done.stdout  # every side lists what ntfs-3g lists
    doc = json.loads(doc_path.read_text())
    rows = {(r["task"], r["tool"]): r for r in doc["rows"]}
    tar = rows["tar", "vcbfs flat"]
    assert {"vs ntfs-3g", "vs floor", "peak_rss_mb"} <= set(tar)
    assert tar["vs floor"] == tar["best_s"] / rows["tar", "floor"]["best_s"]
    assert rows["big", "vcbfs flat"]["mb_s"] > 0 and ("big", "no fs") in rows
    assert {q["request"] for q in doc["profile"]["requests"]} >= {"open", "read", "readdir"}
    table = subprocess.run(
        [BENCH, "tables", doc_path], capture_output=True, text=True, check=True
    ).stdout
    assert "| tar | vcbfs flat |" in table and "x floor" in table
